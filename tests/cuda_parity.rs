//! The CUDA backend against the reference: the shared parity sweep (every variant, dtype,
//! mask, statistics level, GQA, Nq = 1 / Nk = 1, massive activations, views), a sweep with
//! lengths and head dims past one tile, every head-dim tile, determinism and views: the suite
//! tests/cuda_emu_parity.rs runs on the CPU emulator (when the two disagree, the GPU is right). Runs wherever a GPU is present;
//! elsewhere it skips with a message, or fails when `OUTLIER_ATTN_REQUIRE` names `cuda`.
#![cfg(feature = "cuda")]
mod common;

use std::sync::{OnceLock, RwLock, RwLockReadGuard};

use outlier_attn::cuda::CudaBackend;
use outlier_attn::{Backend, DType};
use proptest::test_runner::TestRunner;

/// The GPU, shared by the tests of this process (libtest runs them on parallel threads) and
/// taken alone by the one that times kernels: its events would count the others' kernels too.
static GPU: RwLock<()> = RwLock::new(());

/// A share of the GPU, held for a whole test.
fn shared_gpu() -> RwLockReadGuard<'static, ()> {
    GPU.read().unwrap_or_else(|e| e.into_inner())
}

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
    let _gpu = shared_gpu();
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
    let _gpu = shared_gpu();
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
    let _gpu = shared_gpu();
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
    let _gpu = shared_gpu();
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
    let _gpu = shared_gpu();
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
    let _gpu = shared_gpu();
    let Some(b) = backend() else { return };
    common::assert_nonfinite_propagate(b);
}

/// Fixed cases the random sweep may draw rarely (shared with the emulator's tests).
#[test]
fn cuda_fixed_cases() {
    let _gpu = shared_gpu();
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
    let _gpu = shared_gpu();
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
    let _gpu = shared_gpu();
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
    let _gpu = shared_gpu();
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
    let _alone = GPU.write().unwrap_or_else(|e| e.into_inner());
    let Some(b) = backend() else { return };
    assert!(
        common::assert_device_times_measure_the_kernels(b),
        "{}: CUDA events are always there",
        b.name()
    );
}

#[test]
fn cuda_long_sequences_pass() {
    let _gpu = shared_gpu();
    let Some(b) = backend() else { return };
    common::assert_long_sequences_pass(b);
}

/// Split-KV forced off, on, and at one 64-key tile per split on the decode cases (tests/common
/// `decode_cases`): each passes the parity rule and is bit-identical from run to run, as on the
/// emulator.
#[test]
fn cuda_split_kv_on_and_off_pass_and_are_deterministic() {
    let _gpu = shared_gpu();
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

/// Engine-shaped calls (DESIGN.md section 6) on the GPU: windows, packed Q and K/V, dense K/V
/// with lengths, paged caches of any page size, every variant and statistic; none refused.
#[test]
fn cuda_runs_every_engine_shaped_case() {
    let _gpu = shared_gpu();
    let Some(b) = backend() else { return };
    let cases = common::config().cases;
    let ran = common::engine_parity_sweep_cases(b, &common::Limits::default(), cases);
    assert_eq!(ran as u32, cases, "{}: some cases were refused", b.name());
}

/// Windows as gpt-oss and Mistral run them, past several tiles and query blocks (tests/common
/// `window_problems`), and random windows on dense calls.
#[test]
fn cuda_passes_the_window_cases() {
    let _gpu = shared_gpu();
    let Some(b) = backend() else { return };
    for (i, problem) in common::window_problems().iter().enumerate() {
        let inputs = outlier_attn::cases::random_inputs(
            problem,
            &outlier_attn::cases::InputSpec {
                seed: 300 + i as u64,
                ..Default::default()
            },
        );
        let report = outlier_attn::parity::check_backend(b, problem, &inputs).expect("runs");
        let label = outlier_attn::cases::label(problem);
        assert!(report.passed(), "{label}:\n{report}");
    }
    common::windowed_parity_sweep(b, &common::Limits::default(), common::config().cases);
}

/// Split-KV at one 64-key tile per split and forced on, on every engine layout (paged caches
/// with and without tile-multiple pages, dense K/V with lengths, packed Q and K, a window whose
/// first split sees only the sink): each passes and repeats bit for bit.
#[test]
fn cuda_split_kv_runs_on_every_sequence_layout() {
    let _gpu = shared_gpu();
    use outlier_attn::cuda::SplitKv;
    if backend().is_none() {
        return;
    }
    for split in [SplitKv::KeysPerSplit(64), SplitKv::On] {
        let b = CudaBackend::with_split_kv(split).expect("the device opened once already");
        common::assert_engine_cases_pass_and_repeat(&b, &common::decode_engine_cases());
    }
}

/// Batch invariance with a fixed split size and without split-KV (tests/common
/// `assert_batch_invariant`).
#[test]
fn cuda_split_kv_is_batch_invariant() {
    let _gpu = shared_gpu();
    use outlier_attn::cuda::SplitKv;
    if backend().is_none() {
        return;
    }
    for split in [SplitKv::KeysPerSplit(64), SplitKv::Off] {
        let b = CudaBackend::with_split_kv(split).expect("the device opened once already");
        common::assert_batch_invariant(&b, &format!("{split:?}"));
    }
}

/// Qwen3-Next's gate read as a view of the q projection (tests/common `gate_view_case`).
#[test]
fn cuda_reads_the_gate_as_a_view_of_the_q_projection() {
    let _gpu = shared_gpu();
    let Some(b) = backend() else { return };
    for dtype in [DType::Bf16, DType::F16, DType::F32] {
        let (problem, inputs) = common::gate_view_case(dtype);
        let report = outlier_attn::parity::check_backend(b, &problem, &inputs).expect("runs");
        assert!(report.passed(), "{dtype:?}:\n{report}");
    }
}

/// Bad index tensors at the device level (crate docs, "Bad index tensors on the device"), on
/// the SIMT kernel (f32) and the tensor-core kernel (bf16), unsplit and with split-KV forced:
/// the rows that read a bad entry are NaN, the others exact (tests/common
/// `check_bad_index_outputs`). Under compute-sanitizer's memcheck (scripts/h200/run.sh) a run
/// also shows that no kernel read or wrote outside the buffers it was given.
#[test]
fn cuda_contains_bad_index_tensors() {
    let _gpu = shared_gpu();
    use outlier_attn::cuda::SplitKv;
    if backend().is_none() {
        return;
    }
    for split in [SplitKv::Off, SplitKv::KeysPerSplit(64)] {
        let b = CudaBackend::with_split_kv(split).expect("the device opened once already");
        // The SIMT kernel (f32) does not split: forcing it is refused by name.
        let dtypes: &[DType] = match split {
            SplitKv::Off => &[DType::F32, DType::Bf16],
            _ => &[DType::Bf16],
        };
        for mut case in common::bad_index_cases() {
            for &dtype in dtypes {
                case.problem.dtype = dtype;
                for t in [&mut case.valid.q, &mut case.valid.k, &mut case.valid.v] {
                    *t = outlier_attn::HostTensor::from_f64(dtype, &t.to_f64_vec());
                }
                let out = match dtype {
                    DType::F32 => device_call::<f32>(&b, &case.problem, &case.valid, &case.bad),
                    _ => device_call::<half::bf16>(&b, &case.problem, &case.valid, &case.bad),
                }
                .unwrap_or_else(|e| panic!("{split:?} {} {dtype:?}: {e}", case.label));
                if let Err(e) = common::check_bad_index_outputs(&case, &out) {
                    panic!("{split:?} {} {dtype:?}: {e}", case.label);
                }
            }
        }
    }
}

/// One device-level call of `b`'s [`CudaAttention`](outlier_attn::cuda::CudaAttention) with
/// `inputs` uploaded as they are and `indices` as the index tensors the device reads (never
/// checked on the host), outputs poisoned with NaN beforehand and read back.
fn device_call<T: outlier_attn::cuda::CudaElement>(
    b: &CudaBackend,
    problem: &outlier_attn::Problem,
    inputs: &outlier_attn::HostInputs,
    indices: &outlier_attn::SeqIndices<Vec<i32>>,
) -> Result<outlier_attn::HostOutputs, String>
where
    outlier_attn::HostTensor: From<Vec<T>>,
{
    use outlier_attn::cuda::{DeviceArgs, DeviceParams, Workspace};
    use outlier_attn::{HostTensor, Layouts, SeqIndices};
    let stream = b.stream();
    let fail = |e: outlier_attn::cuda::cudarc::driver::DriverError| e.to_string();
    let up =
        |t: &HostTensor| stream.clone_htod(&bytemuck::pod_collect_to_vec::<u8, T>(t.as_bytes()));
    let up_f32 = |t: &HostTensor| {
        stream.clone_htod(&t.to_f64_vec().iter().map(|&x| x as f32).collect::<Vec<_>>())
    };
    let up_i32 = |x: &Vec<i32>| stream.clone_htod(x);
    let poisoned = outlier_attn::parity::poisoned_outputs(problem);
    let pr = &inputs.params;
    let (q, k, v) = (
        up(&inputs.q).map_err(fail)?,
        up(&inputs.k).map_err(fail)?,
        up(&inputs.v).map_err(fail)?,
    );
    let mut o = up(&poisoned.o).map_err(fail)?;
    let mut lse = stream.clone_htod(&poisoned.lse).map_err(fail)?;
    let mut stats = poisoned
        .stats
        .as_ref()
        .map(|x| stream.clone_htod(x))
        .transpose()
        .map_err(fail)?;
    let mut key_mass = poisoned
        .key_mass
        .as_ref()
        .map(|x| stream.clone_htod(x))
        .transpose()
        .map_err(fail)?;
    let k_sink = pr.k_sink.as_ref().map(up_f32).transpose().map_err(fail)?;
    let v_sink = pr.v_sink.as_ref().map(up_f32).transpose().map_err(fail)?;
    let v_bias = pr.v_bias.as_ref().map(up_f32).transpose().map_err(fail)?;
    let sink_logits = pr
        .sink_logits
        .as_ref()
        .map(up_f32)
        .transpose()
        .map_err(fail)?;
    let gate = pr.gate.as_ref().map(up).transpose().map_err(fail)?;
    let ix = SeqIndices {
        cu_seqlens_q: indices
            .cu_seqlens_q
            .as_ref()
            .map(up_i32)
            .transpose()
            .map_err(fail)?,
        cu_seqlens_k: indices
            .cu_seqlens_k
            .as_ref()
            .map(up_i32)
            .transpose()
            .map_err(fail)?,
        seqlens_k: indices
            .seqlens_k
            .as_ref()
            .map(up_i32)
            .transpose()
            .map_err(fail)?,
        block_table: indices
            .block_table
            .as_ref()
            .map(up_i32)
            .transpose()
            .map_err(fail)?,
    };
    let args = DeviceArgs {
        q: q.as_view(),
        k: k.as_view(),
        v: v.as_view(),
        o: o.as_view_mut(),
        lse: Some(lse.as_view_mut()),
        stats: stats.as_mut().map(|x| x.as_view_mut()),
        key_mass: key_mass.as_mut().map(|x| x.as_view_mut()),
        layouts: Layouts {
            o: problem.contiguous_layouts().o,
            ..inputs.layouts
        },
        params: DeviceParams {
            k_sink: k_sink.as_ref().map(|x| x.as_view()),
            v_sink: v_sink.as_ref().map(|x| x.as_view()),
            v_bias: v_bias.as_ref().map(|x| x.as_view()),
            sink_logits: sink_logits.as_ref().map(|x| x.as_view()),
            gate: gate.as_ref().map(|x| x.as_view()),
        },
        indices: SeqIndices {
            cu_seqlens_q: ix.cu_seqlens_q.as_ref().map(|x| x.as_view()),
            cu_seqlens_k: ix.cu_seqlens_k.as_ref().map(|x| x.as_view()),
            seqlens_k: ix.seqlens_k.as_ref().map(|x| x.as_view()),
            block_table: ix.block_table.as_ref().map(|x| x.as_view()),
        },
    };
    let mut workspace = Workspace::new();
    b.attention()
        .forward(stream, problem, args, &mut workspace)
        .map_err(|e| e.to_string())?;
    let down = |x: &outlier_attn::cuda::cudarc::driver::CudaSlice<f32>| stream.clone_dtoh(x);
    let out = outlier_attn::HostOutputs {
        o: HostTensor::from(stream.clone_dtoh(&o).map_err(fail)?),
        lse: down(&lse).map_err(fail)?,
        stats: stats.as_ref().map(down).transpose().map_err(fail)?,
        key_mass: key_mass.as_ref().map(down).transpose().map_err(fail)?,
    };
    stream.synchronize().map_err(fail)?;
    Ok(out)
}
