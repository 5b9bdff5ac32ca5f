//! The CUDA kernels on the CPU emulator (backend `cuda-emu`) against the reference: the shared
//! parity sweep (every variant, dtype, mask, softcap, statistics level, GQA, Nq = 1 / Nk = 1,
//! massive activations, views), the f16/bf16 tensor-core kernel at every head-dim tile, the
//! SIMT kernel for every dtype (sm_75), lengths past one and two tiles, the CUDA backend's
//! fixed cases, determinism, long sequences, and the device-level path (workspace reuse,
//! outputs inside larger buffers, rows that are not 16-byte aligned). Needs g++ only; skips
//! without it, or fails when `OUTLIER_ATTN_REQUIRE` names `cuda-emu`. Shapes are kept small:
//! the emulator is about a million times slower than a GPU.
#![cfg(feature = "cuda-emulator")]
mod common;

use std::sync::{Mutex, OnceLock};

use common::Limits;
use outlier_attn::cases::{self, InputSpec};
use outlier_attn::cuda::{Arch, HeadDimTile, KernelPath, PlanOptions, SplitKv};
use outlier_attn::cuda_emu::{EmuArgs, EmuAttention, EmuBackend, EmuParams, EmuWorkspace};
use outlier_attn::{
    Backend, DType, Error, Gate, GateGranularity, Layout, Layouts, Mask, Problem, SeqIndices,
    Shape, Stat, StatsLevel, Strides, Variant,
};
use proptest::test_runner::TestRunner;

/// The backend for `arch`, opened once per test process; `None` (after the skip message)
/// without a C++ compiler.
fn backend_for(arch: Arch) -> Option<&'static EmuBackend> {
    static SM80: OnceLock<Result<EmuBackend, String>> = OnceLock::new();
    static SM75: OnceLock<Result<EmuBackend, String>> = OnceLock::new();
    let cell = if arch == Arch::SM80 { &SM80 } else { &SM75 };
    match cell.get_or_init(|| EmuBackend::with_arch(arch).map_err(|e| e.to_string())) {
        Ok(b) => Some(b),
        Err(why) => {
            common::skip_or_fail("cuda-emu", why);
            None
        }
    }
}

fn backend() -> Option<&'static EmuBackend> {
    backend_for(Arch::SM80)
}

/// A GPU before sm_80: every dtype on the SIMT kernel.
const SM75: Arch = Arch { major: 7, minor: 5 };

/// The sweep with at most `cases` cases (the environment's count when lower).
fn sweep(b: &EmuBackend, limits: &Limits, cases: u32) {
    let start = std::time::Instant::now();
    let config = common::config();
    let mut runner = TestRunner::new(proptest::test_runner::Config {
        cases: config.cases.min(cases),
        ..config
    });
    let result = runner.run(&common::arb_case(limits), |case| {
        common::check_case(b, &case).map(|_| ())
    });
    if let Err(e) = result {
        panic!("{}: parity sweep failed: {e}", b.name());
    }
    eprintln!(
        "{}: sweep of {} cases in {:.1} s",
        b.name(),
        config.cases.min(cases),
        start.elapsed().as_secs_f64()
    );
}

#[test]
fn cuda_emu_passes_the_parity_sweep() {
    let Some(b) = backend() else { return };
    for line in b.describe() {
        eprintln!("{line}");
    }
    sweep(b, &Limits::default(), u32::MAX);
}

/// Lengths past one 128-row query block and one and two K/V tiles, head dims up to 256.
#[test]
fn cuda_emu_passes_the_parity_sweep_past_one_tile() {
    let Some(b) = backend() else { return };
    let limits = Limits {
        max_len: 150,
        max_head_dim: 256,
        max_batch: 1,
        max_kv_heads: 2,
        max_group: 2,
        ..Limits::default()
    };
    sweep(b, &limits, u32::MAX);
}

/// The SIMT kernel with f16 and bf16 inputs (GPUs before sm_80).
#[test]
fn cuda_emu_simt_path_passes_the_parity_sweep() {
    let Some(b) = backend_for(SM75) else { return };
    assert_eq!(
        b.attention().specialization(DType::Bf16, 64).path,
        KernelPath::Simt
    );
    let limits = Limits {
        dtypes: vec![DType::F16, DType::Bf16],
        max_len: 40,
        max_head_dim: 96,
        ..Limits::default()
    };
    sweep(b, &limits, 24);
}

/// Every head-dim tile of the tensor-core kernel in both 16-bit dtypes and the f32 SIMT kernel
/// at the same dims, the variants in turn (tests/common `cuda_tile_cases`).
#[test]
fn cuda_emu_every_tile_and_variant() {
    let Some(b) = backend() else { return };
    for case in common::cuda_tile_cases() {
        let d = case.problem.shape.head_dim;
        let dtype = case.problem.dtype;
        if dtype != DType::F32 {
            assert_eq!(
                b.attention().specialization(dtype, d).path,
                KernelPath::TensorCore(HeadDimTile::for_head_dim(d))
            );
        }
        if let Err(e) = common::check_case(b, &case) {
            panic!("{e}");
        }
    }
}

/// Lengths across several query blocks and K/V tiles, every variant causal and not, every
/// statistic, f16 and bf16 at d = 64, 128 and 256 (tests/common `cuda_block_cases`).
#[test]
fn cuda_emu_passes_across_several_blocks_and_tiles() {
    let Some(b) = backend() else { return };
    let start = std::time::Instant::now();
    let block = |d| match b.attention().specialization(DType::F16, d).path {
        KernelPath::TensorCore(t) => (t.block_m(), t.block_n()),
        KernelPath::Simt => panic!("d = {d}: f16 on sm_80 takes the tensor-core kernel"),
    };
    let cases = common::cuda_block_cases();
    common::assert_block_cases_cover(&cases, block);
    for case in cases {
        if let Err(e) = common::check_case(b, &case) {
            panic!("{e}");
        }
    }
    eprintln!(
        "several blocks and tiles on the emulator in {:.1} s",
        start.elapsed().as_secs_f64()
    );
}

/// A workspace reserved before the first call from the largest layout of the calls to come
/// (as an engine that captures CUDA graphs does; the split-KV partials depend on the key
/// length, so not from the largest unsplit call alone) serves every call without growing.
#[test]
fn cuda_emu_workspace_reserved_for_the_largest_call_is_enough() {
    use outlier_attn::cuda::WorkspaceLayout;
    let Some(b) = backend() else { return };
    let attention: &EmuAttention = b.attention();
    let calls: Vec<Problem> = [
        (Shape::new(2, 4, 2, 200, 150, 64), StatsLevel::HeadsAndKeys),
        (Shape::new(1, 4, 1, 130, 300, 64), StatsLevel::Heads),
        (Shape::new(2, 2, 2, 7, 1000, 56), StatsLevel::HeadsAndKeys),
    ]
    .into_iter()
    .map(|(shape, stats)| {
        Problem::new(shape, DType::F16)
            .with_variant(Variant::LogitSink)
            .with_mask(Mask::Causal)
            .with_stats(stats)
    })
    .collect();
    let mut workspace = EmuWorkspace::new();
    let largest = calls
        .iter()
        .map(|p| WorkspaceLayout::for_problem(p, attention.arch()).len())
        .max();
    workspace.reserve(largest.unwrap_or(0));
    let reserved = workspace.bytes();
    assert!(reserved > 0);
    for problem in calls {
        let shape = problem.shape;
        let stats = problem.stats;
        let inputs = cases::random_inputs(&problem, &InputSpec::default());
        let expected = b.forward(&problem, &inputs).expect("host level");
        let s = &problem.shape;
        let typed = |t: &outlier_attn::HostTensor| -> Vec<half::f16> {
            bytemuck::pod_collect_to_vec(t.as_bytes())
        };
        let (q, k, v) = (typed(&inputs.q), typed(&inputs.k), typed(&inputs.v));
        let theta: Vec<f32> = inputs
            .params
            .sink_logits
            .as_ref()
            .expect("θ")
            .to_f64_vec()
            .iter()
            .map(|&x| x as f32)
            .collect();
        let mut o = vec![half::f16::ZERO; s.batch * s.q_len * s.q_heads * s.head_dim];
        let mut lse = vec![f32::NAN; s.lse_len()];
        let mut stats_out = vec![f32::NAN; s.heads_total() * Stat::COUNT];
        let mut key_mass = vec![f32::NAN; s.heads_total() * s.kv_len];
        let keys = stats == StatsLevel::HeadsAndKeys;
        attention
            .forward(
                &problem,
                EmuArgs {
                    q: &q,
                    k: &k,
                    v: &v,
                    o: &mut o,
                    lse: Some(&mut lse),
                    stats: Some(&mut stats_out),
                    key_mass: keys.then_some(&mut key_mass[..]),
                    layouts: inputs.layouts,
                    params: EmuParams {
                        sink_logits: Some(&theta),
                        ..EmuParams::default()
                    },
                    indices: SeqIndices::none(),
                },
                &mut workspace,
            )
            .expect("device level");
        assert_eq!(workspace.bytes(), reserved, "{shape:?}: the workspace grew");
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&stats_out),
            bits(expected.stats.as_deref().expect("stats"))
        );
        if keys {
            assert_eq!(
                bits(&key_mass),
                bits(expected.key_mass.as_deref().expect("key mass"))
            );
        }
    }
}

/// The CUDA backend's fixed cases (tests/common), dense and as views.
#[test]
fn cuda_emu_fixed_cases() {
    let Some(b) = backend() else { return };
    for (i, problem) in common::cuda_fixed_problems().iter().enumerate() {
        common::assert_views_match(b, problem, 1000 + i as u64);
    }
}

#[test]
fn cuda_emu_is_deterministic_and_reads_views() {
    let Some(b) = backend() else { return };
    let limits = Limits {
        max_len: 80,
        max_head_dim: 128,
        ..Limits::default()
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

/// NaN and ±Inf in a query row, a key and a value channel propagate as in the reference, on
/// both tensor-core paths and the SIMT kernel (tests/common `nonfinite_cases`).
#[test]
fn cuda_emu_propagates_nonfinite_inputs() {
    let Some(b) = backend() else { return };
    let start = std::time::Instant::now();
    common::assert_nonfinite_propagate(b);
    eprintln!(
        "non-finite cases on the emulator in {:.1} s",
        start.elapsed().as_secs_f64()
    );
}

#[test]
fn cuda_emu_long_sequences_pass() {
    let Some(b) = backend() else { return };
    let start = std::time::Instant::now();
    common::assert_long_sequences_pass(b);
    eprintln!(
        "long sequences on the emulator in {:.1} s",
        start.elapsed().as_secs_f64()
    );
}

/// The device-level path: O inside a larger buffer at an offset (guard regions must stay
/// untouched), one workspace reused by calls of growing and shrinking size, Q/K/V rows that
/// are not 16-byte aligned (the plain-load path instead of cp.async) giving the same bits as
/// aligned ones, and typed refusals.
#[test]
fn cuda_emu_device_level_workspace_and_guards() {
    // Unsplit, where the workspace follows the statistics alone (split-KV adds partials that
    // depend on Nk), then split (the combine writes O and the LSE).
    for split in [SplitKv::Off, ONE_TILE_PER_SPLIT] {
        device_level_workspace_and_guards(split);
    }
}

fn device_level_workspace_and_guards(split: SplitKv) {
    use half::bf16;
    let Some(b) = split_backend(split) else {
        return;
    };
    let attention: &EmuAttention = b.attention();
    let mut workspace = EmuWorkspace::new();
    let mut sizes = Vec::new();
    let shapes = [
        (Shape::new(1, 2, 1, 70, 90, 64), 1),
        (Shape::new(2, 2, 2, 130, 40, 32), 2),
        (Shape::new(1, 2, 1, 5, 7, 16), 3),
    ];
    // The split run needs only the shape with two K/V tiles.
    let count = if split == SplitKv::Off {
        shapes.len()
    } else {
        1
    };
    for (shape, seed) in shapes.into_iter().take(count) {
        let problem = Problem::new(shape, DType::Bf16)
            .with_variant(Variant::ContextScale {
                gate: Gate::Sigmoid,
                granularity: GateGranularity::PerHead,
            })
            .with_mask(Mask::Causal)
            .with_stats(StatsLevel::HeadsAndKeys);
        let inputs = cases::random_inputs(
            &problem,
            &InputSpec {
                seed,
                ..InputSpec::default()
            },
        );
        let expected = b.forward(&problem, &inputs).expect("host level");
        let s = &problem.shape;
        let q: Vec<bf16> = bytemuck::pod_collect_to_vec(inputs.q.as_bytes());
        let k: Vec<bf16> = bytemuck::pod_collect_to_vec(inputs.k.as_bytes());
        let v: Vec<bf16> = bytemuck::pod_collect_to_vec(inputs.v.as_bytes());
        let gate: Vec<bf16> =
            bytemuck::pod_collect_to_vec(inputs.params.gate.as_ref().expect("z").as_bytes());

        // O at offset 5 with a padded head stride, inside a NaN-filled buffer with a tail.
        let o_layout = Layout {
            offset: 5,
            strides: Strides {
                batch: (s.q_len * s.q_heads * (s.head_dim + 8)) as u64,
                seq: (s.q_heads * (s.head_dim + 8)) as u64,
                head: (s.head_dim + 8) as u64,
                channel: 1,
            },
        };
        let o_len = 5 + s.batch * s.q_len * s.q_heads * (s.head_dim + 8) + 11;
        let guard = bf16::from_f32(-7.25);
        let mut o = vec![guard; o_len];
        let mut lse = vec![f32::NAN; s.lse_len()];
        let mut stats = vec![f32::NAN; s.heads_total() * Stat::COUNT];
        let mut key_mass = vec![f32::NAN; s.heads_total() * s.kv_len];
        let layouts = Layouts {
            o: o_layout,
            ..inputs.layouts
        };
        let args = EmuArgs {
            q: &q,
            k: &k,
            v: &v,
            o: &mut o,
            lse: Some(&mut lse),
            stats: Some(&mut stats),
            key_mass: Some(&mut key_mass),
            layouts,
            params: EmuParams {
                gate: Some(&gate),
                ..EmuParams::default()
            },
            indices: SeqIndices::none(),
        };
        attention
            .forward(&problem, args, &mut workspace)
            .expect("device level");
        sizes.push(workspace.bytes());
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&lse), bits(&expected.lse));
        assert_eq!(
            bits(&stats),
            bits(expected.stats.as_deref().expect("stats"))
        );
        assert_eq!(
            bits(&key_mass),
            bits(expected.key_mass.as_deref().expect("key mass"))
        );
        let dense: Vec<bf16> = bytemuck::pod_collect_to_vec(expected.o.as_bytes());
        let dense_layout = Layout::contiguous(s.q_len, s.q_heads, s.head_dim);
        let mut written = vec![false; o_len];
        for bb in 0..s.batch {
            for i in 0..s.q_len {
                for h in 0..s.q_heads {
                    for c in 0..s.head_dim {
                        let at = o_layout.index(bb, i, h, c);
                        written[at] = true;
                        assert_eq!(
                            o[at].to_bits(),
                            dense[dense_layout.index(bb, i, h, c)].to_bits()
                        );
                    }
                }
            }
        }
        assert!(
            o.iter()
                .zip(&written)
                .all(|(x, &w)| w || x.to_bits() == guard.to_bits()),
            "an element outside O's view was written"
        );

        // The same Q, K, V one element further into their buffers: rows no longer 16-byte
        // aligned, so the kernel loads them without cp.async; the results must not change.
        let shift = |x: &[bf16]| -> Vec<bf16> {
            std::iter::once(bf16::ZERO)
                .chain(x.iter().copied())
                .collect()
        };
        let (q1, k1, v1) = (shift(&q), shift(&k), shift(&v));
        let moved = |l: Layout| Layout {
            offset: l.offset + 1,
            ..l
        };
        let mut o2 = vec![guard; o_len];
        let mut lse2 = vec![f32::NAN; s.lse_len()];
        let mut stats2 = vec![f32::NAN; s.heads_total() * Stat::COUNT];
        let args = EmuArgs {
            q: &q1,
            k: &k1,
            v: &v1,
            o: &mut o2,
            lse: Some(&mut lse2),
            stats: Some(&mut stats2),
            key_mass: None,
            layouts: Layouts {
                q: moved(inputs.layouts.q),
                k: moved(inputs.layouts.k),
                v: moved(inputs.layouts.v),
                o: o_layout,
                params: outlier_attn::Params::none(),
            },
            params: EmuParams {
                gate: Some(&gate),
                ..EmuParams::default()
            },
            indices: SeqIndices::none(),
        };
        let unaligned = problem.with_stats(StatsLevel::Heads);
        attention
            .forward(&unaligned, args, &mut workspace)
            .expect("unaligned rows");
        assert_eq!(bits(&lse2), bits(&lse), "unaligned rows change the LSE");
        assert_eq!(bits(&stats2), bits(&stats));
        assert!(o2.iter().zip(&o).all(|(a, b)| a.to_bits() == b.to_bits()));

        // Refusals happen before any kernel runs.
        let mut short_lse = vec![0f32; s.lse_len() - 1];
        let mut o3 = vec![guard; o_len];
        let refused = attention.forward(
            &problem.with_stats(StatsLevel::Off),
            EmuArgs {
                q: &q,
                k: &k,
                v: &v,
                o: &mut o3,
                lse: Some(&mut short_lse),
                stats: None,
                key_mass: None,
                layouts,
                params: EmuParams {
                    gate: Some(&gate),
                    ..EmuParams::default()
                },
                indices: SeqIndices::none(),
            },
            &mut workspace,
        );
        assert!(
            matches!(refused, Err(Error::Size { .. })),
            "short LSE: {refused:?}"
        );
        assert!(o3.iter().all(|x| x.to_bits() == guard.to_bits()));
    }
    if split == SplitKv::Off {
        assert!(
            sizes[1] > sizes[0] && sizes[2] == sizes[1],
            "the workspace grows and is kept: {sizes:?}"
        );
    }
}

/// The backend with split-KV set to `split` (sm_80), opened once per setting and process.
fn split_backend(split: SplitKv) -> Option<&'static EmuBackend> {
    static BACKENDS: OnceLock<Mutex<Vec<(SplitKv, &'static EmuBackend)>>> = OnceLock::new();
    let cell = BACKENDS.get_or_init(|| Mutex::new(Vec::new()));
    let mut open = cell.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, b)) = open.iter().find(|(s, _)| *s == split) {
        return Some(b);
    }
    let options = PlanOptions::for_arch(Arch::SM80).with_split_kv(split);
    match EmuBackend::with_plan_options(Arch::SM80, options) {
        Ok(b) => {
            let b: &'static EmuBackend = Box::leak(Box::new(b));
            open.push((split, b));
            Some(b)
        }
        Err(e) => {
            common::skip_or_fail("cuda-emu", &e.to_string());
            None
        }
    }
}

/// One K/V tile per split on the tensor-core tiles 64 and 128 (64 keys each).
const ONE_TILE_PER_SPLIT: SplitKv = SplitKv::KeysPerSplit(64);

/// The plan the emulator runs `problem` with under `split`.
fn cut_of(problem: &Problem, split: SplitKv) -> outlier_attn::cuda::DecodeCut {
    let spec = outlier_attn::cuda::Specialization::select(
        problem.dtype,
        problem.shape.head_dim,
        Arch::SM80,
    );
    let options = PlanOptions::for_arch(Arch::SM80).with_split_kv(split);
    outlier_attn::cuda::DecodeCut::choose(problem, spec, &options).expect("a cut")
}

/// Split-KV on (one tile per split, and the heuristic forced on) and off: each passes the
/// parity rule (statistics included: `Heads` and `HeadsAndKeys` are exact under splitting),
/// and each is bit-identical from run to run.
#[test]
fn cuda_emu_split_kv_on_and_off_pass_and_are_deterministic() {
    let start = std::time::Instant::now();
    for (i, case) in common::decode_cases().iter().enumerate() {
        let split = [ONE_TILE_PER_SPLIT, SplitKv::On][i % 2];
        for setting in [SplitKv::Off, split] {
            let Some(b) = split_backend(setting) else {
                return;
            };
            let cut = cut_of(&case.problem, setting);
            assert_eq!(
                cut.splits > 1,
                setting != SplitKv::Off,
                "{setting:?} on {:?}: {cut:?}",
                case.problem
            );
            if let Err(e) = common::check_case(b, case) {
                panic!("{setting:?} ({cut:?}): {e}");
            }
            if setting != SplitKv::Off && i % 2 == 0 {
                common::assert_deterministic(b, case);
            }
        }
    }
    eprintln!(
        "split-KV on and off on the emulator in {:.1} s",
        start.elapsed().as_secs_f64()
    );
}

/// Split-KV (one tile per split) on the engine layouts (tests/common `decode_engine_cases`):
/// paged caches with and without tile-multiple pages, dense K/V with lengths, packed Q and K,
/// and a 128-token window whose first split sees no key (the sink alone), each held to the
/// reference; and bit-identical from run to run.
#[test]
fn cuda_emu_split_kv_runs_on_every_sequence_layout() {
    let Some(b) = split_backend(ONE_TILE_PER_SPLIT) else {
        return;
    };
    let cases = common::decode_engine_cases();
    for case in &cases {
        let (problem, _) = case.build();
        let label = format!("{} {}", cases::label(&problem), case.seqs.label());
        assert!(cut_of(&problem, ONE_TILE_PER_SPLIT).splits >= 2, "{label}");
    }
    common::assert_engine_cases_pass_and_repeat(b, &cases);
}

/// Splits that see no key of a row (the causal rows above the diagonal of a later split, rows
/// with no key at all when Nq > Nk) merge without NaN: the sink alone, or nothing.
#[test]
fn cuda_emu_split_kv_merges_empty_splits_without_nan() {
    let Some(b) = split_backend(ONE_TILE_PER_SPLIT) else {
        return;
    };
    for (i, (shape, variant)) in [
        (Shape::new(1, 1, 1, 66, 130, 64), Variant::Softmax),
        (Shape::new(1, 2, 2, 132, 129, 32), Variant::LogitSink),
        (Shape::new(1, 1, 1, 68, 129, 128), Variant::KvSink),
    ]
    .into_iter()
    .enumerate()
    {
        let problem = Problem::new(shape, DType::Bf16)
            .with_variant(variant)
            .with_mask(Mask::Causal)
            .with_stats([StatsLevel::Off, StatsLevel::HeadsAndKeys][i % 2]);
        assert!(cut_of(&problem, ONE_TILE_PER_SPLIT).splits >= 3);
        let case = common::Case {
            problem,
            spec: InputSpec {
                seed: 70 + i as u64,
                ..InputSpec::default()
            },
            views: false,
        };
        let report = common::check_case(b, &case).unwrap_or_else(|e| panic!("{e}"));
        let out = b.forward(&problem, &case.inputs()).expect("forward");
        assert!(
            out.o.to_f64_vec().iter().all(|x| x.is_finite()),
            "{variant:?}: a non-finite output ({report})"
        );
    }
}

/// Batch invariance (FlashInfer's test, tests/common `assert_batch_invariant`), with a fixed
/// split size and without split-KV.
#[test]
fn cuda_emu_split_kv_is_batch_invariant() {
    for setting in [ONE_TILE_PER_SPLIT, SplitKv::Off] {
        let Some(b) = split_backend(setting) else {
            return;
        };
        common::assert_batch_invariant(b, &format!("{setting:?}"));
    }
}

/// A split forced where the kernels cannot split is refused by name, before any kernel runs.
#[test]
fn cuda_emu_forced_split_of_clipped_softmax_is_refused() {
    let Some(b) = split_backend(SplitKv::On) else {
        return;
    };
    let problem = Problem::new(Shape::new(1, 2, 1, 1, 150, 64), DType::Bf16).with_variant(
        Variant::ClippedSoftmax {
            zeta: 1.1,
            gamma: -0.05,
        },
    );
    let inputs = cases::random_inputs(&problem, &InputSpec::default());
    match b.forward(&problem, &inputs) {
        Err(Error::Unsupported { reason, .. }) => {
            assert!(reason.contains("ClippedSoftmax"), "{reason}")
        }
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
}

/// Engine-shaped calls (DESIGN.md section 6) on both kernels: windows, packed Q and K/V, dense
/// K/V with lengths and paged caches of any page size, every variant and statistic; the
/// emulator refuses none of them. Small shapes and a sixteenth of the environment's cases
/// (tests/engine_backends.rs runs a quarter of them on sm_80's paths).
#[test]
fn cuda_emu_runs_every_engine_shaped_case() {
    for arch in [Arch::SM80, SM75] {
        let Some(b) = backend_for(arch) else { return };
        let start = std::time::Instant::now();
        let cases = (common::config().cases / 16).max(4);
        let limits = Limits {
            max_len: 20,
            max_head_dim: 32,
            ..Limits::default()
        };
        let ran = common::engine_parity_sweep_cases(b, &limits, cases);
        assert_eq!(ran as u32, cases, "{}: some cases were refused", b.name());
        eprintln!(
            "{}: {cases} engine-shaped cases in {:.1} s",
            b.name(),
            start.elapsed().as_secs_f64()
        );
    }
}

/// Windows past several K/V tiles and query blocks (whole tiles left of the window skipped,
/// the K/V statistics still counting them), on the tensor-core kernel.
#[test]
fn cuda_emu_windows_skip_tiles_and_keep_the_statistics() {
    let Some(b) = backend() else { return };
    let window = |left, right| Mask::Window { left, right };
    for (shape, dtype, variant, mask) in [
        (
            Shape::new(1, 2, 1, 140, 300, 32),
            DType::Bf16,
            Variant::LogitSink,
            window(Some(40), Some(0)),
        ),
        (
            Shape::new(1, 2, 2, 20, 200, 16),
            DType::F16,
            Variant::Sigmoid { bias: None },
            window(Some(30), Some(7)),
        ),
        (
            Shape::new(1, 1, 1, 3, 150, 16),
            DType::F32,
            Variant::KvSink,
            window(Some(20), Some(0)),
        ),
    ] {
        let problem = Problem::new(shape, dtype)
            .with_variant(variant)
            .with_mask(mask)
            .with_stats(StatsLevel::HeadsAndKeys);
        let inputs = cases::random_inputs(&problem, &InputSpec::default());
        let report = outlier_attn::parity::check_backend(b, &problem, &inputs).expect("runs");
        assert!(report.passed(), "{}:\n{report}", cases::label(&problem));
    }
}

/// Qwen3-Next's per-channel sigmoid gate read as a view of the q projection (tests/common
/// `gate_view_case`).
#[test]
fn cuda_emu_reads_the_gate_as_a_view_of_the_q_projection() {
    let Some(b) = backend() else { return };
    for dtype in [DType::Bf16, DType::F32] {
        let (problem, inputs) = common::gate_view_case(dtype);
        let report = outlier_attn::parity::check_backend(b, &problem, &inputs).expect("runs");
        assert!(report.passed(), "{dtype:?}:\n{report}");
    }
}

/// Bad index tensors at the device level (crate docs, "Bad index tensors on the device"): the
/// emulator checks every global access against the buffers given, so a run that completes
/// read and wrote nothing outside them; the rows that read a bad entry are NaN and the others
/// exact (tests/common `check_bad_index_outputs`). On the SIMT kernel (f32) and the
/// tensor-core kernel (bf16).
#[test]
fn cuda_emu_contains_bad_index_tensors() {
    use outlier_attn::HostTensor;
    let Some(b) = backend() else { return };
    let mut workspace = EmuWorkspace::new();
    for mut case in common::bad_index_cases() {
        for dtype in [DType::F32, DType::Bf16] {
            case.problem.dtype = dtype;
            for t in [&mut case.valid.q, &mut case.valid.k, &mut case.valid.v] {
                *t = HostTensor::from_f64(dtype, &t.to_f64_vec());
            }
            let out = device_call(
                b.attention(),
                &case.problem,
                &case.valid,
                &case.bad,
                true,
                &mut workspace,
            )
            .unwrap_or_else(|e| panic!("{} {dtype:?}: {e}", case.label));
            if let Err(e) = common::check_bad_index_outputs(&case, &out) {
                panic!("{} {dtype:?}: {e}", case.label);
            }
        }
    }
}

/// Bad index tensors under split-KV (crate docs, "Bad index tensors on the device"), with the
/// split forced (one K/V tile per split, and the heuristic forced on): a block-table entry of a
/// page in a later split, past the caches or negative, on a paged cache whose pages are not a
/// tile multiple (the GQA fold, no statistics) and on one whose pages are (statistics and key
/// mass); a `seqlens_k` past the capacity or negative; cumulative lengths of packed K that
/// decrease. Each run completes, so the emulator saw no access outside the buffers; the bad
/// sequence's rows, record and key mass are NaN (tests/common `check_bad_index_outputs`) and
/// every other sequence is bit for bit what the same call with good index tensors gives.
#[test]
fn cuda_emu_split_kv_contains_bad_index_tensors() {
    use cases::{KvStorage, SeqCase};
    use common::{BadIndexCase, RowExpect};
    let start = std::time::Instant::now();
    let template = |variant, mask, stats| {
        Problem::new(Shape::new(1, 4, 2, 1, 1, 32), DType::Bf16)
            .with_variant(variant)
            .with_mask(mask)
            .with_stats(stats)
    };
    let paged = |page_size| KvStorage::Paged {
        page_size,
        spare_pages: 1,
    };
    // (template, sequences, corruptions: tensor, entry (sequence 1's logical page for the
    // block table), value (None: the page count, or the capacity + 1)).
    type Corruption = (&'static str, usize, Option<i32>);
    let layouts: [(Problem, SeqCase, Vec<Corruption>); 3] = [
        (
            template(Variant::LogitSink, Mask::None, StatsLevel::Off),
            SeqCase {
                q_lens: vec![1, 1, 1],
                kv_lens: vec![150, 200, 90],
                packed_q: false,
                kv: paged(16),
            },
            // Sequence 1's pages 9 and 12 hold keys 144..160 and 192..200: the third and
            // fourth splits'.
            vec![
                ("block_table", 9, Some(-1)),
                ("block_table", 12, None),
                ("seqlens_k", 1, None),
            ],
        ),
        (
            template(Variant::KvSink, Mask::Causal, StatsLevel::HeadsAndKeys),
            SeqCase {
                q_lens: vec![2, 2, 2],
                kv_lens: vec![130, 200, 70],
                packed_q: false,
                kv: paged(64),
            },
            // Sequence 1's page 2 holds keys 128..192: the third split's.
            vec![("block_table", 2, None), ("seqlens_k", 1, Some(-3))],
        ),
        (
            template(Variant::Softmax, Mask::Causal, StatsLevel::Heads),
            SeqCase {
                q_lens: vec![1, 3, 2],
                kv_lens: vec![130, 150, 70],
                packed_q: true,
                kv: KvStorage::Packed,
            },
            vec![("cu_seqlens_k", 2, Some(100))],
        ),
    ];
    let mut cases = Vec::new();
    for (template, seqs, corruptions) in &layouts {
        let (problem, valid) = cases::engine_inputs(template, seqs, &InputSpec::default());
        let rows_of = |b: usize| -> std::ops::Range<usize> {
            if seqs.packed_q {
                let first: usize = seqs.q_lens[..b].iter().sum();
                first..first + seqs.q_lens[b]
            } else {
                b * problem.shape.q_len..(b + 1) * problem.shape.q_len
            }
        };
        let q_rows = rows_of(seqs.q_lens.len() - 1).end;
        for &(tensor, entry, value) in corruptions {
            let mut bad = valid.indices.clone();
            let mut rows = vec![RowExpect::Correct; q_rows];
            let label = match tensor {
                "block_table" => {
                    let outlier_attn::KvSeqs::Paged {
                        pages, max_pages, ..
                    } = problem.seqs.kv
                    else {
                        unreachable!("a paged case")
                    };
                    let page = entry;
                    let table = bad.block_table.as_mut().expect("table");
                    table[max_pages + page] = value.unwrap_or(pages as i32);
                    rows[rows_of(1)].fill(RowExpect::Nan);
                    format!("block_table[1, {page}] = {}", table[max_pages + page])
                }
                "seqlens_k" => {
                    let lens = bad.seqlens_k.as_mut().expect("lengths");
                    lens[entry] = value.unwrap_or(problem.shape.kv_len as i32 + 1);
                    rows[rows_of(entry)].fill(RowExpect::Nan);
                    format!("seqlens_k[{entry}] = {}", lens[entry])
                }
                _ => {
                    let cu = bad.cu_seqlens_k.as_mut().expect("cumulative lengths");
                    cu[entry] = value.expect("a value");
                    rows.fill(RowExpect::Nan);
                    format!("cu_seqlens_k[{entry}] = {}", cu[entry])
                }
            };
            cases.push(BadIndexCase {
                label: format!("{} {}: {label}", cases::label(&problem), seqs.label()),
                problem,
                valid: valid.clone(),
                bad,
                rows,
            });
        }
    }
    for setting in [ONE_TILE_PER_SPLIT, SplitKv::On] {
        let Some(b) = split_backend(setting) else {
            return;
        };
        let mut workspace = EmuWorkspace::new();
        for case in &cases {
            let p = &case.problem;
            let label = format!("{setting:?} {}", case.label);
            let cut = cut_of(p, setting);
            assert!(cut.splits >= 3, "{label}: {cut:?}");
            let good = device_call(
                b.attention(),
                p,
                &case.valid,
                &case.valid.indices,
                true,
                &mut workspace,
            )
            .unwrap_or_else(|e| panic!("{label}, good indices: {e}"));
            // The same workspace, as an engine reuses it: what the good call left there must
            // not reach the bad call's outputs.
            let out = device_call(
                b.attention(),
                p,
                &case.valid,
                &case.bad,
                true,
                &mut workspace,
            )
            .unwrap_or_else(|e| panic!("{label}: {e}"));
            if let Err(e) = common::check_bad_index_outputs(case, &out) {
                panic!("{label}: {e}");
            }
            assert_sequences_match(case, &good, &out, &label);
        }
    }
    eprintln!(
        "bad index tensors under split-KV in {:.1} s",
        start.elapsed().as_secs_f64()
    );
}

/// Every sequence of `case` none of whose rows may be NaN has bitwise the same O rows, LSE,
/// statistics record and key mass in `got` as in `want`.
fn assert_sequences_match(
    case: &common::BadIndexCase,
    want: &outlier_attn::HostOutputs,
    got: &outlier_attn::HostOutputs,
    label: &str,
) {
    let p = &case.problem;
    let map = outlier_attn::SeqMap::new(&p.shape, &p.seqs, &case.valid.indices).expect("valid");
    let (hq, d) = (p.shape.q_heads, p.shape.head_dim);
    let bits = |t: &outlier_attn::HostTensor| -> Vec<u64> {
        t.to_f64_vec().iter().map(|x| x.to_bits()).collect()
    };
    let (o_want, o_got) = (bits(&want.o), bits(&got.o));
    for (b, span) in map.spans().iter().enumerate() {
        let rows: Vec<usize> = (0..span.q_len)
            .map(|i| {
                let (outer, token) = map.q_pos(b, i);
                outer * p.shape.q_len + token
            })
            .collect();
        if rows
            .iter()
            .any(|&r| case.rows[r] != common::RowExpect::Correct)
        {
            continue;
        }
        for (i, &r) in rows.iter().enumerate() {
            let o = r * hq * d..(r + 1) * hq * d;
            assert_eq!(
                o_got[o.clone()],
                o_want[o],
                "{label}: O of sequence {b}, row {i}"
            );
            for h in 0..hq {
                let at = map.lse_index(b, h, i);
                assert_eq!(
                    got.lse[at].to_bits(),
                    want.lse[at].to_bits(),
                    "{label}: LSE of sequence {b}, head {h}, row {i}"
                );
            }
        }
        if let (Some(x), Some(y)) = (&got.stats, &want.stats) {
            let record = b * hq * Stat::COUNT..(b + 1) * hq * Stat::COUNT;
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&x[record.clone()]),
                bits(&y[record]),
                "{label}: statistics of sequence {b}"
            );
        }
        if let (Some(x), Some(y)) = (&got.key_mass, &want.key_mass) {
            for h in 0..hq {
                for j in 0..common::poisoned_keys(p, span) {
                    let at = map.key_mass_index(b, h, j);
                    assert_eq!(
                        x[at].to_bits(),
                        y[at].to_bits(),
                        "{label}: key mass of sequence {b}, head {h}, key {j}"
                    );
                }
            }
        }
    }
}

/// No LSE buffer at the device level (`EmuArgs::lse` `None`, `EngineFeature::NoLse`): O, the
/// statistics and the key mass come out bit for bit as with one (the key-mass kernel reads each
/// row's max and 1/l from the workspace; the split-KV combine finishes its rows without an LSE),
/// and no kernel touches the absent buffer (the emulator faults on any access outside the
/// buffers given): unsplit prefill, split decode with and without the GQA fold, a split paged
/// decode with statistics, and the SIMT kernel.
#[test]
fn cuda_emu_runs_without_an_lse() {
    let calls: Vec<(SplitKv, Problem, outlier_attn::HostInputs)> = {
        let dense = |shape, dtype, variant, stats, seed| {
            let problem = Problem::new(shape, dtype)
                .with_variant(variant)
                .with_mask(Mask::Causal)
                .with_stats(stats);
            let spec = InputSpec {
                seed,
                ..InputSpec::default()
            };
            (problem, cases::random_inputs(&problem, &spec))
        };
        let decode = Shape::new(1, 4, 2, 1, 150, 32);
        let mut calls = vec![
            (
                SplitKv::Off,
                dense(
                    Shape::new(1, 2, 1, 70, 90, 64),
                    DType::F16,
                    Variant::LogitSink,
                    StatsLevel::HeadsAndKeys,
                    1,
                ),
            ),
            (
                ONE_TILE_PER_SPLIT,
                dense(decode, DType::Bf16, Variant::KvSink, StatsLevel::Off, 2),
            ),
            (
                ONE_TILE_PER_SPLIT,
                dense(
                    decode,
                    DType::Bf16,
                    Variant::Softmax1,
                    StatsLevel::HeadsAndKeys,
                    3,
                ),
            ),
            (
                SplitKv::Off,
                dense(
                    Shape::new(2, 2, 1, 5, 40, 16),
                    DType::F32,
                    Variant::Softmax,
                    StatsLevel::HeadsAndKeys,
                    4,
                ),
            ),
        ];
        let paged = common::decode_engine_cases()
            .into_iter()
            .find(|c| {
                c.template.stats == StatsLevel::HeadsAndKeys
                    && matches!(c.seqs.kv, cases::KvStorage::Paged { .. })
            })
            .expect("a paged decode case with key mass");
        calls.push((ONE_TILE_PER_SPLIT, paged.build()));
        calls
            .into_iter()
            .map(|(split, (problem, inputs))| (split, problem, inputs))
            .collect()
    };
    let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    for (setting, problem, inputs) in &calls {
        let Some(b) = split_backend(*setting) else {
            return;
        };
        let label = format!("{setting:?} {}", cases::label(problem));
        let cut = cut_of(problem, *setting);
        assert_eq!(cut.splits > 1, *setting != SplitKv::Off, "{label}: {cut:?}");
        let mut workspace = EmuWorkspace::new();
        let run = |with_lse, workspace: &mut EmuWorkspace| {
            device_call(
                b.attention(),
                problem,
                inputs,
                &inputs.indices,
                with_lse,
                workspace,
            )
            .unwrap_or_else(|e| panic!("{label} (LSE {with_lse}): {e}"))
        };
        let with = run(true, &mut workspace);
        let without = run(false, &mut workspace);
        assert!(without.lse.is_empty());
        assert!(
            with.lse.iter().all(|x| x.is_finite()),
            "{label}: the LSE is written"
        );
        let o = without.o.to_f64_vec();
        assert!(o.iter().all(|x| x.is_finite()), "{label}: O is written");
        assert_eq!(without.o.as_bytes(), with.o.as_bytes(), "{label}: O");
        for (what, x, y) in [
            ("statistics", &without.stats, &with.stats),
            ("key mass", &without.key_mass, &with.key_mass),
        ] {
            if let (Some(x), Some(y)) = (x, y) {
                // Not all NaN, as the poisoned buffers were (a record's gate fields are NaN
                // without a gate).
                assert!(x.iter().any(|v| !v.is_nan()), "{label}: {what} written");
                assert_eq!(bits(x), bits(y), "{label}: {what}");
            }
        }
    }
}

/// One device-level call on host buffers, as an engine makes it: the inputs' Q, K, V,
/// parameters and layouts with the index tensors `indices` as the device sees them (unchecked),
/// into NaN-filled outputs (O dense); the LSE buffer given only when `with_lse` (the returned
/// `lse` is empty otherwise). Unlike `EmuBackend::forward`, nothing is validated on the host
/// but the buffers' lengths.
fn device_call(
    attention: &EmuAttention,
    problem: &Problem,
    inputs: &outlier_attn::HostInputs,
    indices: &SeqIndices<Vec<i32>>,
    with_lse: bool,
    workspace: &mut EmuWorkspace,
) -> outlier_attn::Result<outlier_attn::HostOutputs> {
    let call = DeviceCall {
        attention,
        problem,
        inputs,
        indices,
        with_lse,
    };
    match problem.dtype {
        DType::F32 => call.run::<f32>(workspace),
        DType::F16 => call.run::<half::f16>(workspace),
        DType::Bf16 => call.run::<half::bf16>(workspace),
    }
}

/// The arguments of [`device_call`].
struct DeviceCall<'a> {
    attention: &'a EmuAttention,
    problem: &'a Problem,
    inputs: &'a outlier_attn::HostInputs,
    indices: &'a SeqIndices<Vec<i32>>,
    with_lse: bool,
}

impl DeviceCall<'_> {
    fn run<T: outlier_attn::Element>(
        &self,
        workspace: &mut EmuWorkspace,
    ) -> outlier_attn::Result<outlier_attn::HostOutputs>
    where
        outlier_attn::HostTensor: From<Vec<T>>,
    {
        use outlier_attn::HostTensor;
        let (problem, inputs) = (self.problem, self.inputs);
        let typed = |t: &HostTensor| -> Vec<T> { bytemuck::pod_collect_to_vec(t.as_bytes()) };
        let f32s =
            |t: &HostTensor| -> Vec<f32> { t.to_f64_vec().iter().map(|&x| x as f32).collect() };
        let (q, k, v) = (typed(&inputs.q), typed(&inputs.k), typed(&inputs.v));
        let pr = &inputs.params;
        let (k_sink, v_sink, v_bias, sink_logits) = (
            pr.k_sink.as_ref().map(f32s),
            pr.v_sink.as_ref().map(f32s),
            pr.v_bias.as_ref().map(f32s),
            pr.sink_logits.as_ref().map(f32s),
        );
        let gate = pr.gate.as_ref().map(typed);
        let poisoned = outlier_attn::parity::poisoned_outputs(problem);
        let mut o: Vec<T> = typed(&poisoned.o);
        let mut lse = if self.with_lse {
            poisoned.lse
        } else {
            Vec::new()
        };
        let (mut stats, mut key_mass) = (poisoned.stats, poisoned.key_mass);
        let args = EmuArgs {
            q: &q,
            k: &k,
            v: &v,
            o: &mut o,
            lse: self.with_lse.then_some(&mut lse[..]),
            stats: stats.as_deref_mut(),
            key_mass: key_mass.as_deref_mut(),
            layouts: Layouts {
                o: problem.contiguous_layouts().o,
                ..inputs.layouts
            },
            params: EmuParams {
                k_sink: k_sink.as_deref(),
                v_sink: v_sink.as_deref(),
                v_bias: v_bias.as_deref(),
                sink_logits: sink_logits.as_deref(),
                gate: gate.as_deref(),
            },
            indices: SeqIndices {
                cu_seqlens_q: self.indices.cu_seqlens_q.as_deref(),
                cu_seqlens_k: self.indices.cu_seqlens_k.as_deref(),
                seqlens_k: self.indices.seqlens_k.as_deref(),
                block_table: self.indices.block_table.as_deref(),
            },
        };
        self.attention.forward(problem, args, workspace)?;
        Ok(outlier_attn::HostOutputs {
            o: HostTensor::from(o),
            lse,
            stats,
            key_mass,
        })
    }
}

/// Paged caches past several pages and K/V tiles: a page size that is a multiple of the 64-key
/// tile (one block-table lookup per tile), one that is not (a lookup per key), 16-token pages
/// on the SIMT kernel's 16-key tiles and 32-token pages on the d = 256 tile's; under windows
/// and with statistics.
#[test]
fn cuda_emu_paged_caches_past_several_pages() {
    let Some(b) = backend() else { return };
    for (dtype, page_size, mask, d) in [
        (DType::Bf16, 64, Mask::Causal, 16),
        (DType::F16, 24, Mask::window(Some(50), Some(0)), 16),
        (DType::F32, 16, Mask::window(Some(20), Some(3)), 16),
        // The d = 256 tile's 32-key tiles: 32-token pages take its fast path.
        (DType::Bf16, 32, Mask::window(Some(40), Some(0)), 200),
    ] {
        let template = Problem::new(Shape::new(1, 2, 1, 1, 1, d), dtype)
            .with_variant(Variant::KvSink)
            .with_mask(mask)
            .with_stats(StatsLevel::HeadsAndKeys);
        let seqs = cases::SeqCase {
            q_lens: vec![3, 1],
            kv_lens: vec![150, 70],
            packed_q: true,
            kv: cases::KvStorage::Paged {
                page_size,
                spare_pages: 2,
            },
        };
        let (problem, inputs) = cases::engine_inputs(&template, &seqs, &InputSpec::default());
        let report = outlier_attn::parity::check_backend(b, &problem, &inputs).expect("runs");
        assert!(report.passed(), "{}:\n{report}", cases::label(&problem));
    }
}

/// Batch invariance: sequence 1 of a packed batch, run alone (its rows of the same Q buffer
/// through an offset view, its keys through its block-table row or an offset view of packed
/// K), gives bitwise the O rows, LSE, statistics record and key mass it has in the batch.
#[test]
fn cuda_emu_a_sub_batch_gives_the_full_batch_bits() {
    let Some(b) = backend() else { return };
    for (dtype, kv) in [
        (
            DType::Bf16,
            cases::KvStorage::Paged {
                page_size: 16,
                spare_pages: 1,
            },
        ),
        (DType::F16, cases::KvStorage::Packed),
        (DType::F32, cases::KvStorage::Packed),
    ] {
        let template = Problem::new(Shape::new(1, 4, 2, 1, 1, 32), dtype)
            .with_variant(Variant::LogitSink)
            .with_mask(Mask::window(Some(30), Some(0)))
            .with_stats(StatsLevel::HeadsAndKeys);
        let seqs = cases::SeqCase {
            q_lens: vec![4, 7, 2],
            kv_lens: vec![20, 70, 9],
            packed_q: true,
            kv,
        };
        let (full, inputs) = cases::engine_inputs(&template, &seqs, &InputSpec::default());
        let all = b.forward(&full, &inputs).expect("full batch");
        let s = full.shape;
        let (hq, d) = (s.q_heads, s.head_dim);
        let (q0, nq, nk) = (4usize, 7usize, 70usize);

        let mut sub = full;
        sub.shape.batch = 1;
        sub.seqs.q = outlier_attn::QuerySeqs::Packed { total: nq };
        let mut one = inputs.clone();
        one.layouts.q.offset += (q0 * hq * d) as u64;
        one.indices.cu_seqlens_q = Some(vec![0, nq as i32]);
        match sub.seqs.kv {
            outlier_attn::KvSeqs::Paged { max_pages, .. } => {
                let table = inputs.indices.block_table.as_ref().expect("table");
                one.indices.block_table = Some(table[max_pages..2 * max_pages].to_vec());
                one.indices.seqlens_k = Some(vec![nk as i32]);
            }
            _ => {
                sub.seqs.kv = outlier_attn::KvSeqs::Packed { total: nk };
                let row = (s.kv_heads * d) as u64;
                one.layouts.k.offset += 20 * row;
                one.layouts.v.offset += 20 * row;
                one.indices.cu_seqlens_k = Some(vec![0, nk as i32]);
            }
        }
        let alone = b.forward(&sub, &one).expect("sequence 1 alone");
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let o_bits = |t: &outlier_attn::HostTensor| {
            t.to_f64_vec()
                .iter()
                .map(|x| x.to_bits())
                .collect::<Vec<_>>()
        };
        let row = hq * d;
        assert_eq!(
            o_bits(&alone.o),
            o_bits(&all.o)[q0 * row..(q0 + nq) * row],
            "{dtype:?}: O"
        );
        let total_q = full.q_tokens();
        for h in 0..hq {
            assert_eq!(
                bits(&alone.lse[h * nq..(h + 1) * nq]),
                bits(&all.lse[h * total_q + q0..h * total_q + q0 + nq]),
                "{dtype:?}: LSE of head {h}"
            );
        }
        let count = Stat::COUNT;
        assert_eq!(
            bits(alone.stats.as_deref().expect("stats")),
            bits(&all.stats.as_deref().expect("stats")[hq * count..2 * hq * count]),
            "{dtype:?}: statistics"
        );
        let (km_one, km_all) = (alone.key_mass.expect("km"), all.key_mass.expect("km"));
        for h in 0..hq {
            let (got, want) = match full.seqs.kv {
                outlier_attn::KvSeqs::Packed { total } => (
                    &km_one[h * nk..(h + 1) * nk],
                    &km_all[h * total + 20..h * total + 20 + nk],
                ),
                _ => {
                    let n = s.kv_len;
                    (
                        &km_one[h * n..(h + 1) * n],
                        &km_all[(hq + h) * n..(hq + h + 1) * n],
                    )
                }
            };
            assert_eq!(bits(got), bits(want), "{dtype:?}: key mass of head {h}");
        }
    }
}
