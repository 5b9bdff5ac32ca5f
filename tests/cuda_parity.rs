//! The CUDA backend against the reference: the shared parity sweep (every variant, dtype,
//! mask, statistics level, GQA, Nq = 1 / Nk = 1, massive activations, views), a sweep with
//! lengths and head dims past one tile, every head-dim tile, determinism and views: the suite
//! tests/cuda_emu_parity.rs runs on the CPU emulator (when the two disagree, the GPU is right). Runs wherever a GPU is present;
//! elsewhere it skips with a message, or fails when `OUTLIER_ATTN_REQUIRE` names `cuda`.
#![cfg(feature = "cuda")]
mod common;

use std::sync::OnceLock;

use outlier_attn::cuda::CudaBackend;
use outlier_attn::{Backend, DType};
use proptest::test_runner::TestRunner;

/// The backend, opened once per test process; `None` (after the skip message) when absent.
fn backend() -> Option<&'static CudaBackend> {
    static BACKEND: OnceLock<Result<CudaBackend, String>> = OnceLock::new();
    match BACKEND.get_or_init(|| CudaBackend::new().map_err(|e| e.to_string())) {
        Ok(b) => Some(b),
        Err(why) => {
            common::skip_or_fail("cuda", why);
            None
        }
    }
}

#[test]
fn cuda_passes_the_parity_sweep() {
    let Some(b) = backend() else { return };
    for line in b.describe() {
        eprintln!("{line}");
    }
    common::parity_sweep(b, &common::Limits::default());
}

/// Lengths past one 128-row query block and the 64-key tile, head dims up to 256 (every tile,
/// and dims that are not a multiple of 16), fewer cases as each is larger.
#[test]
fn cuda_passes_the_parity_sweep_past_one_tile() {
    let Some(b) = backend() else { return };
    let limits = common::Limits {
        max_len: 160,
        max_head_dim: 256,
        max_batch: 1,
        max_kv_heads: 2,
        max_group: 2,
        ..common::Limits::default()
    };
    common::parity_sweep(b, &limits);
}

#[test]
fn cuda_is_deterministic_and_reads_views() {
    let Some(b) = backend() else { return };
    let limits = common::Limits {
        max_len: 96,
        max_head_dim: 128,
        ..common::Limits::default()
    };
    let mut runner = TestRunner::new(proptest::test_runner::Config {
        cases: common::config().cases.min(16),
        ..common::config()
    });
    runner
        .run(&common::arb_case(&limits), |case| {
            common::assert_deterministic(b, &case);
            common::assert_views_match(b, &case.problem, case.spec.seed);
            Ok(())
        })
        .unwrap();
}

/// Every head-dim tile and variant (shared with the emulator's tests).
#[test]
fn cuda_every_tile_and_variant() {
    let Some(b) = backend() else { return };
    for case in common::cuda_tile_cases() {
        if let Err(e) = common::check_case(b, &case) {
            panic!("{e}");
        }
    }
}

/// Lengths across several 128-row query blocks and 64-key tiles, every variant and statistic
/// (shared with the emulator's tests).
#[test]
fn cuda_passes_across_several_blocks_and_tiles() {
    let Some(b) = backend() else { return };
    for case in common::cuda_block_cases() {
        if let Err(e) = common::check_case(b, &case) {
            panic!("{e}");
        }
    }
}

/// NaN and ±Inf in a query row, a key and a value channel propagate as in the reference
/// (shared with the emulator's tests).
#[test]
fn cuda_propagates_nonfinite_inputs() {
    let Some(b) = backend() else { return };
    common::assert_nonfinite_propagate(b);
}

/// Fixed cases the random sweep may draw rarely (shared with the emulator's tests).
#[test]
fn cuda_fixed_cases() {
    let Some(b) = backend() else { return };
    for (i, problem) in common::cuda_fixed_problems().iter().enumerate() {
        common::assert_views_match(b, problem, 1000 + i as u64);
    }
}

/// First use of one specialisation in this process: a cold NVRTC compile when the disk cache
/// is empty, a cubin load when an earlier process left it there. Prints the time (the H200
/// script runs it twice with one cache directory).
#[test]
fn cuda_module_compile_time() {
    let Some(b) = backend() else { return };
    use outlier_attn::cuda::{CudaAttention, kernels};
    let attn = CudaAttention::new(b.attention().context().clone()).expect("nvrtc");
    let spec = attn.specialization(DType::Bf16, 128);
    let cached = kernels::cache_dir()
        .map(|dir| kernels::cache_path(&dir, spec, attn.arch(), attn.nvrtc_version()).exists())
        .unwrap_or(false);
    let start = std::time::Instant::now();
    let prepared = attn.prepare(spec).expect("compile and load");
    assert_eq!(
        matches!(prepared.cache, kernels::CacheOutcome::Hit(_)),
        cached,
        "{:?}",
        prepared.cache
    );
    eprintln!(
        "outlier-attn-compile spec={spec} arch={} nvrtc={} {} seconds={:.3} cache={:?}",
        attn.arch(),
        attn.nvrtc_version(),
        if cached {
            "warm (disk cache)"
        } else {
            "cold (nvrtc)"
        },
        start.elapsed().as_secs_f64(),
        prepared.cache
    );
}

/// Without a driver, a device or NVRTC, opening the backend is an error that names what is
/// missing (never a panic); with them, it describes the device, its architecture and NVRTC.
#[test]
fn cuda_detection_explains_itself() {
    match CudaBackend::new() {
        Ok(b) => {
            let lines = b.describe();
            assert!(
                lines.iter().any(|l| l.contains("compute capability")),
                "{lines:?}"
            );
            assert!(lines.iter().any(|l| l.contains("NVRTC")), "{lines:?}");
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(
                ["libcuda", "device", "libnvrtc"]
                    .iter()
                    .any(|w| msg.contains(w)),
                "unexplained: {msg}"
            );
        }
    }
}

/// Compiles (or loads from the disk cache) every specialisation this device runs, in parallel:
/// the H200 script runs it first so that later steps never wait for NVRTC.
#[test]
fn cuda_prepare_every_specialization() {
    let Some(b) = backend() else { return };
    let attn = b.attention();
    let start = std::time::Instant::now();
    std::thread::scope(|scope| {
        for spec in outlier_attn::cuda::Specialization::ALL {
            if spec.runs_on(attn.arch()) {
                scope.spawn(move || attn.prepare(spec).unwrap_or_else(|e| panic!("{spec}: {e}")));
            }
        }
    });
    eprintln!(
        "outlier-attn-compile every specialisation for {} in {:.1} s",
        attn.arch(),
        start.elapsed().as_secs_f64()
    );
}

#[test]
fn cuda_device_times_measure_the_kernels() {
    let Some(b) = backend() else { return };
    assert!(
        common::assert_device_times_measure_the_kernels(b),
        "{}: CUDA events are always there",
        b.name()
    );
}

#[test]
fn cuda_long_sequences_pass() {
    let Some(b) = backend() else { return };
    common::assert_long_sequences_pass(b);
}

/// Split-KV forced off, on, and at one 64-key tile per split on the decode cases (tests/common
/// `decode_cases`): each passes the parity rule and is bit-identical from run to run, as on the
/// emulator.
#[test]
fn cuda_split_kv_on_and_off_pass_and_are_deterministic() {
    use outlier_attn::cuda::SplitKv;
    if backend().is_none() {
        return;
    }
    for split in [SplitKv::Off, SplitKv::On, SplitKv::KeysPerSplit(64)] {
        let b = CudaBackend::with_split_kv(split).expect("the device opened once already");
        for case in common::decode_cases() {
            if let Err(e) = common::check_case(&b, &case) {
                panic!("{split:?}: {e}");
            }
            common::assert_deterministic(&b, &case);
        }
    }
}
