//! Split-KV decode on the WGSL backend: split and unsplit calls both held to the reference
//! (the parity rule), each bitwise deterministic; a sub-batch gives bit for bit the full
//! batch's rows when the chunk is fixed (`KeysPerSplit`); splits that see no key of a row
//! (windows, short `seqlens_k`, an empty sequence) merge without NaN; every variant that splits
//! at every statistics level, the statistics and key mass held to the reference; paged decode;
//! lavapipe's loop budget split around; a forced split of ClippedSoftmax refused.
//!
//! Kept cheap for CI: a few decode shapes, each pipeline specialisation built once or twice.
#![cfg(feature = "wgpu")]
mod common;

use common::{Case, EngineCase};
use outlier_attn::cases::{InputSpec, KvStorage, SeqCase};
use outlier_attn::wgsl::{WgslBackend, WgslOptions};
use outlier_attn::{
    Backend, DType, Error, Gate, GateGranularity, HostInputs, HostTensor, Mask, Problem, Shape,
    SplitKv, StatsLevel, Variant,
};

/// The backend with split-KV set to `split_kv`, or `None` after reporting why.
fn backend(split_kv: SplitKv) -> Option<WgslBackend> {
    common::wgsl_backend(WgslOptions {
        split_kv,
        ..WgslOptions::default()
    })
}

/// One K/V tile per split: the most splits a call can have.
const FINEST: SplitKv = SplitKv::KeysPerSplit(1);

/// Decode problems whose rows have per-row terms or masked splits: plain softmax (f16, GQA),
/// learned sink logits under a window that leaves the first splits of every row without a
/// key (f32, d = 128, Nq = 2), and a value bias (bf16).
fn decode_problems() -> Vec<Problem> {
    vec![
        Problem::new(Shape::new(2, 4, 2, 1, 150, 64), DType::F16),
        Problem::new(Shape::new(1, 4, 1, 2, 200, 128), DType::F32)
            .with_variant(Variant::LogitSink)
            .with_mask(Mask::window(Some(40), Some(0))),
        Problem::new(Shape::new(1, 2, 1, 1, 100, 32), DType::Bf16)
            .with_variant(Variant::ValueBias)
            .with_mask(Mask::Causal),
    ]
}

fn case(problem: Problem, seed: u64) -> Case {
    Case {
        problem,
        spec: InputSpec {
            seed,
            ..InputSpec::default()
        },
        views: false,
    }
}

#[test]
fn split_and_unsplit_decode_both_pass_and_are_deterministic() {
    let (Some(split), Some(unsplit)) = (backend(FINEST), backend(SplitKv::Off)) else {
        return;
    };
    for (n, problem) in decode_problems().into_iter().enumerate() {
        let splits = split.attention().splits(&problem).expect("plan");
        assert!(splits > 2, "{problem:?}: {splits} splits");
        assert_eq!(unsplit.attention().splits(&problem).expect("plan"), 1);
        let case = case(problem, 10 + n as u64);
        for b in [&split, &unsplit] {
            if let Err(e) = common::check_case(b, &case) {
                panic!(
                    "{} splits: {e}",
                    b.attention().splits(&problem).unwrap_or(0)
                );
            }
            common::assert_deterministic(b, &case);
        }
    }
}

/// The shared decode cases (tests/common `decode_cases`, also the CUDA backend's): every
/// variant that splits, each statistics level, views and massive activations, at one K/V tile
/// per split. Statistics and key mass are held to the reference like O and the LSE: they stay
/// exact under splitting. Halved by case parity into two tests, so that their pipeline builds
/// run side by side.
fn split_decode_cases_pass(half: usize) {
    let Some(split) = backend(FINEST) else { return };
    let mut cases: Vec<Case> = common::decode_cases()
        .into_iter()
        .skip(half)
        .step_by(2)
        .collect();
    if half == 1 {
        // A per-channel gate (its statistics over the row's channels, in the combine) on rows
        // split over lanes (d = 128), f32.
        let gate = Variant::ContextScale {
            gate: Gate::Sigmoid,
            granularity: GateGranularity::PerChannel,
        };
        let problem = Problem::new(Shape::new(1, 4, 2, 2, 130, 128), DType::F32)
            .with_variant(gate)
            .with_mask(Mask::Causal)
            .with_stats(StatsLevel::Heads);
        cases.push(case(problem, 60));
    }
    for case in &cases {
        let splits = split.attention().splits(&case.problem).expect("plan");
        assert!(splits > 2, "{:?}: {splits} splits", case.problem);
        if let Err(e) = common::check_case(&split, case) {
            panic!("{splits} splits: {e}");
        }
        common::assert_deterministic(&split, case);
    }
}

#[test]
fn every_splitting_variant_and_statistics_level_passes_split_even_cases() {
    split_decode_cases_pass(0);
}

#[test]
fn every_splitting_variant_and_statistics_level_passes_split_odd_cases() {
    split_decode_cases_pass(1);
}

/// Engine-shaped decode with splits: paged caches (pages of 64 and 16 tokens), a window whose
/// first splits see no key, sequences shorter than the others (their last splits are empty),
/// and an empty sequence (`seqlens_k` = 0: O = 0, LSE = −inf, no NaN).
#[test]
fn paged_and_short_sequences_split_without_nan() {
    let Some(split) = backend(FINEST) else { return };
    let mut engine: Vec<EngineCase> = common::decode_engine_cases();
    let empty = engine.len();
    engine.push(EngineCase {
        template: Problem::new(Shape::new(1, 4, 2, 1, 1, 64), DType::F16),
        seqs: SeqCase {
            q_lens: vec![1, 1, 1],
            kv_lens: vec![150, 20, 0],
            packed_q: false,
            kv: KvStorage::DenseWithLens { spare: 5 },
        },
        spec: InputSpec {
            seed: 7,
            ..InputSpec::default()
        },
    });
    for case in &engine {
        let (problem, inputs) = case.build();
        assert!(split.attention().splits(&problem).expect("plan") > 2);
        match common::check_engine_case(&split, case) {
            Ok(true) => {}
            Ok(false) => panic!("{}: refused", case.seqs.label()),
            Err(e) => panic!("{e}"),
        }
        let out = split.forward(&problem, &inputs).expect("forward");
        let again = split.forward(&problem, &inputs).expect("forward");
        assert!(
            out.o.as_bytes() == again.o.as_bytes(),
            "{}: two runs differ",
            case.seqs.label()
        );
        let o = out.o.to_f64_vec();
        assert!(
            o.iter().all(|x| !x.is_nan()),
            "{}: NaN in O",
            case.seqs.label()
        );
        assert!(
            out.lse.iter().all(|x| !x.is_nan()),
            "{}: NaN LSE",
            case.seqs.label()
        );
    }
    // The empty sequence: O = 0 and LSE = −inf, as unsplit.
    let (problem, inputs) = engine[empty].build();
    let out = split.forward(&problem, &inputs).expect("forward");
    let s = &problem.shape;
    let row = s.q_heads * s.head_dim;
    assert!(
        out.o.to_f64_vec()[2 * row..3 * row]
            .iter()
            .all(|&x| x == 0.0)
    );
    assert!(
        out.lse[2 * s.q_heads..3 * s.q_heads]
            .iter()
            .all(|&x| x == f32::NEG_INFINITY)
    );
}

/// Batch `b` of `t`, whose batches are `per_batch` elements each.
fn batch_of(t: &HostTensor, b: usize, per_batch: usize) -> HostTensor {
    let bytes = t.dtype().size_bytes();
    HostTensor::from_bytes(
        t.dtype(),
        &t.as_bytes()[b * per_batch * bytes..(b + 1) * per_batch * bytes],
    )
    .expect("whole elements")
}

/// With the chunk fixed, a row's cut depends on its keys alone: sequence 2 of a batch of 4,
/// run alone, gives the same bits (O and LSE) as in the batch, with LogitSink's per-head
/// terms.
#[test]
fn sub_batch_rows_are_bitwise_those_of_the_full_batch() {
    let Some(split) = backend(SplitKv::KeysPerSplit(64)) else {
        return;
    };
    let full =
        Problem::new(Shape::new(4, 4, 2, 1, 200, 64), DType::F16).with_variant(Variant::LogitSink);
    let one =
        Problem::new(Shape::new(1, 4, 2, 1, 200, 64), DType::F16).with_variant(Variant::LogitSink);
    assert!(split.attention().splits(&full).expect("plan") > 1);
    let inputs = outlier_attn::cases::random_inputs(&full, &InputSpec::default());
    let s = &full.shape;
    let (q_batch, kv_batch) = (s.q_heads * s.head_dim, s.kv_len * s.kv_heads * s.head_dim);
    let b = 2;
    let alone = HostInputs::dense(
        &one,
        batch_of(&inputs.q, b, q_batch),
        batch_of(&inputs.k, b, kv_batch),
        batch_of(&inputs.v, b, kv_batch),
    )
    .with_params(inputs.params.clone());
    let out_full = split.forward(&full, &inputs).expect("full batch");
    let out_one = split.forward(&one, &alone).expect("sub-batch");
    let bytes = full.dtype.size_bytes();
    assert!(
        out_full.o.as_bytes()[b * q_batch * bytes..(b + 1) * q_batch * bytes]
            == *out_one.o.as_bytes(),
        "O of the sub-batch differs from the full batch's"
    );
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(&out_full.lse[b * s.q_heads..(b + 1) * s.q_heads]),
        bits(&out_one.lse),
        "LSE of the sub-batch differs from the full batch's"
    );
}

/// On lavapipe a decode past the loop budget used to be refused; `Auto` splits it into chunks
/// within the budget, and the result is right. (`Off` still refuses it.)
#[test]
fn auto_splits_a_decode_past_lavapipes_loop_budget() {
    let Some(auto) = backend(SplitKv::Auto) else {
        return;
    };
    let Some(limit) = auto.attention().loop_iteration_limit() else {
        eprintln!("skipped: the adapter does not limit loop iterations");
        return;
    };
    let problem = Problem::new(Shape::new(1, 2, 1, 1, limit as usize, 64), DType::F16);
    let Some(off) = backend(SplitKv::Off) else {
        return;
    };
    assert!(matches!(
        off.forward(&problem, &outlier_attn::cases::random_inputs(&problem, &InputSpec::default())),
        Err(Error::Unsupported { reason, .. }) if reason.contains("loop iterations")
    ));
    assert!(auto.attention().splits(&problem).expect("plan") > 1);
    if let Err(e) = common::check_case(&auto, &case(problem, 3)) {
        panic!("{e}");
    }
}

/// A forced split of ClippedSoftmax (its weights need the row's final normaliser) is refused
/// by name, and `Auto` runs it unsplit; every other variant and statistics level splits.
#[test]
fn forced_splits_are_refused_where_the_kernels_cannot_split() {
    let Some(on) = backend(SplitKv::On) else {
        return;
    };
    let Some(auto) = backend(SplitKv::Auto) else {
        return;
    };
    let decode = Problem::new(Shape::new(1, 2, 1, 1, 300, 64), DType::F16);
    let clipped = decode.with_variant(Variant::ClippedSoftmax {
        zeta: 1.1,
        gamma: -0.1,
    });
    match on.attention().splits(&clipped) {
        Err(Error::Unsupported { reason, .. }) => {
            assert!(
                reason.contains("split-KV") && reason.contains("ClippedSoftmax"),
                "{reason}"
            )
        }
        other => panic!("{clipped:?}: {other:?}"),
    }
    assert_eq!(auto.attention().splits(&clipped).expect("plan"), 1);
    for problem in [
        decode,
        decode.with_stats(StatsLevel::HeadsAndKeys),
        decode.with_variant(Variant::Sigmoid { bias: None }),
    ] {
        assert!(on.attention().splits(&problem).expect("plan") > 1);
    }
}
