//! Engine-shaped calls (DESIGN.md section 6) in the reference: every sequence layout (packed,
//! paged with any page size and page order, dense with per-sequence key lengths, batched decode)
//! gives exactly what the per-sequence dense calls it holds give, output by output and
//! statistic by statistic, for the reference and for the parity baseline; a strided gate is the
//! contiguous gate; a gpt-oss layer (learned sinks, causal 128-token window, GQA 64/8) and a
//! Qwen3-Next layer (per-channel sigmoid gate read from the q projection) match hand-built bands
//! and gates; sequences without queries or keys follow the contract.
mod common;

use common::{EngineCase, Limits};
use outlier_attn::cases::{self, InputSpec, KvStorage, SeqCase};
use outlier_attn::reference::{self, ExactOutputs, Reference};
use outlier_attn::{
    Backend, DType, Gate, GateGranularity, HostInputs, HostTensor, KvSeqs, Layout, Mask, Problem,
    QuerySeqs, Shape, Stat, StatsLevel, Strides, Variant,
};
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};

fn limits() -> Limits {
    Limits {
        max_len: 20,
        max_head_dim: 32,
        ..Limits::default()
    }
}

/// Bitwise equality, NaN meeting NaN: the same arithmetic in the same order.
fn same(a: f64, b: f64) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

fn assert_same(what: &str, got: f64, want: f64) -> Result<(), TestCaseError> {
    if same(got, want) {
        Ok(())
    } else {
        Err(TestCaseError::fail(format!("{what}: {got} vs {want}")))
    }
}

/// The outputs of one run (reference or baseline) in f64.
struct Outputs {
    o: Vec<f64>,
    lse: Vec<f64>,
    stats: Vec<f64>,
    key_mass: Vec<f64>,
}

fn run(problem: &Problem, inputs: &HostInputs, baseline: bool) -> Outputs {
    if baseline {
        let b = reference::baseline(problem, inputs).expect("valid call");
        let wide = |x: &[f32]| x.iter().map(|&v| v as f64).collect::<Vec<_>>();
        Outputs {
            o: b.o.to_f64_vec(),
            lse: wide(&b.lse),
            stats: b.stats.as_deref().map(wide).unwrap_or_default(),
            key_mass: b.key_mass.as_deref().map(wide).unwrap_or_default(),
        }
    } else {
        let ExactOutputs {
            o,
            lse,
            stats,
            key_mass,
            ..
        } = reference::forward(problem, inputs).expect("valid call");
        Outputs {
            o,
            lse,
            stats,
            key_mass,
        }
    }
}

/// The engine-shaped call of `case` against the per-sequence dense calls, with the layouts of
/// DESIGN.md section 6 written out here by hand: O rows in Q's order, LSE `[B, Hq, Nq]` or
/// `[Hq, total_q]`, one statistics record per (sequence, head), key mass `[B, Hq, Nk]` (0 past
/// a sequence's length) or `[Hq, total_k]`. Sequences without queries or keys are skipped here
/// (the dense contract has no such call) and tested on their own below.
fn assert_matches_per_sequence(case: &EngineCase) -> Result<(), TestCaseError> {
    let (problem, inputs) = case.build();
    let parts = cases::per_sequence(&case.template, &case.seqs, &case.spec);
    let s = problem.shape;
    let (hq, d) = (s.q_heads, s.head_dim);
    let total_q: usize = case.seqs.q_lens.iter().sum();
    let total_k: usize = case.seqs.kv_lens.iter().sum();
    for baseline in [false, true] {
        let which = if baseline { "baseline" } else { "reference" };
        let whole = run(&problem, &inputs, baseline);
        let (mut q_base, mut k_base) = (0usize, 0usize);
        for (b, (p, part_inputs)) in parts.iter().enumerate() {
            let (nq, nk) = (p.shape.q_len, p.shape.kv_len);
            let first_row = if case.seqs.packed_q {
                q_base
            } else {
                b * s.q_len
            };
            if nq > 0 && nk > 0 {
                let part = run(p, part_inputs, baseline);
                for i in 0..nq {
                    for h in 0..hq {
                        for c in 0..d {
                            assert_same(
                                &format!("{which} o[seq {b}, row {i}, head {h}, ch {c}]"),
                                whole.o[((first_row + i) * hq + h) * d + c],
                                part.o[(i * hq + h) * d + c],
                            )?;
                        }
                        let at = if case.seqs.packed_q {
                            h * total_q + q_base + i
                        } else {
                            (b * hq + h) * s.q_len + i
                        };
                        assert_same(
                            &format!("{which} lse[seq {b}, head {h}, row {i}]"),
                            whole.lse[at],
                            part.lse[h * nq + i],
                        )?;
                    }
                }
                for h in 0..hq {
                    for st in Stat::ALL {
                        assert_same(
                            &format!("{which} {} of seq {b} head {h}", st.name()),
                            whole
                                .stats
                                .get((b * hq + h) * Stat::COUNT + st.index())
                                .copied()
                                .unwrap_or(f64::NAN),
                            part.stats
                                .get(h * Stat::COUNT + st.index())
                                .copied()
                                .unwrap_or(f64::NAN),
                        )?;
                    }
                    if problem.stats.keys() {
                        let row_len = if case.seqs.kv == KvStorage::Packed {
                            0
                        } else {
                            s.kv_len
                        };
                        for j in 0..row_len.max(nk) {
                            let at = if case.seqs.kv == KvStorage::Packed {
                                h * total_k + k_base + j
                            } else {
                                (b * hq + h) * s.kv_len + j
                            };
                            let want = if j < nk {
                                part.key_mass[h * nk + j]
                            } else {
                                0.0
                            };
                            assert_same(
                                &format!("{which} key_mass[seq {b}, head {h}, key {j}]"),
                                whole.key_mass[at],
                                want,
                            )?;
                        }
                    }
                }
            }
            q_base += nq;
            k_base += nk;
        }
    }
    Ok(())
}

fn engine_case(template: Problem, seqs: SeqCase, seed: u64) -> EngineCase {
    EngineCase {
        template,
        seqs,
        spec: InputSpec {
            seed,
            ..InputSpec::default()
        },
    }
}

/// A template over every variant, with statistics, for the named layout tests.
fn templates(mask: Mask) -> Vec<Problem> {
    outlier_attn::suites::sweep_variants()
        .into_iter()
        .enumerate()
        .map(|(n, variant)| {
            Problem::new(Shape::new(1, 4, 2, 1, 1, 16), DType::ALL[n % 3])
                .with_variant(variant)
                .with_mask(mask)
                .with_stats(StatsLevel::HeadsAndKeys)
        })
        .collect()
}

fn assert_layout_for_every_variant(seqs: SeqCase, mask: Mask) {
    for (n, template) in templates(mask).into_iter().enumerate() {
        let case = engine_case(template, seqs.clone(), n as u64);
        if let Err(e) = assert_matches_per_sequence(&case) {
            panic!("{} {}: {e}", cases::label(&template), seqs.label());
        }
    }
}

proptest! {
    #![proptest_config(common::config())]

    /// Any layout, mask, variant, dtype and statistics level: the call is its sequences.
    #[test]
    fn every_layout_equals_the_calls_of_its_sequences(case in common::arb_engine_case(&limits())) {
        assert_matches_per_sequence(&case)?;
    }

    /// A gate given as the second half of a tensor twice as wide (its other half NaN) gives
    /// bitwise what the contiguous gate gives, in any sequence layout.
    #[test]
    fn a_strided_gate_equals_the_contiguous_gate(
        case in common::arb_engine_case(&limits()),
        gate in prop_oneof![Just(Gate::TwoSigmoid), Just(Gate::Sigmoid), Just(Gate::Identity)],
        per_channel in any::<bool>(),
    ) {
        let granularity = if per_channel { GateGranularity::PerChannel } else { GateGranularity::PerHead };
        let case = EngineCase {
            template: case.template.with_variant(Variant::ContextScale { gate, granularity }),
            ..case
        };
        let (problem, inputs) = case.build();
        let viewed = cases::gate_as_view(&problem, &inputs);
        prop_assert!(viewed.layouts.params.gate.is_some());
        let (a, b) = (run(&problem, &inputs, false), run(&problem, &viewed, false));
        for (what, x, y) in [("o", &a.o, &b.o), ("lse", &a.lse, &b.lse), ("stats", &a.stats, &b.stats)] {
            prop_assert_eq!(x.len(), y.len());
            for (i, (&p, &q)) in x.iter().zip(y).enumerate() {
                assert_same(&format!("{what}[{i}]"), q, p)?;
            }
        }
    }
}

#[test]
fn packed_prefill_equals_the_sequences_concatenated() {
    for mask in [Mask::None, Mask::Causal] {
        assert_layout_for_every_variant(
            SeqCase {
                q_lens: vec![5, 1, 13],
                kv_lens: vec![5, 19, 13],
                packed_q: true,
                kv: KvStorage::Packed,
            },
            mask,
        );
    }
}

#[test]
fn paged_cache_equals_the_dense_cache_it_holds_for_page_sizes_1_16_256() {
    for page_size in [1, 16, 256] {
        for spare_pages in [0, 3] {
            assert_layout_for_every_variant(
                SeqCase {
                    q_lens: vec![3, 3, 3],
                    kv_lens: vec![1, 40, 17],
                    packed_q: false,
                    kv: KvStorage::Paged {
                        page_size,
                        spare_pages,
                    },
                },
                Mask::Causal,
            );
        }
    }
}

#[test]
fn dense_cache_with_lengths_equals_the_truncated_problems() {
    assert_layout_for_every_variant(
        SeqCase {
            q_lens: vec![2, 2],
            kv_lens: vec![7, 30],
            packed_q: false,
            kv: KvStorage::DenseWithLens { spare: 5 },
        },
        Mask::None,
    );
}

#[test]
fn decode_batch_of_different_lengths_equals_one_call_per_sequence() {
    for kv in [
        KvStorage::DenseWithLens { spare: 2 },
        KvStorage::Packed,
        KvStorage::Paged {
            page_size: 16,
            spare_pages: 1,
        },
    ] {
        assert_layout_for_every_variant(
            SeqCase {
                q_lens: vec![1; 4],
                kv_lens: vec![1, 33, 16, 70],
                packed_q: false,
                kv,
            },
            Mask::window(Some(31), Some(0)),
        );
    }
}

/// Random page permutations and page sizes, many draws of one paged decode batch.
#[test]
fn paged_cache_is_independent_of_page_order() {
    let mut runner = TestRunner::new(common::config());
    let strategy = (
        proptest::sample::select(vec![1usize, 2, 5, 16, 256]),
        0..4usize,
        any::<u64>(),
        common::arb_variant(),
    );
    runner
        .run(&strategy, |(page_size, spare_pages, seed, variant)| {
            let template = Problem::new(Shape::new(1, 4, 2, 1, 1, 8), DType::F32)
                .with_variant(variant)
                .with_stats(StatsLevel::HeadsAndKeys);
            let seqs = SeqCase {
                q_lens: vec![2, 2, 2],
                kv_lens: vec![9, 1, 23],
                packed_q: false,
                kv: KvStorage::Paged {
                    page_size,
                    spare_pages,
                },
            };
            assert_matches_per_sequence(&engine_case(template, seqs, seed))
        })
        .unwrap();
}

/// gpt-oss: learned sink logits, causal 128-token window (left = 127), GQA 64/8, d = 64, over
/// a few hundred tokens. Each row is the decode call of that one query over the keys of its
/// band, built by hand; the first-key mass is the mean over rows of the rows whose band starts
/// at key 0.
#[test]
fn gpt_oss_layer_matches_hand_built_bands() {
    let n = 300;
    let (hq, hkv, d) = (64, 8, 64);
    let window = Mask::window(Some(127), Some(0));
    let problem = Problem::new(Shape::new(1, hq, hkv, n, n, d), DType::Bf16)
        .with_variant(Variant::LogitSink)
        .with_mask(window)
        .with_stats(StatsLevel::Heads);
    let inputs = cases::random_inputs(
        &problem,
        &InputSpec {
            seed: 7,
            massive: true,
            ..InputSpec::default()
        },
    );
    let full = reference::forward(&problem, &inputs).expect("valid");
    let (q, k, v) = (
        inputs.q.to_f64_vec(),
        inputs.k.to_f64_vec(),
        inputs.v.to_f64_vec(),
    );
    let mut first_key_mass = vec![0.0; hq];
    for i in 0..n {
        let (first, last) = common::band(window, i, n, n).expect("every row sees its own key");
        assert_eq!(last, i);
        assert_eq!(first, i.saturating_sub(127));
        let keys = last + 1 - first;
        let one = Problem::new(Shape::new(1, hq, hkv, 1, keys, d), DType::Bf16)
            .with_variant(Variant::LogitSink)
            .with_stats(StatsLevel::Heads);
        let slice = |x: &[f64], from: usize, len: usize| {
            HostTensor::from_f64(DType::Bf16, &x[from..from + len])
        };
        let row_inputs = HostInputs::dense(
            &one,
            slice(&q, i * hq * d, hq * d),
            slice(&k, first * hkv * d, keys * hkv * d),
            slice(&v, first * hkv * d, keys * hkv * d),
        )
        .with_params(inputs.params.clone());
        let r = reference::forward(&one, &row_inputs).expect("valid");
        for (h, fkm) in first_key_mass.iter_mut().enumerate() {
            let at = (i * hq + h) * d;
            for c in 0..d {
                let (a, b) = (full.o[at + c], r.o[h * d + c]);
                assert!(
                    (a - b).abs() <= 1e-12 * b.abs().max(1.0),
                    "o row {i} head {h}: {a} vs {b}"
                );
            }
            let (a, b) = (full.lse[h * n + i], r.lse[h]);
            assert!(
                (a - b).abs() <= 1e-12 * b.abs().max(1.0),
                "lse row {i} head {h}: {a} vs {b}"
            );
            if first == 0 {
                *fkm += r.stats[h * Stat::COUNT + Stat::FirstKeyMass.index()];
            }
        }
    }
    for (h, &sum) in first_key_mass.iter().enumerate() {
        let got = full.stats[h * Stat::COUNT + Stat::FirstKeyMass.index()];
        let want = sum / n as f64;
        assert!(
            (got - want).abs() <= 1e-12,
            "first_key_mass head {h}: {got} vs {want}"
        );
    }
}

/// Qwen3-Next's gated attention: o = sigmoid(g) ⊙ softmax attention, per channel, with q and
/// g the two halves of one q-projection tensor `[tokens, Hq, 2·d]`, both read as views of it
/// (no copy). Checked against the softmax call and the gate applied here by hand, and the gate
/// statistics against the factors computed here.
#[test]
fn qwen3_next_gate_is_a_view_of_the_q_projection() {
    let (b, n, hq, hkv, d) = (2, 19, 4, 2, 32);
    let shape = Shape::new(b, hq, hkv, n, n, d);
    let gated = Problem::new(shape, DType::Bf16)
        .with_variant(Variant::ContextScale {
            gate: Gate::Sigmoid,
            granularity: GateGranularity::PerChannel,
        })
        .with_mask(Mask::Causal)
        .with_stats(StatsLevel::Heads);
    let dense = cases::random_inputs(
        &gated,
        &InputSpec {
            seed: 11,
            ..InputSpec::default()
        },
    );
    // The projection: per token and head, q's d channels then g's d channels.
    let (q, z) = (
        dense.q.to_f64_vec(),
        dense.params.gate.as_ref().expect("gate").to_f64_vec(),
    );
    let mut projection = vec![0.0; b * n * hq * 2 * d];
    for t in 0..b * n {
        for h in 0..hq {
            for c in 0..d {
                projection[(t * hq + h) * 2 * d + c] = q[(t * hq + h) * d + c];
                projection[(t * hq + h) * 2 * d + d + c] = z[(t * hq + h) * d + c];
            }
        }
    }
    let projection = HostTensor::from_f64(DType::Bf16, &projection);
    let view = |offset: u64| Layout {
        offset,
        strides: Strides {
            batch: (n * hq * 2 * d) as u64,
            seq: (hq * 2 * d) as u64,
            head: (2 * d) as u64,
            channel: 1,
        },
    };
    let mut viewed = dense.clone();
    viewed.q = projection.clone();
    viewed.layouts.q = view(0);
    viewed.params.gate = Some(projection);
    viewed.layouts.params.gate = Some(view(d as u64));
    let out = reference::forward(&gated, &viewed).expect("a gate view is valid");

    let softmax = gated.with_variant(Variant::Softmax);
    let mut plain_inputs = dense.clone();
    plain_inputs.params.gate = None;
    let plain = reference::forward(&softmax, &plain_inputs).expect("valid");
    let (mut g_min, mut g_max, mut g_sum) = (
        vec![f64::INFINITY; b * hq],
        vec![f64::NEG_INFINITY; b * hq],
        vec![0.0; b * hq],
    );
    for t in 0..b * n {
        for h in 0..hq {
            for c in 0..d {
                let at = (t * hq + h) * d + c;
                let gate = 1.0 / (1.0 + (-z[at]).exp());
                let want = gate * plain.o[at];
                assert!(
                    (out.o[at] - want).abs() <= 1e-12 * want.abs().max(1.0),
                    "o[{at}]: {} vs {want}",
                    out.o[at]
                );
                let head = (t / n) * hq + h;
                g_min[head] = g_min[head].min(gate);
                g_max[head] = g_max[head].max(gate);
                g_sum[head] += gate;
            }
        }
    }
    for head in 0..b * hq {
        let stat = |st: Stat| out.stats[head * Stat::COUNT + st.index()];
        let mean = g_sum[head] / (n * d) as f64;
        for (st, want) in [
            (Stat::GateMin, g_min[head]),
            (Stat::GateMax, g_max[head]),
            (Stat::GateMean, mean),
        ] {
            assert!(
                (stat(st) - want).abs() <= 1e-12,
                "{} of head {head}: {} vs {want}",
                st.name(),
                stat(st)
            );
        }
    }
}

/// A packed batch with a sequence of no queries and one of no keys: the others are untouched;
/// the query-less sequence writes nothing and its record has no row to describe (row means
/// NaN, max_score −inf, Q statistics NaN); the key-less one's rows follow the rows-without-keys
/// rule (Softmax: output 0, LSE −inf; LogitSink: output 0, LSE θ) and its K/V statistics are
/// NaN.
#[test]
fn sequences_without_queries_or_keys_follow_the_contract() {
    for variant in [Variant::Softmax, Variant::LogitSink] {
        let template = Problem::new(Shape::new(1, 2, 1, 1, 1, 8), DType::F32)
            .with_variant(variant)
            .with_stats(StatsLevel::HeadsAndKeys);
        let seqs = SeqCase {
            q_lens: vec![3, 0, 2, 4],
            kv_lens: vec![5, 6, 0, 7],
            packed_q: true,
            kv: KvStorage::Packed,
        };
        let case = engine_case(template, seqs, 5);
        assert_matches_per_sequence(&case).unwrap();
        let (problem, inputs) = case.build();
        assert!(matches!(problem.seqs.q, QuerySeqs::Packed { total: 9 }));
        assert!(matches!(problem.seqs.kv, KvSeqs::Packed { total: 18 }));
        let out = reference::forward(&problem, &inputs).expect("valid");
        let stat = |b: usize, h: usize, st: Stat| out.stats[(b * 2 + h) * Stat::COUNT + st.index()];
        for h in 0..2 {
            assert!(stat(1, h, Stat::FirstKeyMass).is_nan());
            assert!(stat(1, h, Stat::QAbsMax).is_nan());
            assert_eq!(stat(1, h, Stat::MaxScore), f64::NEG_INFINITY);
            assert!(stat(1, h, Stat::KAbsMax).is_finite());
            assert!(stat(2, h, Stat::KAbsMax).is_nan());
            assert!(stat(2, h, Stat::V0NormRatio).is_nan());
            // Sequence 2 holds packed rows 3 and 4.
            let theta = inputs
                .params
                .sink_logits
                .as_ref()
                .map(|t| t.to_f64_vec()[h]);
            for row in 3..5 {
                assert!(out.o[(row * 2 + h) * 8..][..8].iter().all(|&x| x == 0.0));
                let lse = out.lse[h * 9 + row];
                assert_eq!(lse, theta.unwrap_or(f64::NEG_INFINITY));
            }
            match variant {
                Variant::LogitSink => assert_eq!(stat(2, h, Stat::SinkMass), 1.0),
                _ => assert!(stat(2, h, Stat::FirstKeyMass).is_nan()),
            }
        }
    }
}

/// The checker the GPU backends' bad-index tests use (tests/common `check_bad_index_outputs`)
/// can fail: the valid call's own outputs fail it wherever a row must be NaN, and pass once
/// those rows and their sequences' records are NaN.
#[test]
fn the_bad_index_checker_tells_contained_from_leaked() {
    use common::RowExpect;
    for case in common::bad_index_cases() {
        let p = &case.problem;
        let clean = Reference.forward(p, &case.valid).expect("valid");
        let must_nan = case.rows.contains(&RowExpect::Nan);
        assert_eq!(
            common::check_bad_index_outputs(&case, &clean).is_ok(),
            !must_nan,
            "{}",
            case.label
        );
        assert!(
            must_nan,
            "{}: no row must be NaN, the case tests nothing",
            case.label
        );
        // The outputs a containing kernel writes.
        let mut contained = clean.clone();
        let (hq, d) = (p.shape.q_heads, p.shape.head_dim);
        let map = outlier_attn::SeqMap::new(&p.shape, &p.seqs, &case.valid.indices).unwrap();
        for (b, span) in map.spans().iter().enumerate() {
            let rows: Vec<usize> = (0..span.q_len)
                .map(|i| {
                    let (outer, token) = map.q_pos(b, i);
                    outer * p.shape.q_len + token
                })
                .collect();
            if !rows.iter().any(|&r| case.rows[r] == RowExpect::Nan) {
                continue;
            }
            for (i, &r) in rows.iter().enumerate() {
                if case.rows[r] == RowExpect::Correct {
                    continue;
                }
                for c in 0..hq * d {
                    contained.o.set(r * hq * d + c, f64::NAN);
                }
                for h in 0..hq {
                    contained.lse[map.lse_index(b, h, i)] = f32::NAN;
                }
            }
            let at = b * hq * Stat::COUNT;
            contained.stats.as_mut().unwrap()[at..at + hq * Stat::COUNT].fill(f32::NAN);
            for h in 0..hq {
                for j in 0..common::poisoned_keys(p, span) {
                    contained.key_mass.as_mut().unwrap()[map.key_mass_index(b, h, j)] = f32::NAN;
                }
            }
        }
        if let Err(e) = common::check_bad_index_outputs(&case, &contained) {
            panic!("{e}");
        }
    }
}
