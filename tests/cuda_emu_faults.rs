//! What the emulator catches (out-of-buffer global accesses, shared memory out of range, early
//! reads of cp.async destinations, barriers and warp collectives some thread never reaches,
//! misaligned ldmatrix rows, shared-memory races): each kernel of tests/cuda_emu/faults.cu
//! commits one fault, and
//! the launch must fail with an error that names the kernel, the block and the faulting
//! thread (and the launch must return: a deadlock is reported, not hung).
#![cfg(feature = "cuda-emulator")]
mod common;

use std::sync::{Arc, OnceLock};

use outlier_attn::cuda_emu::{EmuBuffer, EmuError, EmuModule};

const SOURCE: &str = include_str!("cuda_emu/faults.cu");
const ENTRIES: [&str; 16] = [
    "global_read_past_end",
    "global_write_before_start",
    "global_write_to_input",
    "shared_write_past_end",
    "static_shared_read_past_end",
    "barrier_skipped",
    "barrier_divergent",
    "cp_async_read_before_wait",
    "cp_async_wait_too_shallow",
    "global_store_misaligned",
    "shuffle_lane_missing",
    "mma_lane_missing",
    "ldmatrix_misaligned",
    "shared_race_no_barrier",
    "shared_race_in_warp",
    "shared_write_write_race",
];

fn module() -> Option<Arc<EmuModule>> {
    static MODULE: OnceLock<Result<Arc<EmuModule>, String>> = OnceLock::new();
    match MODULE.get_or_init(|| {
        EmuModule::build("fault-tests", SOURCE, &ENTRIES).map_err(|e| e.to_string())
    }) {
        Ok(m) => Some(m.clone()),
        Err(why) => {
            common::skip_or_fail("cuda-emu", why);
            None
        }
    }
}

/// Launches `entry` (grid of `blocks`, 64 threads, 256 bytes of dynamic shared memory) with
/// `culprit` as the faulting thread; returns the fault's message.
fn fault_of(entry: &str, blocks: u32, culprit: i32) -> String {
    let m = module().expect("checked by the caller");
    let input: Vec<f32> = (0..64).map(|i| i as f32).collect();
    let mut out = vec![0f32; 64];
    let bufs = [
        EmuBuffer::input("in", &input),
        EmuBuffer::output("out", &mut out),
    ];
    let mut args: Vec<u8> = bytemuck::cast_slice(&[bufs[0].addr(), bufs[1].addr()]).to_vec();
    args.extend_from_slice(bytemuck::cast_slice(&[culprit, 0]));
    // SAFETY: the fault kernels reach memory only through the emulator's checked pointers.
    let result = unsafe { m.launch(entry, [blocks, 1, 1], [64, 1, 1], 256, &args, &bufs) };
    match result {
        Err(EmuError::Fault(message)) => message,
        other => panic!("{entry}: expected a fault, got {other:?}"),
    }
}

/// The message names the kernel, the block and the thread, and says `what`.
fn check(entry: &str, blocks: u32, culprit: i32, what: &[&str]) {
    if module().is_none() {
        return;
    }
    let message = fault_of(entry, blocks, culprit);
    eprintln!("{entry}: {message}");
    let block = format!("block ({},0,0)", blocks - 1);
    let thread = format!("thread ({culprit},0,0)");
    for needle in [entry, block.as_str(), thread.as_str()].iter().chain(what) {
        assert!(
            message.contains(needle),
            "{entry}: the message does not say `{needle}`: {message}"
        );
    }
}

#[test]
fn a_global_read_past_the_end_of_its_buffer() {
    check(
        "global_read_past_end",
        1,
        9,
        &["outside buffer `in`", "[256, 260)"],
    );
}

#[test]
fn a_global_write_before_the_start_of_its_buffer() {
    check(
        "global_write_before_start",
        2,
        40,
        &["outside buffer `out`", "[-4, 0)"],
    );
}

#[test]
fn a_global_store_that_is_not_aligned_to_its_size() {
    check(
        "global_store_misaligned",
        1,
        12,
        &["misaligned global", "8 bytes at byte 52 of buffer `out`"],
    );
}

#[test]
fn a_global_write_to_an_input() {
    check("global_write_to_input", 1, 3, &["read-only buffer `in`"]);
}

#[test]
fn shared_memory_out_of_range() {
    check(
        "shared_write_past_end",
        1,
        17,
        &[
            "shared memory out of range",
            "[256, 260)",
            "dynamic shared memory (256 bytes)",
        ],
    );
    check(
        "static_shared_read_past_end",
        1,
        5,
        &[
            "shared memory out of range",
            "__shared__ s_small (128 bytes)",
        ],
    );
}

#[test]
fn a_syncthreads_not_every_thread_reaches() {
    check(
        "barrier_skipped",
        1,
        33,
        &["deadlock", "has exited", "63 of 64"],
    );
    check(
        "barrier_divergent",
        1,
        32,
        &["every thread must reach the same __syncthreads"],
    );
}

#[test]
fn a_cp_async_destination_read_before_its_wait() {
    check(
        "cp_async_read_before_wait",
        1,
        6,
        &["cp.async destination", "wait_group"],
    );
    check(
        "cp_async_wait_too_shallow",
        1,
        2,
        &["cp.async destination", "wait_group"],
    );
}

#[test]
fn a_warp_collective_with_a_lane_missing() {
    check(
        "shuffle_lane_missing",
        1,
        45,
        &[
            "warp collective with lanes missing",
            "__shfl_xor_sync",
            "has exited",
        ],
    );
    check(
        "mma_lane_missing",
        1,
        12,
        &[
            "warp collective with lanes missing",
            "mma.sync.aligned.m16n8k16",
        ],
    );
}

#[test]
fn an_ldmatrix_row_that_is_not_aligned() {
    check(
        "ldmatrix_misaligned",
        1,
        36,
        &["ldmatrix", "not 16-byte aligned"],
    );
}

#[test]
fn a_shared_memory_race() {
    check(
        "shared_race_no_barrier",
        1,
        40,
        &[
            "shared memory race",
            "thread (0,0,0)",
            "wrote",
            "no __syncthreads",
        ],
    );
    check(
        "shared_race_in_warp",
        1,
        5,
        &["shared memory race", "wrote", "__syncwarp of both"],
    );
    check(
        "shared_write_write_race",
        1,
        7,
        &["shared memory race", "a write", "wrote"],
    );
}

#[test]
fn a_correct_launch_of_the_same_module_passes() {
    // The faults are the kernels' doing: with no culprit (-1) the first kernel runs clean.
    let Some(m) = module() else { return };
    let input: Vec<f32> = (0..64).map(|i| i as f32).collect();
    let mut out = vec![0f32; 64];
    let bufs = [
        EmuBuffer::input("in", &input),
        EmuBuffer::output("out", &mut out),
    ];
    let mut args: Vec<u8> = bytemuck::cast_slice(&[bufs[0].addr(), bufs[1].addr()]).to_vec();
    args.extend_from_slice(bytemuck::cast_slice(&[-1i32, 0]));
    for entry in [
        "global_read_past_end",
        "barrier_skipped",
        "shuffle_lane_missing",
    ] {
        // SAFETY: as in `fault_of`.
        unsafe { m.launch(entry, [1, 1, 1], [64, 1, 1], 256, &args, &bufs) }
            .unwrap_or_else(|e| panic!("{entry}: {e}"));
    }
    // A __syncwarp of both lanes orders the write and the read.
    let mut synced: Vec<u8> = bytemuck::cast_slice(&[bufs[0].addr(), bufs[1].addr()]).to_vec();
    synced.extend_from_slice(bytemuck::cast_slice(&[105i32, 0]));
    // SAFETY: as in `fault_of`.
    unsafe {
        m.launch(
            "shared_race_in_warp",
            [1, 1, 1],
            [64, 1, 1],
            256,
            &synced,
            &bufs,
        )
    }
    .unwrap_or_else(|e| panic!("shared_race_in_warp with __syncwarp: {e}"));
    drop(bufs);
    assert_eq!(out[0], 0.0, "in[0], read by lane 5 after the __syncwarp");
    assert_eq!(out[5], 4.0, "x from lane 5 ^ 1 after shuffle_lane_missing");
}

#[test]
fn a_source_that_does_not_compile_keeps_the_compiler_log() {
    if module().is_none() {
        return;
    }
    let broken = "extern \"C\" __global__ void k(const int x) { undeclared_name = x; }\n";
    match EmuModule::build("broken", broken, &["k"]) {
        Err(EmuError::CompileFailed { log, module, .. }) => {
            assert_eq!(module, "broken");
            assert!(log.contains("undeclared_name"), "{log}");
        }
        Err(other) => panic!("expected a compile failure, got {other}"),
        Ok(_) => panic!("a broken source compiled"),
    }
}
