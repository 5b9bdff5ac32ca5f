//! The CPU reference: the contract's mathematics written out literally, with materialised
//! scores, in f64. It also produces the parity rule's same-precision baseline B_t by running
//! the same code in f32 with the roundings a low-precision flash kernel cannot avoid.
//!
//! Written to be obviously right, not fast: one row at a time, every weight computed from its
//! definition.

use std::ops::{Add, AddAssign, Div, Mul, Neg, Sub};

use crate::contract::{
    Backend, DType, HostInputs, HostOutputs, HostTensor, Layout, Problem, Result, SeqMap, Stat,
    TensorName, Validated, Variant,
};

/// The reference outputs in f64.
#[derive(Clone, Debug, PartialEq)]
pub struct ExactOutputs {
    /// O, dense in Q's sequence layout (`[B, Nq, Hq, d]` or `[total_q, Hq, d]`).
    pub o: Vec<f64>,
    /// LSE `[B, Hq, Nq]` (or `[Hq, total_q]` for packed Q).
    pub lse: Vec<f64>,
    /// Statistics `[B, Hq, Stat::COUNT]`; empty when the level is `Off`.
    pub stats: Vec<f64>,
    /// Key mass ([`Problem::key_mass_len`](crate::Problem::key_mass_len)); empty unless the
    /// level is `HeadsAndKeys`.
    pub key_mass: Vec<f64>,
    /// Per (batch, head): how far max |q| and max |k| stand above the largest value in any
    /// other channel. The parity rule checks an argmax channel only where this margin exceeds
    /// the tolerance. Empty when the level is `Off`.
    pub argmax_margins: Vec<[f64; 2]>,
}

/// The CPU reference as a [`Backend`]: f64 arithmetic, outputs rounded once at the end.
#[derive(Clone, Copy, Debug, Default)]
pub struct Reference;

impl Backend for Reference {
    fn name(&self) -> String {
        "reference (f64, CPU)".to_string()
    }

    fn forward(&self, problem: &Problem, inputs: &HostInputs) -> Result<HostOutputs> {
        let exact = forward(problem, inputs)?;
        let to_f32 = |x: &Vec<f64>| x.iter().map(|&v| v as f32).collect::<Vec<f32>>();
        Ok(HostOutputs {
            o: HostTensor::from_f64(problem.dtype, &exact.o),
            lse: to_f32(&exact.lse),
            stats: problem.stats.heads().then(|| to_f32(&exact.stats)),
            key_mass: problem.stats.keys().then(|| to_f32(&exact.key_mass)),
        })
    }
}

/// Runs the reference in f64.
///
/// # Errors
/// Every refusal of [`validate`](crate::validate).
pub fn forward(problem: &Problem, inputs: &HostInputs) -> Result<ExactOutputs> {
    let checked = inputs.validate(problem)?;
    let raw = compute::<f64>(&checked, inputs, None)?;
    Ok(ExactOutputs {
        o: raw.o,
        lse: raw.lse,
        stats: raw.stats,
        key_mass: raw.key_mass,
        argmax_margins: raw.margins,
    })
}

/// Runs the parity rule's baseline B_t: inputs in their dtype, scores and accumulation in f32,
/// the weights rounded to the dtype before P·V, the output rounded to the dtype.
/// For f32 inputs this is the reference evaluated in f32 arithmetic.
///
/// # Errors
/// Every refusal of [`validate`](crate::validate).
pub fn baseline(problem: &Problem, inputs: &HostInputs) -> Result<HostOutputs> {
    let checked = inputs.validate(problem)?;
    let raw = compute::<f32>(&checked, inputs, Some(problem.dtype))?;
    Ok(HostOutputs {
        o: HostTensor::from_f64(
            problem.dtype,
            &raw.o.iter().map(|&x| x as f64).collect::<Vec<_>>(),
        ),
        lse: raw.lse,
        stats: problem.stats.heads().then_some(raw.stats),
        key_mass: problem.stats.keys().then_some(raw.key_mass),
    })
}

/// The arithmetic the reference is written in: f64 for the reference, f32 for the baseline.
trait Real:
    Copy
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
{
    const ZERO: Self;
    const ONE: Self;
    const NEG_INFINITY: Self;
    fn of(x: f64) -> Self;
    fn to_f64(self) -> f64;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn tanh(self) -> Self;
    fn sqrt(self) -> Self;
    fn abs(self) -> Self;
    fn max(self, other: Self) -> Self;
    fn min(self, other: Self) -> Self;
}

macro_rules! impl_real {
    ($t:ty) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const NEG_INFINITY: Self = <$t>::NEG_INFINITY;
            fn of(x: f64) -> Self {
                x as $t
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            fn max(self, other: Self) -> Self {
                <$t>::max(self, other)
            }
            fn min(self, other: Self) -> Self {
                <$t>::min(self, other)
            }
        }
    };
}
impl_real!(f64);
impl_real!(f32);

/// Outputs of [`compute`] in its arithmetic.
struct Raw<R> {
    o: Vec<R>,
    lse: Vec<R>,
    stats: Vec<R>,
    key_mass: Vec<R>,
    margins: Vec<[f64; 2]>,
}

fn to_real<R: Real>(t: &HostTensor) -> Vec<R> {
    t.to_f64_vec().into_iter().map(R::of).collect()
}

/// What one query row produces.
struct Row<R> {
    out: Vec<R>,
    lse: R,
    /// Whether the row sees a key or a sink, and so enters the statistics.
    counted: bool,
    /// Probability of each visible key (the distribution the statistics describe).
    probs: Vec<R>,
    /// The sink's share in that distribution (0 where the sink is no outcome of it).
    sink_share: R,
    /// The `sink_mass` statistic of this row (1 − S for ContextBias, else `sink_share`).
    sink_mass: R,
    /// Σ_j weight on real keys.
    row_mass: R,
    /// The applied gate factors of this row (ContextScale only).
    gammas: Vec<R>,
}

/// The inputs of one row.
struct RowInputs<'a, R> {
    /// s_ij of the visible keys, in key order.
    scores: &'a [R],
    /// v_j of the visible keys.
    values: &'a [&'a [R]],
    /// The sink's logit: s′ for ContextBias/KvSink, θ for LogitSink, 0 for Softmax1.
    sink_logit: Option<R>,
    /// v′ of ContextBias/KvSink, or the bias of ValueBias.
    v_param: Option<&'a [R]>,
    /// z for this row (1 or d values) for ContextScale.
    gate_z: Option<&'a [R]>,
}

fn sigmoid<R: Real>(x: R) -> R {
    R::ONE / (R::ONE + (-x).exp())
}

/// ln sigmoid(x), without overflow for either sign.
fn log_sigmoid<R: Real>(x: R) -> R {
    if x >= R::ZERO {
        -(R::ONE + (-x).exp()).ln()
    } else {
        x - (R::ONE + x.exp()).ln()
    }
}

/// −Σ p ln p over the positive probabilities (0 ln 0 = 0); NaN if any probability is NaN.
fn entropy<R: Real>(probs: impl IntoIterator<Item = R>) -> R {
    let mut h = R::ZERO;
    for p in probs {
        if p > R::ZERO {
            h += -(p * p.ln());
        } else if p.partial_cmp(&R::ZERO).is_none() {
            return R::of(f64::NAN);
        }
    }
    h
}

/// x clipped to [0, 1]; NaN stays NaN.
fn clip01<R: Real>(x: R) -> R {
    if x < R::ZERO {
        R::ZERO
    } else if x > R::ONE {
        R::ONE
    } else {
        x
    }
}

/// `acc += w · v` with `w` rounded as the baseline requires before P·V.
fn accumulate<R: Real>(acc: &mut [R], w: R, v: &[R], weight_dtype: Option<DType>) {
    let w = match weight_dtype {
        Some(dt) => R::of(dt.round(w.to_f64())),
        None => w,
    };
    for (a, &x) in acc.iter_mut().zip(v) {
        *a += w * x;
    }
}

fn row<R: Real>(
    variant: &Variant,
    sigmoid_bias: R,
    x: &RowInputs<'_, R>,
    d: usize,
    weight_dtype: Option<DType>,
) -> Row<R> {
    let has_keys = !x.scores.is_empty();
    let mut out = vec![R::ZERO; d];
    let mut row = Row {
        out: Vec::new(),
        lse: R::NEG_INFINITY,
        counted: has_keys || variant.has_sink(),
        probs: vec![R::ZERO; x.scores.len()],
        sink_share: R::ZERO,
        sink_mass: R::ZERO,
        row_mass: R::ZERO,
        gammas: Vec::new(),
    };

    if let Variant::Sigmoid { .. } = variant {
        // The weights are applied as they are; the LSE and the distribution the statistics
        // describe are taken in the log domain, since Σ sigmoid underflows f32 once every score
        // is below about −87 (massive activations make such rows common).
        let logits: Vec<R> = x.scores.iter().map(|&s| s + sigmoid_bias).collect();
        let mut mass = R::ZERO;
        for (&z, v) in logits.iter().zip(x.values) {
            let w = sigmoid(z);
            accumulate(&mut out, w, v, weight_dtype);
            mass += w;
        }
        if has_keys {
            let log_w: Vec<R> = logits.iter().map(|&z| log_sigmoid(z)).collect();
            let m = log_w.iter().fold(R::NEG_INFINITY, |m, &l| m.max(l));
            let mut sum = R::ZERO;
            for &l in &log_w {
                sum += (l - m).exp();
            }
            row.lse = m + sum.ln();
            for (p, &l) in row.probs.iter_mut().zip(&log_w) {
                *p = (l - row.lse).exp();
            }
        }
        row.row_mass = mass;
        row.out = out;
        return row;
    }

    // The softmax family. Sinks of (d), (g), (h) sit in the denominator; (c)'s does not.
    let denominator_sink = match variant {
        Variant::KvSink | Variant::LogitSink | Variant::Softmax1 => x.sink_logit,
        _ => None,
    };
    let key_max = x
        .scores
        .iter()
        .fold(R::NEG_INFINITY, |m, &s| if s > m { s } else { m });
    if has_keys || denominator_sink.is_some() {
        let m = match denominator_sink {
            Some(t) if t > key_max || !has_keys => t,
            _ => key_max,
        };
        let e: Vec<R> = x.scores.iter().map(|&s| (s - m).exp()).collect();
        let e_sink = denominator_sink.map_or(R::ZERO, |t| (t - m).exp());
        let mut denom = e_sink;
        for &ej in &e {
            denom += ej;
        }
        row.lse = m + denom.ln();
        let probs: Vec<R> = e.iter().map(|&ej| ej / denom).collect();
        row.sink_share = e_sink / denom;
        row.sink_mass = row.sink_share;

        let weights: Vec<R> = match *variant {
            Variant::ClippedSoftmax { zeta, gamma } => {
                let (zeta, gamma) = (R::of(zeta as f64), R::of(gamma as f64));
                probs
                    .iter()
                    .map(|&p| clip01((zeta - gamma) * p + gamma))
                    .collect()
            }
            _ => probs.clone(),
        };
        let mut mass = R::ZERO;
        for (&w, v) in weights.iter().zip(x.values) {
            accumulate(&mut out, w, v, weight_dtype);
            mass += w;
        }
        row.row_mass = mass;
        row.probs = match variant {
            // A row whose clipped weights are all 0 has an all-zero distribution; a NaN mass
            // (NaN inputs) stays NaN.
            Variant::ClippedSoftmax { .. } if mass == R::ZERO => vec![R::ZERO; weights.len()],
            Variant::ClippedSoftmax { .. } => weights.iter().map(|&w| w / mass).collect(),
            _ => probs,
        };
        if let (Variant::KvSink, Some(v_sink)) = (variant, x.v_param) {
            for (a, &vs) in out.iter_mut().zip(v_sink) {
                *a += row.sink_share * vs;
            }
        }
    }

    match variant {
        Variant::ValueBias => {
            for (a, &b) in out.iter_mut().zip(x.v_param.unwrap_or(&[])) {
                *a += b;
            }
        }
        Variant::ContextBias => {
            // 1 − S: the share the sink would take next to the keys; 1 for a row with no key.
            let s_sink = x.sink_logit.unwrap_or(R::ZERO);
            let m = if has_keys && key_max > s_sink {
                key_max
            } else {
                s_sink
            };
            let mut denom = (s_sink - m).exp();
            for &s in x.scores {
                denom += (s - m).exp();
            }
            let one_minus_s = (s_sink - m).exp() / denom;
            for (a, &vs) in out.iter_mut().zip(x.v_param.unwrap_or(&[])) {
                *a += one_minus_s * vs;
            }
            row.sink_mass = one_minus_s;
        }
        Variant::ContextScale { gate, .. } => {
            let z = x.gate_z.unwrap_or(&[]);
            row.gammas = z.iter().map(|&zz| gate_apply(*gate, zz)).collect();
            for (c, a) in out.iter_mut().enumerate() {
                // One factor per head, or one per channel.
                let g = if row.gammas.len() == 1 {
                    row.gammas[0]
                } else {
                    row.gammas[c]
                };
                *a = *a * g;
            }
        }
        _ => {}
    }
    row.out = out;
    row
}

fn gate_apply<R: Real>(gate: crate::contract::Gate, z: R) -> R {
    use crate::contract::Gate;
    match gate {
        Gate::TwoSigmoid => R::of(2.0) * sigmoid(z),
        Gate::Sigmoid => sigmoid(z),
        Gate::Identity => z,
    }
}

/// max |x|, mean |x|, the lowest channel holding the max, and the margin of that max over every
/// other channel's max, for the `count` rows of `d` channels starting at `rows(i)`. Over no
/// rows at all (a sequence without queries or keys) every value is NaN.
fn channel_stats<R: Real>(
    data: &[R],
    count: usize,
    d: usize,
    rows: impl Fn(usize) -> usize,
) -> (R, R, R, f64) {
    if count == 0 {
        let nan = R::of(f64::NAN);
        return (nan, nan, nan, f64::NAN);
    }
    let mut per_channel = vec![R::ZERO; d];
    let mut sum = R::ZERO;
    for i in 0..count {
        let base = rows(i);
        for (c, m) in per_channel.iter_mut().enumerate() {
            let a = data[base + c].abs();
            *m = m.max(a);
            sum += a;
        }
    }
    let mut arg = 0;
    for c in 1..d {
        if per_channel[c] > per_channel[arg] {
            arg = c;
        }
    }
    let others = (0..d)
        .filter(|&c| c != arg)
        .map(|c| per_channel[c].to_f64())
        .fold(0.0, f64::max);
    let max = per_channel[arg];
    (
        max,
        sum / R::of((count * d) as f64),
        R::of(arg as f64),
        max.to_f64() - others,
    )
}

/// The layout of a parameter: the view the caller gave, or the dense tensor of `dims`.
fn param_layout(given: Option<&Layout>, dims: [usize; 4]) -> Layout {
    let [_, tokens, heads, width] = dims;
    given
        .copied()
        .unwrap_or_else(|| Layout::contiguous(tokens, heads, width))
}

/// The reference computation in arithmetic `R`, one sequence at a time; `weight_dtype` rounds
/// the weights before P·V (the baseline) or is `None` (the reference).
fn compute<R: Real>(
    checked: &Validated,
    inputs: &HostInputs,
    weight_dtype: Option<DType>,
) -> Result<Raw<R>> {
    let problem = checked.problem();
    let s = checked.shape();
    let layouts = checked.layouts();
    let seqs = SeqMap::new(s, &problem.seqs, &inputs.indices)?;
    let variant = &problem.variant;
    let (d, hq) = (s.head_dim, s.q_heads);
    let scale = R::of(checked.scale() as f64);
    let softcap = checked.softcap().map(|c| R::of(c as f64));

    let q: Vec<R> = to_real(&inputs.q);
    let k: Vec<R> = to_real(&inputs.k);
    let v: Vec<R> = to_real(&inputs.v);
    let param = |t: Option<&HostTensor>| t.map(to_real::<R>);
    let k_sink = param(inputs.params.k_sink.as_ref());
    let v_param = param(inputs.params.v_sink.as_ref()).or(param(inputs.params.v_bias.as_ref()));
    let theta = param(inputs.params.sink_logits.as_ref());
    let gate = param(inputs.params.gate.as_ref());
    let per_head = [1, 1, hq, d];
    let k_sink_layout = param_layout(layouts.params.k_sink.as_ref(), per_head);
    let v_param_layout = param_layout(
        layouts
            .params
            .v_sink
            .as_ref()
            .or(layouts.params.v_bias.as_ref()),
        per_head,
    );
    let theta_layout = param_layout(layouts.params.sink_logits.as_ref(), [1, 1, hq, 1]);
    let gate_dims = problem.gate_dims().unwrap_or([1, 1, 1, 1]);
    let gate_width = gate_dims[3];
    let gate_layout = param_layout(layouts.params.gate.as_ref(), gate_dims);
    let [_, o_tokens, _, _] = problem.tensor_dims(TensorName::O);
    let o_layout = Layout::contiguous(o_tokens, hq, d);

    let stats_on = problem.stats.heads();
    let mut raw = Raw {
        o: vec![R::ZERO; problem.q_tokens() * hq * d],
        lse: vec![R::ZERO; problem.lse_len()],
        stats: if stats_on {
            vec![R::ZERO; s.heads_total() * Stat::COUNT]
        } else {
            Vec::new()
        },
        key_mass: if problem.stats.keys() {
            vec![R::ZERO; problem.key_mass_len()]
        } else {
            Vec::new()
        },
        margins: Vec::new(),
    };

    let score = |qi: &[R], kj: &[R]| {
        let mut dot = R::ZERO;
        for (&a, &b) in qi.iter().zip(kj) {
            dot += a * b;
        }
        let x = scale * dot;
        match softcap {
            Some(c) => c * (x / c).tanh(),
            None => x,
        }
    };

    for (b, span) in seqs.spans().iter().enumerate() {
        let (nq, nk) = (span.q_len, span.kv_len);
        let sigmoid_bias = R::of(checked.sigmoid_bias_for(nk) as f64);
        let q_at = |i: usize, h: usize| {
            let (outer, token) = seqs.q_pos(b, i);
            layouts.q.index(outer, token, h, 0)
        };
        for h in 0..hq {
            let g = s.kv_head(h);
            let head = b * hq + h;
            let k_at = |j: usize| {
                let (outer, token) = seqs.kv_pos(b, j);
                layouts.k.index(outer, token, g, 0)
            };
            let v_at = |j: usize| {
                let (outer, token) = seqs.kv_pos(b, j);
                layouts.v.index(outer, token, g, 0)
            };
            let k_row = |j: usize| &k[k_at(j)..][..d];
            let v_row = |j: usize| &v[v_at(j)..][..d];

            let mut counted = 0usize;
            let (mut first, mut sink_mass, mut ent, mut row_mass) =
                (R::ZERO, R::ZERO, R::ZERO, R::ZERO);
            let mut max_score = R::NEG_INFINITY;
            let (mut g_min, mut g_max, mut g_sum, mut g_count) =
                (R::of(f64::INFINITY), R::NEG_INFINITY, R::ZERO, 0usize);

            for i in 0..nq {
                let qi = &q[q_at(i, h)..][..d];
                let visible = problem.mask.key_range(i, nq, nk);
                let scores: Vec<R> = visible.clone().map(|j| score(qi, k_row(j))).collect();
                let values: Vec<&[R]> = visible.clone().map(v_row).collect();
                let sink_logit = match variant {
                    Variant::ContextBias | Variant::KvSink => k_sink
                        .as_ref()
                        .map(|ks| score(qi, &ks[k_sink_layout.index(0, 0, h, 0)..][..d])),
                    Variant::LogitSink => theta.as_ref().map(|t| t[theta_layout.index(0, 0, h, 0)]),
                    Variant::Softmax1 => Some(R::ZERO),
                    _ => None,
                };
                let gate_z = gate.as_ref().map(|z| {
                    let (outer, token) = seqs.q_pos(b, i);
                    &z[gate_layout.index(outer, token, h, 0)..][..gate_width]
                });
                let r = row(
                    variant,
                    sigmoid_bias,
                    &RowInputs {
                        scores: &scores,
                        values: &values,
                        sink_logit,
                        v_param: v_param
                            .as_ref()
                            .map(|p| &p[v_param_layout.index(0, 0, h, 0)..][..d]),
                        gate_z,
                    },
                    d,
                    weight_dtype,
                );
                let (outer, token) = seqs.q_pos(b, i);
                let o_start = o_layout.index(outer, token, h, 0);
                raw.o[o_start..o_start + d].copy_from_slice(&r.out);
                raw.lse[seqs.lse_index(b, h, i)] = r.lse;

                if !(stats_on && r.counted) {
                    continue;
                }
                counted += 1;
                if visible.start == 0 && !visible.is_empty() {
                    first += r.probs[0];
                }
                sink_mass += r.sink_mass;
                ent += entropy(r.probs.iter().copied().chain([r.sink_share]));
                row_mass += r.row_mass;
                for &sc in &scores {
                    max_score = max_score.max(sc);
                }
                for &gm in &r.gammas {
                    g_min = g_min.min(gm);
                    g_max = g_max.max(gm);
                    g_sum += gm;
                    g_count += 1;
                }
                if problem.stats.keys() {
                    for (j, &p) in visible.clone().zip(&r.probs) {
                        raw.key_mass[seqs.key_mass_index(b, h, j)] += p;
                    }
                }
            }
            if !stats_on {
                continue;
            }

            let n = R::of(counted as f64);
            let (q_max, q_mean, q_arg, q_margin) = channel_stats(&q, nq, d, |i| q_at(i, h));
            let (k_max, k_mean, k_arg, k_margin) = channel_stats(&k, nk, d, k_at);
            let (v_max, v_mean, _, _) = channel_stats(&v, nk, d, v_at);
            let norm = |x: &[R]| {
                let mut ss = R::ZERO;
                for &a in x {
                    ss += a * a;
                }
                ss.sqrt()
            };
            let mut norm_sum = R::ZERO;
            for j in 0..nk {
                norm_sum += norm(v_row(j));
            }
            let nan = R::of(f64::NAN);
            let v0_ratio = if nk > 0 {
                norm(v_row(0)) / (norm_sum / R::of(nk as f64))
            } else {
                nan
            };
            let (gate_min, gate_mean, gate_max) = if g_count > 0 {
                (g_min, g_sum / R::of(g_count as f64), g_max)
            } else {
                (nan, nan, nan)
            };

            let rec = &mut raw.stats[head * Stat::COUNT..][..Stat::COUNT];
            let mut put = |st: Stat, x: R| rec[st.index()] = x;
            put(Stat::FirstKeyMass, first / n);
            put(Stat::SinkMass, sink_mass / n);
            put(Stat::MaxScore, max_score);
            put(Stat::MeanEntropy, ent / n);
            put(Stat::QAbsMax, q_max);
            put(Stat::QAbsMean, q_mean);
            put(Stat::QArgmaxChannel, q_arg);
            put(Stat::KAbsMax, k_max);
            put(Stat::KAbsMean, k_mean);
            put(Stat::KArgmaxChannel, k_arg);
            put(Stat::VAbsMax, v_max);
            put(Stat::VAbsMean, v_mean);
            put(Stat::V0NormRatio, v0_ratio);
            put(Stat::GateMin, gate_min);
            put(Stat::GateMean, gate_mean);
            put(Stat::GateMax, gate_max);
            put(Stat::RowMassMean, row_mass / n);
            raw.margins.push([q_margin, k_margin]);
        }
    }
    Ok(raw)
}
