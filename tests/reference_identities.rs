//! Identities of the f64 reference: each relates two problems (or a problem and a direct,
//! materialised computation) that the contract says must agree.
mod common;

use common::{Limits, arb_shape, config, exact};
use outlier_attn::cases::{InputSpec, Rng, random_inputs};
use outlier_attn::reference::ExactOutputs;
use outlier_attn::{
    DType, Gate, GateGranularity, HostInputs, HostTensor, Layouts, Mask, Params, Problem, Shape,
    Stat, StatsLevel, Variant,
};
use proptest::prelude::*;

/// Sizes for identity checks: small, every shape class (Nq = 1, Nk = 1, Nq > Nk, GQA).
fn limits() -> Limits {
    Limits {
        max_len: 12,
        max_head_dim: 32,
        ..Limits::default()
    }
}

/// A base problem: shape, dtype, mask, softcap, scale, statistics on.
fn arb_base() -> impl Strategy<Value = Problem> {
    (
        arb_shape(&limits()),
        proptest::sample::select(DType::ALL.to_vec()),
        common::arb_mask(),
        prop_oneof![Just(None), (2.0f32..30.0).prop_map(Some)],
        prop_oneof![Just(None), (0.05f32..1.0).prop_map(Some)],
    )
        .prop_map(|(shape, dtype, mask, softcap, scale)| Problem {
            shape,
            dtype,
            variant: Variant::Softmax,
            mask,
            scale,
            softcap,
            stats: StatsLevel::HeadsAndKeys,
            seqs: outlier_attn::Sequences::DENSE,
        })
}

fn f32s(values: Vec<f64>) -> HostTensor {
    HostTensor::from_f64(DType::F32, &values)
}

fn close(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

fn assert_all_close(what: &str, a: &[f64], b: &[f64]) -> Result<(), TestCaseError> {
    prop_assert_eq!(a.len(), b.len(), "{}: lengths", what);
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        prop_assert!(close(x, y), "{}[{}]: {} vs {}", what, i, x, y);
    }
    Ok(())
}

fn assert_same_outputs(
    what: &str,
    a: &ExactOutputs,
    b: &ExactOutputs,
) -> Result<(), TestCaseError> {
    assert_all_close(&format!("{what}: o"), &a.o, &b.o)?;
    assert_all_close(&format!("{what}: lse"), &a.lse, &b.lse)
}

fn stat(out: &ExactOutputs, head: usize, st: Stat) -> f64 {
    out.stats[head * Stat::COUNT + st.index()]
}

/// Same data, another variant with the given parameters.
fn with(
    problem: &Problem,
    variant: Variant,
    inputs: &HostInputs,
    params: Params<HostTensor>,
) -> (Problem, HostInputs) {
    let p = problem.with_variant(variant);
    let mut i = inputs.clone();
    i.params = params;
    (p, i)
}

proptest! {
    #![proptest_config(config())]

    /// Softmax1 = LogitSink with θ = 0 = KvSink with k′ = v′ = 0.
    #[test]
    fn softmax1_is_a_zero_sink(base in arb_base(), seed in any::<u64>()) {
        let s = base.shape;
        let inputs = random_inputs(&base, &InputSpec { seed, ..InputSpec::default() });
        let (p1, i1) = with(&base, Variant::Softmax1, &inputs, Params::none());
        let one = exact(&p1, &i1);
        let (pg, ig) = with(&base, Variant::LogitSink, &inputs, Params {
            sink_logits: Some(f32s(vec![0.0; s.q_heads])),
            ..Params::none()
        });
        assert_same_outputs("LogitSink(θ=0)", &one, &exact(&pg, &ig))?;
        let zeros = || Some(f32s(vec![0.0; s.q_heads * s.head_dim]));
        let (pd, id) = with(&base, Variant::KvSink, &inputs, Params {
            k_sink: zeros(),
            v_sink: zeros(),
            ..Params::none()
        });
        assert_same_outputs("KvSink(k′=v′=0)", &one, &exact(&pd, &id))?;
    }

    /// ValueBias with v′ = 0, ContextScale with 2·sigmoid(0) = 1, and ClippedSoftmax with
    /// ζ = 1, γ = 0 are all plain softmax.
    #[test]
    fn neutral_parameters_give_softmax(base in arb_base(), seed in any::<u64>(), per_channel in any::<bool>()) {
        let s = base.shape;
        let inputs = random_inputs(&base, &InputSpec { seed, ..InputSpec::default() });
        let softmax = exact(&base, &inputs);
        let (pb, ib) = with(&base, Variant::ValueBias, &inputs, Params {
            v_bias: Some(f32s(vec![0.0; s.q_heads * s.head_dim])),
            ..Params::none()
        });
        assert_same_outputs("ValueBias(v′=0)", &softmax, &exact(&pb, &ib))?;
        let granularity = if per_channel { GateGranularity::PerChannel } else { GateGranularity::PerHead };
        let scale_variant = Variant::ContextScale { gate: Gate::TwoSigmoid, granularity };
        let gate_len = base.with_variant(scale_variant).gate_len();
        let (pe, ie) = with(&base, scale_variant, &inputs, Params {
            gate: Some(HostTensor::filled(base.dtype, gate_len, 0.0)),
            ..Params::none()
        });
        assert_same_outputs("ContextScale(z=0)", &softmax, &exact(&pe, &ie))?;
        let (pi, ii) = with(&base, Variant::ClippedSoftmax { zeta: 1.0, gamma: 0.0 }, &inputs, Params::none());
        assert_same_outputs("ClippedSoftmax(1, 0)", &softmax, &exact(&pi, &ii))?;
    }

    /// The paper's identity: a key/value sink is softmax attention scaled by S plus (1 − S)·v′,
    /// with S the share the real keys keep; ContextBias adds the same (1 − S)·v′ unscaled.
    #[test]
    fn kv_sink_is_a_context_aware_scale(base in arb_base(), seed in any::<u64>()) {
        let s = base.shape;
        let d = s.head_dim;
        let problem = base.with_variant(Variant::KvSink);
        let inputs = random_inputs(&problem, &InputSpec { seed, ..InputSpec::default() });
        let sink = exact(&problem, &inputs);
        let (ps, is) = with(&base, Variant::Softmax, &inputs, Params::none());
        let softmax = exact(&ps, &is);
        let (pc, ic) = with(&base, Variant::ContextBias, &inputs, inputs.params.clone());
        let context = exact(&pc, &ic);
        let v_sink = inputs.params.v_sink.as_ref().unwrap().to_f64_vec();

        let mut expect_sink = vec![0.0; sink.o.len()];
        let mut expect_context = vec![0.0; sink.o.len()];
        for b in 0..s.batch {
            for h in 0..s.q_heads {
                let mut mean_sink_share = 0.0;
                for i in 0..s.q_len {
                    let row = (b * s.q_heads + h) * s.q_len + i;
                    // S = Σ_j e^{s_ij} / (e^{s′} + Σ_j e^{s_ij}) = exp(LSE_softmax − LSE_sink).
                    let keep = (softmax.lse[row] - sink.lse[row]).exp();
                    mean_sink_share += (1.0 - keep) / s.q_len as f64;
                    for c in 0..d {
                        let at = ((b * s.q_len + i) * s.q_heads + h) * d + c;
                        expect_sink[at] = keep * softmax.o[at] + (1.0 - keep) * v_sink[h * d + c];
                        expect_context[at] = softmax.o[at] + (1.0 - keep) * v_sink[h * d + c];
                    }
                }
                let head = b * s.q_heads + h;
                prop_assert!(close(stat(&sink, head, Stat::SinkMass), mean_sink_share));
                prop_assert!(close(stat(&context, head, Stat::SinkMass), mean_sink_share));
            }
        }
        assert_all_close("KvSink = S·Softmax + (1 − S)·v′", &sink.o, &expect_sink)?;
        assert_all_close("ContextBias = Softmax + (1 − S)·v′", &context.o, &expect_context)?;
        assert_all_close("ContextBias LSE = Softmax LSE", &context.lse, &softmax.lse)?;
    }

    /// Grouped-query attention is the same problem with each K/V head repeated for its group.
    #[test]
    fn gqa_equals_repeated_kv_heads(base in arb_base(), seed in any::<u64>(), variant in common::arb_variant()) {
        let problem = base.with_variant(variant);
        let s = problem.shape;
        let inputs = random_inputs(&problem, &InputSpec { seed, ..InputSpec::default() });
        let repeat = |t: &HostTensor| {
            let x = t.to_f64_vec();
            let mut out = Vec::with_capacity(x.len() * s.group_size());
            for b in 0..s.batch {
                for j in 0..s.kv_len {
                    for h in 0..s.q_heads {
                        let at = ((b * s.kv_len + j) * s.kv_heads + s.kv_head(h)) * s.head_dim;
                        out.extend_from_slice(&x[at..at + s.head_dim]);
                    }
                }
            }
            HostTensor::from_f64(problem.dtype, &out)
        };
        let mha = Problem { shape: Shape { kv_heads: s.q_heads, ..s }, ..problem };
        let mha_inputs = HostInputs {
            k: repeat(&inputs.k),
            v: repeat(&inputs.v),
            layouts: Layouts::contiguous(&mha.shape),
            ..inputs.clone()
        };
        let (a, b) = (exact(&problem, &inputs), exact(&mha, &mha_inputs));
        assert_same_outputs("GQA vs repeated heads", &a, &b)?;
        assert_all_close("statistics", &a.stats, &b.stats)?;
        assert_all_close("key mass", &a.key_mass, &b.key_mass)?;
    }

    /// Without a mask, attention is a function of the set of keys: permuting keys (with their
    /// values) changes nothing but the order of the key mass.
    #[test]
    fn unmasked_attention_ignores_key_order(base in arb_base(), seed in any::<u64>(), variant in common::arb_variant()) {
        let problem = base.with_variant(variant).with_mask(Mask::None);
        let s = problem.shape;
        let inputs = random_inputs(&problem, &InputSpec { seed, ..InputSpec::default() });
        let mut rng = Rng::new(seed ^ 1);
        let mut perm: Vec<usize> = (0..s.kv_len).collect();
        for i in (1..perm.len()).rev() {
            perm.swap(i, rng.below(i + 1));
        }
        let permute = |t: &HostTensor| {
            let x = t.to_f64_vec();
            let row = s.kv_heads * s.head_dim;
            let mut out = vec![0.0; x.len()];
            for b in 0..s.batch {
                for (j, &from) in perm.iter().enumerate() {
                    let (dst, src) = ((b * s.kv_len + j) * row, (b * s.kv_len + from) * row);
                    out[dst..dst + row].copy_from_slice(&x[src..src + row]);
                }
            }
            HostTensor::from_f64(problem.dtype, &out)
        };
        let permuted = HostInputs { k: permute(&inputs.k), v: permute(&inputs.v), ..inputs.clone() };
        let (a, b) = (exact(&problem, &inputs), exact(&problem, &permuted));
        assert_same_outputs("permuted keys", &a, &b)?;
        for head in 0..s.heads_total() {
            for st in [Stat::MaxScore, Stat::MeanEntropy, Stat::SinkMass, Stat::RowMassMean] {
                prop_assert!(close(stat(&a, head, st), stat(&b, head, st)), "{}", st.name());
            }
            for (j, &from) in perm.iter().enumerate() {
                prop_assert!(close(a.key_mass[head * s.kv_len + from], b.key_mass[head * s.kv_len + j]));
            }
        }
    }

    /// The bottom-right causal mask and sliding windows: row i is the unmasked problem of that
    /// one query over the band of keys [i + Nk − Nq − left, i + Nk − Nq + right], built by hand
    /// ([`common::band`]); rows that see no key follow DESIGN.md.
    #[test]
    fn masked_rows_match_hand_built_bands(base in arb_base(), seed in any::<u64>(), variant in common::arb_variant(), mask in common::arb_mask()) {
        // β of Sigmoid defaults to −ln(full Nk), which a band would change: pin it.
        let variant = match variant {
            Variant::Sigmoid { bias: None } => Variant::Sigmoid { bias: Some(-(base.shape.kv_len as f32).ln()) },
            v => v,
        };
        let problem = base.with_variant(variant).with_mask(mask).with_stats(StatsLevel::Off);
        let s = problem.shape;
        let d = s.head_dim;
        let inputs = random_inputs(&problem, &InputSpec { seed, ..InputSpec::default() });
        let full = exact(&problem, &inputs);
        let (q, k, v) = (inputs.q.to_f64_vec(), inputs.k.to_f64_vec(), inputs.v.to_f64_vec());
        let gate = inputs.params.gate.as_ref().map(|g| g.to_f64_vec());
        let gate_width = if problem.gate_len() == s.batch * s.q_len * s.q_heads { 1 } else { d };

        for b in 0..s.batch {
            for i in 0..s.q_len {
                let Some((first, last)) = common::band(mask, i, s.q_len, s.kv_len) else {
                    check_empty_row(&problem, &inputs, &full, b, i)?;
                    continue;
                };
                let n_keys = last + 1 - first;
                let one = Problem { shape: Shape { batch: 1, q_len: 1, kv_len: n_keys, ..s }, mask: Mask::None, ..problem };
                let qrow = s.q_heads * d;
                let krow = s.kv_heads * d;
                let q1 = &q[(b * s.q_len + i) * qrow..][..qrow];
                let k1 = &k[(b * s.kv_len + first) * krow..][..n_keys * krow];
                let v1 = &v[(b * s.kv_len + first) * krow..][..n_keys * krow];
                let mut params = inputs.params.clone();
                if let Some(g) = &gate {
                    let w = s.q_heads * gate_width;
                    params.gate = Some(HostTensor::from_f64(problem.dtype, &g[(b * s.q_len + i) * w..][..w]));
                }
                let row_inputs = HostInputs::dense(
                    &one,
                    HostTensor::from_f64(problem.dtype, q1),
                    HostTensor::from_f64(problem.dtype, k1),
                    HostTensor::from_f64(problem.dtype, v1),
                ).with_params(params);
                let r = exact(&one, &row_inputs);
                for h in 0..s.q_heads {
                    let at = ((b * s.q_len + i) * s.q_heads + h) * d;
                    assert_all_close("masked row o", &full.o[at..at + d], &r.o[h * d..(h + 1) * d])?;
                    let lse_at = (b * s.q_heads + h) * s.q_len + i;
                    prop_assert!(close(full.lse[lse_at], r.lse[h]), "lse row {}: {} vs {}", i, full.lse[lse_at], r.lse[h]);
                }
            }
        }
    }

    /// The statistics are what a direct computation from the materialised probability matrix
    /// gives, and the LSE is the log of each row's denominator.
    #[test]
    fn statistics_match_the_materialised_matrix(base in arb_base(), seed in any::<u64>(), variant in common::arb_variant()) {
        let problem = base.with_variant(variant);
        let inputs = random_inputs(&problem, &InputSpec { seed, ..InputSpec::default() });
        let out = exact(&problem, &inputs);
        let direct = materialise(&problem, &inputs);
        let s = problem.shape;
        for head in 0..s.heads_total() {
            for (st, want) in [
                (Stat::FirstKeyMass, direct.first_key_mass[head]),
                (Stat::SinkMass, direct.sink_mass[head]),
                (Stat::MaxScore, direct.max_score[head]),
                (Stat::MeanEntropy, direct.entropy[head]),
                (Stat::RowMassMean, direct.row_mass[head]),
            ] {
                let got = stat(&out, head, st);
                prop_assert!((got - want).abs() <= 1e-9 * want.abs().max(1.0), "{} of head {}: {} vs {}", st.name(), head, got, want);
            }
        }
        for (i, (&got, &want)) in out.key_mass.iter().zip(&direct.key_mass).enumerate() {
            prop_assert!((got - want).abs() <= 1e-9 * want.abs().max(1.0), "key_mass[{}]: {} vs {}", i, got, want);
        }
        for (i, (&got, &want)) in out.lse.iter().zip(&direct.lse).enumerate() {
            prop_assert!(close(got, want) || (got == f64::NEG_INFINITY && want == f64::NEG_INFINITY), "lse[{}]: {} vs {}", i, got, want);
        }
    }
}

/// A row that sees no key: DESIGN.md fixes its output and LSE per variant.
fn check_empty_row(
    problem: &Problem,
    inputs: &HostInputs,
    out: &ExactOutputs,
    b: usize,
    i: usize,
) -> Result<(), TestCaseError> {
    let s = problem.shape;
    let d = s.head_dim;
    let param = |t: &Option<HostTensor>| t.as_ref().map(|x| x.to_f64_vec());
    for h in 0..s.q_heads {
        let o = &out.o[((b * s.q_len + i) * s.q_heads + h) * d..][..d];
        let lse = out.lse[(b * s.q_heads + h) * s.q_len + i];
        let (want_o, want_lse): (Vec<f64>, f64) = match problem.variant {
            Variant::ValueBias => (
                param(&inputs.params.v_bias).unwrap()[h * d..][..d].to_vec(),
                f64::NEG_INFINITY,
            ),
            Variant::ContextBias => (
                param(&inputs.params.v_sink).unwrap()[h * d..][..d].to_vec(),
                f64::NEG_INFINITY,
            ),
            Variant::KvSink => {
                let k_sink = &param(&inputs.params.k_sink).unwrap()[h * d..][..d];
                let q = inputs.q.to_f64_vec();
                let qi = &q[((b * s.q_len + i) * s.q_heads + h) * d..][..d];
                (
                    param(&inputs.params.v_sink).unwrap()[h * d..][..d].to_vec(),
                    score(problem, qi, k_sink),
                )
            }
            Variant::LogitSink => (vec![0.0; d], param(&inputs.params.sink_logits).unwrap()[h]),
            Variant::Softmax1 => (vec![0.0; d], 0.0),
            _ => (vec![0.0; d], f64::NEG_INFINITY),
        };
        assert_all_close("empty row o", o, &want_o)?;
        prop_assert!(
            close(lse, want_lse) || lse == want_lse,
            "empty row lse {} vs {}",
            lse,
            want_lse
        );
    }
    Ok(())
}

fn score(problem: &Problem, q: &[f64], k: &[f64]) -> f64 {
    // σ is an f32 argument; its default is 1/√d rounded to f32.
    let scale = problem
        .scale
        .unwrap_or(1.0 / (problem.shape.head_dim as f32).sqrt()) as f64;
    let x = scale * q.iter().zip(k).map(|(a, b)| a * b).sum::<f64>();
    match problem.softcap {
        Some(c) => c as f64 * (x / c as f64).tanh(),
        None => x,
    }
}

/// Statistics computed the long way: the probability matrix first, then each mean.
struct Direct {
    first_key_mass: Vec<f64>,
    sink_mass: Vec<f64>,
    max_score: Vec<f64>,
    entropy: Vec<f64>,
    row_mass: Vec<f64>,
    key_mass: Vec<f64>,
    lse: Vec<f64>,
}

fn materialise(problem: &Problem, inputs: &HostInputs) -> Direct {
    let s = problem.shape;
    let d = s.head_dim;
    let (q, k) = (inputs.q.to_f64_vec(), inputs.k.to_f64_vec());
    let param = |t: &Option<HostTensor>| t.as_ref().map(|x| x.to_f64_vec());
    let (k_sink, theta) = (
        param(&inputs.params.k_sink),
        param(&inputs.params.sink_logits),
    );
    let heads = s.heads_total();
    let mut out = Direct {
        first_key_mass: vec![0.0; heads],
        sink_mass: vec![0.0; heads],
        max_score: vec![f64::NEG_INFINITY; heads],
        entropy: vec![0.0; heads],
        row_mass: vec![0.0; heads],
        key_mass: vec![0.0; heads * s.kv_len],
        lse: vec![0.0; heads * s.q_len],
    };
    let beta = match problem.variant {
        Variant::Sigmoid { bias } => bias.unwrap_or(-(s.kv_len as f32).ln()) as f64,
        _ => 0.0,
    };
    for b in 0..s.batch {
        for h in 0..s.q_heads {
            let head = b * s.q_heads + h;
            let g = s.kv_head(h);
            let mut rows = 0.0;
            for i in 0..s.q_len {
                let qi = &q[((b * s.q_len + i) * s.q_heads + h) * d..][..d];
                let visible: Vec<usize> = match common::band(problem.mask, i, s.q_len, s.kv_len) {
                    Some((first, last)) => (first..=last).collect(),
                    None => Vec::new(),
                };
                let scores: Vec<f64> = visible
                    .iter()
                    .map(|&j| {
                        score(
                            problem,
                            qi,
                            &k[((b * s.kv_len + j) * s.kv_heads + g) * d..][..d],
                        )
                    })
                    .collect();
                let sink: Option<f64> = match problem.variant {
                    Variant::KvSink | Variant::ContextBias => {
                        Some(score(problem, qi, &k_sink.as_ref().unwrap()[h * d..][..d]))
                    }
                    Variant::LogitSink => Some(theta.as_ref().unwrap()[h]),
                    Variant::Softmax1 => Some(0.0),
                    _ => None,
                };
                // Unnormalised weights of each key and of the sink; the row's denominator.
                let (weights, sink_weight, denominator): (Vec<f64>, f64, f64) =
                    match problem.variant {
                        Variant::Sigmoid { .. } => {
                            let w: Vec<f64> = scores
                                .iter()
                                .map(|&x| 1.0 / (1.0 + (-(x + beta)).exp()))
                                .collect();
                            let total = w.iter().sum();
                            (w, 0.0, total)
                        }
                        Variant::KvSink | Variant::LogitSink | Variant::Softmax1 => {
                            let w: Vec<f64> = scores.iter().map(|x| x.exp()).collect();
                            let e_sink = sink.unwrap().exp();
                            let total = w.iter().sum::<f64>() + e_sink;
                            (w, e_sink, total)
                        }
                        _ => {
                            let w: Vec<f64> = scores.iter().map(|x| x.exp()).collect();
                            let total = w.iter().sum();
                            (w, 0.0, total)
                        }
                    };
                out.lse[head * s.q_len + i] = denominator.ln();
                let counted = !visible.is_empty() || sink.is_some();
                if !counted {
                    continue;
                }
                rows += 1.0;
                let mut p: Vec<f64> = weights.iter().map(|w| w / denominator).collect();
                let mut p_sink = sink_weight / denominator;
                let mut row_mass: f64 = p.iter().sum();
                if let Variant::ClippedSoftmax { zeta, gamma } = problem.variant {
                    let w: Vec<f64> = p
                        .iter()
                        .map(|&x| ((zeta as f64 - gamma as f64) * x + gamma as f64).clamp(0.0, 1.0))
                        .collect();
                    row_mass = w.iter().sum();
                    p = w
                        .iter()
                        .map(|x| if row_mass > 0.0 { x / row_mass } else { 0.0 })
                        .collect();
                }
                if let Variant::Sigmoid { .. } = problem.variant {
                    row_mass = denominator;
                }
                if visible.is_empty() {
                    p.clear();
                }
                let sink_mass = match problem.variant {
                    Variant::ContextBias => {
                        let e_sink = sink.unwrap().exp();
                        p_sink = 0.0;
                        e_sink / (e_sink + weights.iter().sum::<f64>())
                    }
                    _ => p_sink,
                };
                if visible.first() == Some(&0) {
                    out.first_key_mass[head] += p[0];
                }
                out.sink_mass[head] += sink_mass;
                out.row_mass[head] += row_mass;
                out.entropy[head] -= p
                    .iter()
                    .chain([&p_sink])
                    .filter(|&&x| x > 0.0)
                    .map(|x| x * x.ln())
                    .sum::<f64>();
                for (&j, &pj) in visible.iter().zip(&p) {
                    out.key_mass[head * s.kv_len + j] += pj;
                }
                for &x in &scores {
                    out.max_score[head] = out.max_score[head].max(x);
                }
            }
            for v in [
                &mut out.first_key_mass,
                &mut out.sink_mass,
                &mut out.entropy,
                &mut out.row_mass,
            ] {
                v[head] /= rows;
            }
        }
    }
    out
}

/// NaN in one query row reaches that row's output and LSE and every statistic that sums over
/// rows, for every variant; the other rows stay finite; maxima ignore it (crate docs).
#[test]
fn nan_in_one_query_row_propagates_to_what_it_reaches() {
    for variant in outlier_attn::suites::sweep_variants() {
        let problem = Problem::new(Shape::new(1, 1, 1, 3, 5, 8), DType::F32)
            .with_variant(variant)
            .with_stats(StatsLevel::HeadsAndKeys);
        let mut inputs = random_inputs(&problem, &InputSpec::default());
        inputs.q.set(8, f64::NAN); // row 1, channel 0
        let out = exact(&problem, &inputs);
        let name = variant.name();
        for i in 0..3 {
            let row = &out.o[i * 8..(i + 1) * 8];
            if i == 1 {
                assert!(row.iter().all(|x| x.is_nan()), "{name}: o row 1 {row:?}");
                assert!(out.lse[i].is_nan(), "{name}: lse row 1 {}", out.lse[i]);
            } else {
                assert!(
                    row.iter().all(|x| x.is_finite()),
                    "{name}: o row {i} {row:?}"
                );
                assert!(!out.lse[i].is_nan(), "{name}: lse row {i}");
            }
        }
        for st in [
            Stat::FirstKeyMass,
            Stat::MeanEntropy,
            Stat::RowMassMean,
            Stat::QAbsMean,
        ] {
            assert!(
                stat(&out, 0, st).is_nan(),
                "{name}: {} = {}",
                st.name(),
                stat(&out, 0, st)
            );
        }
        assert!(
            out.key_mass.iter().all(|x| x.is_nan()),
            "{name}: key_mass {:?}",
            out.key_mass
        );
        for st in [Stat::MaxScore, Stat::QAbsMax, Stat::KAbsMax] {
            assert!(
                stat(&out, 0, st).is_finite(),
                "{name}: {} = {}",
                st.name(),
                stat(&out, 0, st)
            );
        }
    }
}
