//! The WGSL backend against the reference: the shared parity sweep on both reduction paths
//! (subgroup and workgroup-memory), views into larger buffers, determinism and refusals.
//!
//! Runs on whatever adapter wgpu finds (lavapipe in CI). With no adapter the tests print a
//! skip message, or fail when `OUTLIER_ATTN_REQUIRE` names `wgsl`.
#![cfg(feature = "wgpu")]
mod common;

use common::{Case, Limits};
use outlier_attn::cases::InputSpec;
use outlier_attn::wgsl::{WgslBackend, WgslOptions};
use outlier_attn::{
    Backend, DType, Error, Gate, GateGranularity, HostInputs, Mask, Problem, Shape, StatsLevel,
    Variant,
};

/// The backend on this machine's adapter, or `None` after reporting why (a failure when CI
/// requires it).
fn backend(subgroups: bool) -> Option<WgslBackend> {
    common::wgsl_backend(WgslOptions {
        subgroups,
        ..WgslOptions::default()
    })
}

/// Lengths past a 64-row query block and several K/V tiles, head dims to 128.
fn wide_limits() -> Limits {
    Limits {
        max_len: 70,
        max_head_dim: 128,
        ..Limits::default()
    }
}

/// Few, short cases with every head dim up to 256.
fn deep_limits() -> Limits {
    Limits {
        max_len: 20,
        max_head_dim: 256,
        max_batch: 1,
        max_kv_heads: 2,
        max_group: 2,
        ..Limits::default()
    }
}

/// The sweep on one path, `cases` random cases; each path and size range is its own test so
/// that they run in parallel.
fn sweep(subgroups: bool, limits: &Limits, cases: u32) {
    let Some(b) = backend(subgroups) else { return };
    if subgroups && !b.attention().uses_subgroups() {
        eprintln!("note: the adapter has no SUBGROUP; this sweep runs the workgroup path");
    }
    assert!(
        subgroups || !b.attention().uses_subgroups(),
        "the option must force the workgroup path"
    );
    // Dense calls under every mask the contract has: none, causal and sliding windows.
    common::windowed_parity_sweep(&b, limits, cases);
}

#[test]
fn parity_sweep_subgroup_path() {
    sweep(true, &wide_limits(), common::config().cases);
}

/// Half the cases: the path differs from the subgroup one in how keys reach the lanes and how
/// a row's lanes add, not in the softmax, masks or statistics (every pipeline a case needs is
/// built cold on lavapipe, and this keeps CI within its budget).
#[test]
fn parity_sweep_workgroup_path() {
    sweep(false, &wide_limits(), common::config().cases / 2);
}

/// Head dims only change the tiles and loops, not the reduction path: one path suffices, and
/// half the cases (as the workgroup path's).
#[test]
fn parity_sweep_head_dims_to_256() {
    sweep(true, &deep_limits(), common::config().cases / 2);
}

/// Hand-picked cases the random sweep may miss: decode, a single key, rows with no key, 113
/// (no multiple of a tile), d = 256, massive activations in 16-bit dtypes, wide sinks. Every
/// variant on every shape, dtype, mask and statistics level in turn: a full product would build
/// hundreds of pipelines, which lavapipe compiles slowly (2 to 7 s each, cold). The statistics
/// level turns with the shape as well as the variant, so each shape meets every level three
/// times and each dtype every level; one test per shape, so that the four run in parallel.
fn edge_cases(n: usize, shape: Shape) {
    let Some(b) = backend(true) else { return };
    let levels = [StatsLevel::HeadsAndKeys, StatsLevel::Heads, StatsLevel::Off];
    for (m, variant) in Variant::all_default().iter().enumerate() {
        let dtype = DType::ALL[(n + m) % 3];
        let mask = if (n + m) % 2 == 0 {
            Mask::Causal
        } else {
            Mask::None
        };
        let case = Case {
            problem: Problem::new(shape, dtype)
                .with_variant(*variant)
                .with_mask(mask)
                .with_stats(levels[(m + 2 * n) % 3]),
            spec: InputSpec {
                seed: 3 + m as u64,
                massive: dtype != DType::F32,
                ..InputSpec::default()
            },
            views: false,
        };
        if let Err(e) = common::check_case(&b, &case) {
            panic!("{e}");
        }
    }
}

#[test]
fn edge_cases_decode_mqa() {
    edge_cases(0, Shape::new(1, 4, 1, 1, 113, 64));
}

#[test]
fn edge_cases_one_key() {
    edge_cases(1, Shape::new(2, 2, 2, 113, 1, 32));
}

/// Nq > Nk: under the causal mask the first rows see no key.
#[test]
fn edge_cases_rows_without_keys() {
    edge_cases(2, Shape::new(1, 2, 1, 80, 17, 128));
}

#[test]
fn edge_cases_head_dim_256() {
    edge_cases(3, Shape::new(1, 1, 1, 9, 30, 256));
}

/// Register blocking (`WgslOptions::row_block`): a lane group serving 2 rows must give every
/// row the bits it gets alone, and pass against the reference. Every variant in turn, across
/// dtypes, masks (a window too) and statistics levels, at shapes with several blocks of rows
/// at every row block (600 and 560 folded rows; a CPU adapter's workgroup of 128 lanes holds
/// 512 at 4 rows), on both key paths; 4 rows (what CPU adapters give large calls) for three
/// variants whose pipelines build fastest at 4 rows, one of them with both key loops and one
/// at d = 128, on the shuffle path.
#[test]
fn row_blocks_give_the_same_bits() {
    let levels = [StatsLevel::HeadsAndKeys, StatsLevel::Heads, StatsLevel::Off];
    let masks = [Mask::Causal, Mask::None, Mask::window(Some(20), Some(3))];
    for subgroups in [true, false] {
        let with = |row_block| {
            common::wgsl_backend(WgslOptions {
                subgroups,
                row_block: Some(row_block),
                ..WgslOptions::default()
            })
        };
        let (Some(one), Some(two), Some(four)) = (with(1), with(2), with(4)) else {
            return;
        };
        for (m, variant) in Variant::all_default().iter().enumerate() {
            // The workgroup path differs in how keys reach the lanes, not per variant: one
            // variant with both key loops (ClippedSoftmax's second pass) suffices there, and
            // keeps the pipelines this test builds cold on lavapipe (CI's time) few.
            if !subgroups && !matches!(variant, Variant::ClippedSoftmax { .. }) {
                continue;
            }
            // d = 128 for Softmax1 alone: one lane per row there makes CPU pipelines build
            // 2x to 4x longer, KvSink's most (CI's cold builds).
            let shape = if matches!(variant, Variant::Softmax1) {
                Shape::new(1, 4, 1, 140, 50, 128)
            } else {
                Shape::new(1, 4, 2, 300, 75, 64)
            };
            let dtype = DType::ALL[m % 3];
            let case = Case {
                problem: Problem::new(shape, dtype)
                    .with_variant(*variant)
                    .with_mask(masks[m % 3])
                    .with_stats(levels[(m / 3 + m) % 3]),
                spec: InputSpec {
                    seed: 30 + m as u64,
                    massive: dtype != DType::F32,
                    ..InputSpec::default()
                },
                views: false,
            };
            if let Err(e) = common::check_case(&two, &case) {
                panic!("row block 2: {e}");
            }
            let inputs = case.inputs();
            let a = one.forward(&case.problem, &inputs).expect("row block 1");
            let b = two.forward(&case.problem, &inputs).expect("row block 2");
            assert!(
                common::output_bits(&a) == common::output_bits(&b),
                "{}: rows differ between row blocks 1 and 2",
                outlier_attn::cases::label(&case.problem)
            );
            let four_rows = matches!(
                variant,
                Variant::Softmax | Variant::Softmax1 | Variant::ClippedSoftmax { .. }
            );
            if subgroups && four_rows {
                let c = four.forward(&case.problem, &inputs).expect("row block 4");
                assert!(
                    common::output_bits(&a) == common::output_bits(&c),
                    "{}: rows differ between row blocks 1 and 4",
                    outlier_attn::cases::label(&case.problem)
                );
            }
        }
    }
    assert!(
        WgslBackend::with_options(WgslOptions {
            row_block: Some(outlier_attn::wgsl::MAX_ROW_BLOCK + 1),
            ..WgslOptions::default()
        })
        .is_err(),
        "a row block past MAX_ROW_BLOCK must be refused"
    );
}

/// Sliding windows as models run them (`common::window_problems`), on both key paths, and one
/// of them twice for determinism.
#[test]
fn windows_as_models_run_them() {
    for subgroups in [true, false] {
        let Some(b) = backend(subgroups) else { return };
        for (n, problem) in common::window_problems().into_iter().enumerate() {
            let case = Case {
                problem,
                spec: InputSpec {
                    seed: 40 + n as u64,
                    ..InputSpec::default()
                },
                views: n == 1,
            };
            if let Err(e) = common::check_case(&b, &case) {
                panic!("subgroups {subgroups}: {e}");
            }
            if n == 0 {
                common::assert_deterministic(&b, &case);
            }
        }
    }
}

#[test]
fn views_into_larger_buffers_match_dense_inputs() {
    let Some(b) = backend(true) else { return };
    for (dtype, variant) in [
        (DType::F32, Variant::KvSink),
        (DType::F16, Variant::Softmax),
        (
            DType::Bf16,
            Variant::ContextScale {
                gate: Gate::TwoSigmoid,
                granularity: GateGranularity::PerChannel,
            },
        ),
        (DType::F16, Variant::LogitSink),
    ] {
        let problem = Problem::new(Shape::new(2, 4, 2, 67, 45, 40), dtype)
            .with_variant(variant)
            .with_mask(Mask::Causal)
            .with_stats(StatsLevel::HeadsAndKeys);
        for seed in 0..3 {
            common::assert_views_match(&b, &problem, seed);
        }
    }
}

#[test]
fn two_runs_are_bit_identical() {
    for subgroups in [true, false] {
        let Some(b) = backend(subgroups) else { return };
        for (dtype, variant) in [
            (DType::F32, Variant::Softmax1),
            (
                DType::Bf16,
                Variant::ClippedSoftmax {
                    zeta: 1.1,
                    gamma: -0.1,
                },
            ),
            (DType::F16, Variant::Sigmoid { bias: None }),
        ] {
            let case = Case {
                problem: Problem::new(Shape::new(2, 4, 2, 130, 75, 64), dtype)
                    .with_variant(variant)
                    .with_stats(StatsLevel::HeadsAndKeys),
                spec: InputSpec {
                    seed: 11,
                    massive: true,
                    ..InputSpec::default()
                },
                views: true,
            };
            common::assert_deterministic(&b, &case);
        }
    }
}

#[test]
fn invalid_problems_are_typed_errors() {
    let Some(b) = backend(true) else { return };
    let problem = Problem::new(Shape::new(1, 3, 2, 4, 4, 16), DType::F32);
    let inputs = outlier_attn::cases::random_inputs(
        &Problem::new(Shape::new(1, 2, 2, 4, 4, 16), DType::F32),
        &InputSpec::default(),
    );
    assert!(matches!(
        b.forward(&problem, &inputs),
        Err(Error::HeadGroups { .. })
    ));
    // A learned sink missing.
    let problem =
        Problem::new(Shape::new(1, 2, 2, 4, 4, 16), DType::F32).with_variant(Variant::KvSink);
    let dense = HostInputs::dense(
        &problem,
        inputs.q.clone(),
        inputs.k.clone(),
        inputs.v.clone(),
    );
    assert!(matches!(
        b.forward(&problem, &dense),
        Err(Error::MissingParam { .. })
    ));
    // A bad softcap.
    let problem = Problem::new(Shape::new(1, 2, 2, 4, 4, 16), DType::F32).with_softcap(f32::NAN);
    assert!(matches!(
        b.forward(&problem, &inputs),
        Err(Error::Scalar { .. })
    ));
}

/// The engine-level entry: the caller's buffers, with LSE and statistics at element offsets
/// inside larger buffers (not 256-byte aligned), recorded into the caller's encoder, give
/// bit-identical results to the host level; and bad buffers are typed errors before anything
/// is recorded.
#[test]
fn device_level_offsets_and_refusals() {
    use outlier_attn::wgsl::{DeviceArgs, DeviceSlice, DeviceTensor};
    use outlier_attn::{Params, Stat};
    use wgpu::util::DeviceExt;

    let Some(b) = backend(true) else { return };
    let problem = Problem::new(Shape::new(1, 2, 1, 9, 13, 16), DType::F16)
        .with_variant(Variant::LogitSink)
        .with_mask(Mask::Causal)
        .with_stats(StatsLevel::Heads);
    let inputs = outlier_attn::cases::random_inputs(&problem, &InputSpec::default());
    let expected = b.forward(&problem, &inputs).expect("host-level run");

    let device = b.device();
    let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
    let upload = |bytes: &[u8]| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: bytes,
            usage: storage,
        })
    };
    let s = &problem.shape;
    let (lse_at, stats_at) = (37u64, 70u64);
    let floats = vec![0f32; 200];
    let lse_buf = upload(bytemuck::cast_slice(&floats));
    let stats_buf = upload(bytemuck::cast_slice(&floats));
    let o_buf = upload(&vec![0u8; s.batch * s.q_len * s.q_heads * s.head_dim * 2]);
    let (q, k, v) = (
        upload(inputs.q.as_bytes()),
        upload(inputs.k.as_bytes()),
        upload(inputs.v.as_bytes()),
    );
    let theta = upload(inputs.params.sink_logits.as_ref().expect("θ").as_bytes());
    let tensor = |buffer, layout| DeviceTensor {
        buffer,
        dtype: DType::F16,
        layout,
    };
    let slice = |buffer, offset, len| DeviceSlice {
        buffer,
        dtype: DType::F32,
        offset,
        len,
    };
    let stats_len = s.heads_total() * Stat::COUNT;
    let args = DeviceArgs {
        q: tensor(&q, inputs.layouts.q),
        k: tensor(&k, inputs.layouts.k),
        v: tensor(&v, inputs.layouts.v),
        o: tensor(&o_buf, inputs.layouts.q),
        lse: slice(&lse_buf, lse_at, s.lse_len()),
        stats: Some(slice(&stats_buf, stats_at, stats_len)),
        key_mass: None,
        params: Params {
            sink_logits: Some(slice(&theta, 0, s.q_heads)),
            ..Params::none()
        },
        indices: outlier_attn::SeqIndices::none(),
    };
    let mut encoder = device.create_command_encoder(&Default::default());
    b.attention()
        .encode(&mut encoder, &problem, &args)
        .expect("device-level encode");
    let read = |buffer: &wgpu::Buffer, encoder: &mut wgpu::CommandEncoder| {
        let staging = device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: buffer.size(),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, buffer.size());
        staging
    };
    let lse_read = read(&lse_buf, &mut encoder);
    let stats_read = read(&stats_buf, &mut encoder);
    b.queue().submit([encoder.finish()]);
    for staging in [&lse_read, &stats_read] {
        staging.slice(..).map_async(wgpu::MapMode::Read, |_| {});
    }
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .expect("poll");
    let floats_of = |staging: &wgpu::Buffer| -> Vec<f32> {
        bytemuck::pod_collect_to_vec(&staging.get_mapped_range(..).expect("mapped"))
    };
    let lse = floats_of(&lse_read);
    let stats = floats_of(&stats_read);
    let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    let lse_at = lse_at as usize;
    let stats_at = stats_at as usize;
    assert_eq!(
        bits(&lse[lse_at..lse_at + s.lse_len()]),
        bits(&expected.lse)
    );
    assert_eq!(
        bits(&stats[stats_at..stats_at + stats_len]),
        bits(expected.stats.as_deref().expect("stats"))
    );
    assert!(
        lse[..lse_at]
            .iter()
            .chain(&lse[lse_at + s.lse_len()..])
            .all(|&x| x == 0.0)
    );

    // Refusals: a slice past its buffer's end, a statistics buffer of the wrong size.
    let mut encoder = device.create_command_encoder(&Default::default());
    let past_end = DeviceArgs {
        lse: slice(&lse_buf, 190, s.lse_len()),
        ..args.clone()
    };
    assert!(matches!(
        b.attention().encode(&mut encoder, &problem, &past_end),
        Err(Error::BufferTooShort { .. })
    ));
    let short_stats = DeviceArgs {
        stats: Some(slice(&stats_buf, 0, stats_len - 1)),
        ..args.clone()
    };
    assert!(matches!(
        b.attention().encode(&mut encoder, &problem, &short_stats),
        Err(Error::Size { .. })
    ));
}

#[test]
fn device_times_measure_the_kernels() {
    let Some(b) = backend(true) else { return };
    let timed = common::assert_device_times_measure_the_kernels(&b);
    let has_timestamps = b
        .device()
        .features()
        .contains(wgpu::Features::TIMESTAMP_QUERY);
    assert_eq!(
        timed,
        has_timestamps,
        "{}: a device timer exactly when the device has TIMESTAMP_QUERY (lavapipe has it)",
        b.name()
    );
}

/// NaN and ±Inf in one query row, one key or one channel of V, and a −inf sink logit: NaN and
/// Inf exactly where the reference has them.
///
/// Split by dtype into two tests (this one the 16-bit cases), so that they run in parallel.
#[test]
fn nonfinite_inputs_propagate_as_the_reference() {
    let Some(b) = backend(true) else { return };
    common::assert_nonfinite_propagate_where(&b, |p| p.dtype != DType::F32);
}

/// The f32 cases of the sweep above.
#[test]
fn nonfinite_inputs_propagate_as_the_reference_in_f32() {
    let Some(b) = backend(true) else { return };
    common::assert_nonfinite_propagate_where(&b, |p| p.dtype == DType::F32);
}

/// The same sweep on the path without subgroup operations (its own key exchange and row
/// reductions; the propagation logic is the subgroup path's): its f32 cases, which meet every
/// variant, site and value, and a third of the pipelines to build.
#[test]
fn nonfinite_inputs_propagate_on_the_workgroup_path() {
    let Some(b) = backend(false) else { return };
    common::assert_nonfinite_propagate_where(&b, |p| p.dtype == DType::F32);
}

#[test]
fn long_sequences_pass() {
    let Some(b) = backend(true) else { return };
    common::assert_long_sequences_pass(&b);
}

/// lavapipe ends a shader invocation after 65535 loop iterations: the backend must refuse a
/// call that could need more, and the longest call it accepts must still be right. Keys per
/// row (decode, at the smallest and the largest head dim, with the most loops per key) and
/// query rows for the key mass are pushed to the edge by bisection.
#[test]
fn lavapipe_loop_budget_is_respected_at_its_edge() {
    let Some(b) = backend(true) else { return };
    let Some(limit) = b.attention().loop_iteration_limit() else {
        eprintln!("skipped: {} does not limit loop iterations", b.name());
        return;
    };
    let clipped = Variant::ClippedSoftmax {
        zeta: 1.1,
        gamma: -0.1,
    };
    let keys = |d: usize| {
        move |n: usize| {
            Problem::new(Shape::new(1, 1, 1, 1, n, d), DType::F16)
                .with_variant(clipped)
                .with_stats(StatsLevel::HeadsAndKeys)
        }
    };
    let rows = |n: usize| {
        Problem::new(Shape::new(1, 1, 1, n, 4, 64), DType::F16).with_stats(StatsLevel::HeadsAndKeys)
    };
    type ProblemAt = Box<dyn Fn(usize) -> Problem>;
    let edges: [(&str, ProblemAt); 3] = [
        ("keys at d = 64", Box::new(keys(64))),
        ("keys at d = 256", Box::new(keys(256))),
        ("key-mass rows", Box::new(rows)),
    ];
    for (what, problem_at) in edges {
        let accepted = |n: usize| {
            let problem = problem_at(n);
            let inputs = outlier_attn::cases::random_inputs(&problem, &InputSpec::default());
            match b.forward(&problem, &inputs) {
                Ok(_) => true,
                Err(Error::Unsupported { reason, .. }) => {
                    assert!(reason.contains("loop iterations"), "{reason}");
                    false
                }
                Err(e) => panic!("{what}, {n}: {e}"),
            }
        };
        // Each key or row costs at least one iteration of some loop, so 2·limit is refused.
        let (mut lo, mut hi) = (1usize, 2 * limit as usize);
        assert!(accepted(lo), "{what}: 1 refused");
        assert!(!accepted(hi), "{what}: {hi} accepted");
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if accepted(mid) { lo = mid } else { hi = mid }
        }
        eprintln!("{what}: longest accepted {lo}");
        let case = Case {
            problem: problem_at(lo),
            spec: InputSpec::default(),
            views: false,
        };
        if let Err(e) = common::check_case(&b, &case) {
            panic!("{what}: the longest accepted call, {lo}, is wrong: {e}");
        }
    }
}

/// The lengths engines run, on lavapipe too: a decode step over 16 000 keys and a prefill of
/// 4 000 × 4 000, at d = 64 and 128 (GQA, statistics on), each held to the reference.
#[test]
fn decode_over_16k_keys_and_prefill_at_4k() {
    let Some(b) = backend(true) else { return };
    let cases = [
        (
            Shape::new(1, 4, 1, 1, 16_000, 64),
            DType::F16,
            Variant::LogitSink,
        ),
        (
            Shape::new(1, 4, 1, 1, 16_000, 128),
            DType::F32,
            Variant::Softmax,
        ),
        // KvSink at d = 64: its four-row pipeline at d = 128 takes lavapipe about 45 s to
        // build cold, a third of this file's time in CI.
        (
            Shape::new(1, 2, 1, 4_000, 4_000, 64),
            DType::Bf16,
            Variant::KvSink,
        ),
        (
            Shape::new(1, 2, 1, 4_000, 4_000, 128),
            DType::F16,
            Variant::Softmax,
        ),
    ];
    for (n, (shape, dtype, variant)) in cases.into_iter().enumerate() {
        let case = Case {
            problem: Problem::new(shape, dtype)
                .with_variant(variant)
                .with_mask(if n % 2 == 0 { Mask::None } else { Mask::Causal })
                .with_stats(if n == 0 {
                    StatsLevel::HeadsAndKeys
                } else {
                    StatsLevel::Heads
                }),
            spec: InputSpec {
                seed: 40 + n as u64,
                ..InputSpec::default()
            },
            views: false,
        };
        if let Err(e) = common::check_case(&b, &case) {
            panic!("{e}");
        }
    }
}

/// Batched decode over a paged cache at 32 000 keys, on lavapipe too (within its loop budget
/// at d = 32): two sequences of different lengths over shuffled 16-token pages, held to the
/// reference.
#[test]
fn decode_over_32k_keys_of_a_paged_cache() {
    use outlier_attn::cases::{KvStorage, SeqCase};
    let Some(b) = backend(true) else { return };
    let case = common::EngineCase {
        template: Problem::new(Shape::new(1, 4, 2, 1, 1, 32), DType::F16)
            .with_variant(Variant::LogitSink)
            .with_stats(StatsLevel::Heads),
        seqs: SeqCase {
            q_lens: vec![1, 1],
            kv_lens: vec![32_000, 20_011],
            packed_q: false,
            kv: KvStorage::Paged {
                page_size: 16,
                spare_pages: 2,
            },
        },
        spec: InputSpec {
            seed: 32,
            ..InputSpec::default()
        },
    };
    match common::check_engine_case(&b, &case) {
        Ok(true) => {}
        Ok(false) => panic!("refused"),
        Err(e) => panic!("{e}"),
    }
}

/// An engine's frame: its own compute pass writes Q, two attention calls of different shapes
/// (two slots of the uniform ring) are recorded after it, and its own pass after them reads
/// O; one submission, one read-back. Every O must equal the host level's, bit for bit.
#[test]
fn calls_recorded_between_engine_passes_read_back_after_one_submit() {
    use outlier_attn::wgsl::{DeviceArgs, DeviceSlice, DeviceTensor};
    use outlier_attn::{HostTensor, Params};
    use wgpu::util::DeviceExt;

    let Some(b) = backend(true) else { return };
    let device = b.device();
    // The engine's pass: dst = 2 · src over f32 words.
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("engine pass"),
        source: wgpu::ShaderSource::Wgsl(
            "@group(0) @binding(0) var<storage, read> src: array<f32>;\n\
             @group(0) @binding(1) var<storage, read_write> dst: array<f32>;\n\
             @compute @workgroup_size(64)\n\
             fn main(@builtin(global_invocation_id) id: vec3<u32>) {\n\
                 if id.x < arrayLength(&dst) { dst[id.x] = 2.0 * src[id.x]; }\n\
             }"
            .into(),
        ),
    });
    let engine = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("engine pass"),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
    let upload = |bytes: &[u8]| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: bytes,
            usage: storage,
        })
    };
    let zeros = |bytes: usize| upload(&vec![0u8; bytes]);
    let mut encoder = device.create_command_encoder(&Default::default());
    let mut expected = Vec::new();
    let mut outputs = Vec::new();
    let problems = [
        Problem::new(Shape::new(1, 4, 2, 33, 47, 64), DType::F32)
            .with_variant(Variant::KvSink)
            .with_mask(Mask::Causal),
        Problem::new(Shape::new(2, 2, 1, 1, 300, 128), DType::F32),
    ];
    // Keep every buffer alive until the submission.
    let mut held = Vec::new();
    for problem in problems {
        let s = problem.shape;
        let inputs = outlier_attn::cases::random_inputs(&problem, &InputSpec::default());
        // What the engine's pass will produce: Q doubled.
        let mut doubled = HostInputs::dense(
            &problem,
            HostTensor::filled(DType::F32, inputs.q.len(), 0.0),
            inputs.k.clone(),
            inputs.v.clone(),
        );
        doubled.params = inputs.params.clone();
        for i in 0..inputs.q.len() {
            doubled.q.set(i, 2.0 * inputs.q.get(i).unwrap_or(f64::NAN));
        }
        expected.push(b.forward(&problem, &doubled).expect("host-level run"));

        let q_src = upload(inputs.q.as_bytes());
        let q = zeros(inputs.q.as_bytes().len());
        let (k, v) = (upload(inputs.k.as_bytes()), upload(inputs.v.as_bytes()));
        let o = zeros(inputs.q.as_bytes().len());
        let o_twice = zeros(inputs.q.as_bytes().len());
        let lse = zeros(s.lse_len() * 4);
        let params = inputs.params.map(|t| upload(t.as_bytes()));
        let bind = |src: &wgpu::Buffer, dst: &wgpu::Buffer| {
            device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &engine.get_bind_group_layout(0),
                entries: &[
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: src.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 1,
                        resource: dst.as_entire_binding(),
                    },
                ],
            })
        };
        let groups = (inputs.q.len() as u32).div_ceil(64);
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&engine);
            pass.set_bind_group(0, &bind(&q_src, &q), &[]);
            pass.dispatch_workgroups(groups, 1, 1);
        }
        let tensor = |buffer| DeviceTensor {
            buffer,
            dtype: DType::F32,
            layout: outlier_attn::Layout::contiguous(s.q_len, s.q_heads, s.head_dim),
        };
        let kv = |buffer| DeviceTensor {
            buffer,
            dtype: DType::F32,
            layout: outlier_attn::Layout::contiguous(s.kv_len, s.kv_heads, s.head_dim),
        };
        fn param_slice(buffer: &Option<wgpu::Buffer>, len: usize) -> Option<DeviceSlice<'_>> {
            buffer.as_ref().map(|buffer| DeviceSlice {
                buffer,
                dtype: DType::F32,
                offset: 0,
                len,
            })
        }
        let lens = inputs.params.map(|t| t.len());
        let args = DeviceArgs {
            q: tensor(&q),
            k: kv(&k),
            v: kv(&v),
            o: tensor(&o),
            lse: DeviceSlice {
                buffer: &lse,
                dtype: DType::F32,
                offset: 0,
                len: s.lse_len(),
            },
            stats: None,
            key_mass: None,
            params: Params {
                k_sink: param_slice(&params.k_sink, lens.k_sink.unwrap_or(0)),
                v_sink: param_slice(&params.v_sink, lens.v_sink.unwrap_or(0)),
                v_bias: None,
                sink_logits: None,
                gate: None,
            },
            indices: outlier_attn::SeqIndices::none(),
        };
        b.attention()
            .encode(&mut encoder, &problem, &args)
            .expect("device-level encode");
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&engine);
            pass.set_bind_group(0, &bind(&o, &o_twice), &[]);
            pass.dispatch_workgroups(groups, 1, 1);
        }
        let staging = device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: o_twice.size(),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        encoder.copy_buffer_to_buffer(&o_twice, 0, &staging, 0, o_twice.size());
        outputs.push(staging);
        held.push((q_src, q, k, v, o, o_twice, lse, params));
    }
    b.queue().submit([encoder.finish()]);
    for staging in &outputs {
        staging.slice(..).map_async(wgpu::MapMode::Read, |_| {});
    }
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .expect("poll");
    for (n, (staging, want)) in outputs.iter().zip(&expected).enumerate() {
        let got: Vec<f32> =
            bytemuck::pod_collect_to_vec(&staging.get_mapped_range(..).expect("mapped"));
        let want: Vec<u32> = (0..want.o.len())
            .map(|i| (2.0 * want.o.get(i).unwrap_or(f64::NAN) as f32).to_bits())
            .collect();
        let got: Vec<u32> = got.iter().map(|x| x.to_bits()).collect();
        assert!(
            got == want,
            "call {n}: O after the engine's passes differs from the host level"
        );
    }
}

/// Engine-shaped calls (DESIGN.md section 6) on the workgroup-memory key path: packed and
/// paged batches under every mask, an eighth of the shared sweep's cases; none may be refused.
/// The default (subgroup) path runs a quarter of them in tests/engine_backends.rs, which a
/// sweep here would repeat at the cost of cold pipeline builds in CI.
#[test]
fn engine_shaped_sweep_workgroup_path() {
    let Some(b) = backend(false) else { return };
    let cases = common::config().cases / 8;
    let ran = common::engine_parity_sweep_cases(&b, &Limits::default(), cases);
    assert_eq!(ran as u32, cases, "engine-shaped cases refused on WGSL");
}

/// Index tensors corrupted after the host checks, as an engine's device-level call can get
/// them: the kernels stay inside their buffers and the rows that used a bad entry are NaN.
#[test]
fn bad_device_indices_give_nan_rows() {
    let Some(b) = backend(true) else { return };
    for case in common::bad_index_cases() {
        let out = b
            .forward_with_device_indices(&case.problem, &case.valid, &case.bad)
            .unwrap_or_else(|e| panic!("{}: {e}", case.label));
        if let Err(e) = common::check_bad_index_outputs(&case, &out) {
            panic!("{e}");
        }
    }
}

/// Batch invariance (as FlashInfer tests it): a sequence's rows, statistics and key mass are
/// bitwise the same whether it runs in a sub-batch or with a longer sequence beside it, for
/// packed queries over a paged cache (prefill) and dense queries over a paged cache (decode).
#[test]
fn sub_batches_give_the_same_bits() {
    use outlier_attn::cases::{KvStorage, SeqCase, engine_inputs};
    let Some(b) = backend(true) else { return };
    let template = Problem::new(Shape::new(1, 4, 2, 1, 1, 64), DType::F16)
        .with_variant(Variant::LogitSink)
        .with_mask(Mask::Causal)
        .with_stats(StatsLevel::HeadsAndKeys);
    let paged = KvStorage::Paged {
        page_size: 16,
        spare_pages: 1,
    };
    for (q_lens, kv_lens, packed_q) in [
        (vec![5, 9, 70], vec![20, 9, 90], true),
        (vec![1, 1, 1], vec![37, 5, 130], false),
    ] {
        let full = SeqCase {
            q_lens: q_lens.clone(),
            kv_lens: kv_lens.clone(),
            packed_q,
            kv: paged,
        };
        let sub = SeqCase {
            q_lens: q_lens[..2].to_vec(),
            kv_lens: kv_lens[..2].to_vec(),
            ..full.clone()
        };
        let spec = InputSpec {
            seed: 5,
            massive: true,
            ..InputSpec::default()
        };
        let run = |case: &SeqCase| {
            let (problem, inputs) = engine_inputs(&template, case, &spec);
            let out = b.forward(&problem, &inputs).expect("engine-shaped call");
            (problem, inputs, out)
        };
        let (p_full, i_full, full_out) = run(&full);
        let (p_sub, i_sub, sub_out) = run(&sub);
        let map = |p: &Problem, i: &HostInputs| {
            outlier_attn::SeqMap::new(&p.shape, &p.seqs, &i.indices).expect("valid indices")
        };
        let (m_full, m_sub) = (map(&p_full, &i_full), map(&p_sub, &i_sub));
        let (hq, d) = (template.shape.q_heads, template.shape.head_dim);
        let row =
            |m: &outlier_attn::SeqMap, p: &Problem, out: &outlier_attn::HostOutputs, bi, i| {
                let (outer, token) = m.q_pos(bi, i);
                let at = (outer * p.shape.q_len + token) * hq * d;
                let o: Vec<u64> = (at..at + hq * d)
                    .map(|x| out.o.get(x).unwrap_or(f64::NAN).to_bits())
                    .collect();
                let lse: Vec<u32> = (0..hq)
                    .map(|h| out.lse[m.lse_index(bi, h, i)].to_bits())
                    .collect();
                (o, lse)
            };
        for bi in 0..2 {
            for i in 0..q_lens[bi] {
                assert!(
                    row(&m_full, &p_full, &full_out, bi, i) == row(&m_sub, &p_sub, &sub_out, bi, i),
                    "sequence {bi} row {i} differs between the full batch and the sub-batch"
                );
            }
            let stats = |out: &outlier_attn::HostOutputs| {
                let n = hq * outlier_attn::Stat::COUNT;
                let s = out.stats.as_ref().expect("statistics");
                s[bi * n..(bi + 1) * n]
                    .iter()
                    .map(|x| x.to_bits())
                    .collect::<Vec<_>>()
            };
            assert_eq!(
                stats(&full_out),
                stats(&sub_out),
                "sequence {bi} statistics"
            );
            let mass = |m: &outlier_attn::SeqMap, out: &outlier_attn::HostOutputs| {
                let km = out.key_mass.as_ref().expect("key mass");
                (0..hq)
                    .flat_map(|h| (0..kv_lens[bi]).map(move |j| (h, j)))
                    .map(|(h, j)| km[m.key_mass_index(bi, h, j)].to_bits())
                    .collect::<Vec<_>>()
            };
            assert_eq!(
                mass(&m_full, &full_out),
                mass(&m_sub, &sub_out),
                "sequence {bi} key mass"
            );
        }
    }
}
