//! Deterministic inputs for tests, benches and tools: the same seed gives the same tensors on
//! every machine, so a failing case can be named by its problem and seed alone.

use crate::contract::{
    DType, HostInputs, HostTensor, Layout, Layouts, Params, Problem, Strides, TensorName, Variant,
};

/// SplitMix64: small, fast and good enough for test data.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// Independent stream `k` of a seed, so that adding draws to one part of a case does not
    /// change the others.
    pub fn stream(seed: u64, k: u64) -> Rng {
        Rng(seed ^ k.wrapping_mul(0xD1B5_4A32_D192_ED03))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        lo + (hi - lo) * unit
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// How to draw the inputs of a case.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InputSpec {
    /// Seed of every draw.
    pub seed: u64,
    /// Plant massive activations, as the paper measures them in real models: one channel of
    /// key 0 and of some queries at magnitudes up to 3000, and key 0's value near zero, so that
    /// heads sink onto key 0.
    pub massive: bool,
    /// Sink logits θ are drawn uniformly in ±this (llama.cpp draws them in ±10 so that a wrong
    /// sink fails loudly).
    pub sink_range: f64,
}

impl Default for InputSpec {
    fn default() -> Self {
        InputSpec {
            seed: 0,
            massive: false,
            sink_range: 10.0,
        }
    }
}

/// Largest magnitude planted by [`InputSpec::massive`].
pub const MASSIVE_MAGNITUDE: f64 = 3000.0;

/// Dense inputs for `problem`, with every parameter its variant needs.
pub fn random_inputs(problem: &Problem, spec: &InputSpec) -> HostInputs {
    let s = &problem.shape;
    let d = s.head_dim;
    let mut rng = Rng::new(spec.seed);
    let mut draw =
        |n: usize, lo: f64, hi: f64| -> Vec<f64> { (0..n).map(|_| rng.uniform(lo, hi)).collect() };
    let mut q = draw(s.batch * s.q_len * s.q_heads * d, -1.0, 1.0);
    let mut k = draw(s.batch * s.kv_len * s.kv_heads * d, -1.0, 1.0);
    let mut v = draw(s.batch * s.kv_len * s.kv_heads * d, -1.0, 1.0);

    if spec.massive {
        let mut rng = Rng::stream(spec.seed, 1);
        let channel = rng.below(d);
        for b in 0..s.batch {
            for g in 0..s.kv_heads {
                let at = ((b * s.kv_len) * s.kv_heads + g) * d;
                k[at + channel] = rng.uniform(0.3, 1.0) * MASSIVE_MAGNITUDE;
                for c in 0..d {
                    v[at + c] *= 1e-3;
                }
            }
            for i in 0..s.q_len {
                for h in 0..s.q_heads {
                    if rng.below(2) == 0 {
                        let at = ((b * s.q_len + i) * s.q_heads + h) * d;
                        q[at + channel] = rng.uniform(0.3, 1.0) * MASSIVE_MAGNITUDE;
                    }
                }
            }
        }
    }

    let mut rng = Rng::stream(spec.seed, 2);
    let mut param = |dtype: DType, n: usize, lo: f64, hi: f64| -> HostTensor {
        HostTensor::from_f64(
            dtype,
            &(0..n).map(|_| rng.uniform(lo, hi)).collect::<Vec<_>>(),
        )
    };
    let per_head = s.q_heads * d;
    let mut params = Params::none();
    for name in problem.variant.params() {
        match name {
            // k′ drawn wide enough that the sink's score spans a few units either way.
            TensorName::KSink => params.k_sink = Some(param(DType::F32, per_head, -3.0, 3.0)),
            TensorName::VSink => params.v_sink = Some(param(DType::F32, per_head, -1.0, 1.0)),
            TensorName::VBias => params.v_bias = Some(param(DType::F32, per_head, -1.0, 1.0)),
            TensorName::SinkLogits => {
                params.sink_logits = Some(param(
                    DType::F32,
                    s.q_heads,
                    -spec.sink_range,
                    spec.sink_range,
                ))
            }
            TensorName::Gate => {
                params.gate = Some(param(problem.dtype, problem.gate_len(), -3.0, 3.0))
            }
            _ => {}
        }
    }

    let dt = problem.dtype;
    HostInputs::dense(
        problem,
        HostTensor::from_f64(dt, &q),
        HostTensor::from_f64(dt, &k),
        HostTensor::from_f64(dt, &v),
    )
    .with_params(params)
}

/// The same inputs as views into larger buffers, as an engine's KV cache holds them: every
/// dimension padded, a non-zero offset, and every element outside the views set to NaN so
/// that a kernel reading past its view fails parity.
pub fn as_views(problem: &Problem, inputs: &HostInputs, seed: u64) -> HostInputs {
    let s = &problem.shape;
    let mut rng = Rng::stream(seed, 3);
    let mut relayout = |t: &HostTensor, from: &Layout, dims: [usize; 4]| -> (HostTensor, Layout) {
        let [nb, nn, nh, d] = dims;
        let pad_c = 8 * rng.below(3) as u64;
        let head = d as u64 + pad_c;
        let seq = nh as u64 * head + rng.below(5) as u64;
        let batch = nn as u64 * seq + 1 + rng.below(7) as u64;
        let layout = Layout {
            offset: 3 + rng.below(29) as u64,
            strides: Strides {
                batch,
                seq,
                head,
                channel: 1,
            },
        };
        let len = layout.reach(dims).unwrap_or(0) as usize + rng.below(17);
        let mut out = HostTensor::filled(t.dtype(), len, f64::NAN);
        for b in 0..nb {
            for n in 0..nn {
                for h in 0..nh {
                    for c in 0..d {
                        let x = t.get(from.index(b, n, h, c)).unwrap_or(f64::NAN);
                        out.set(layout.index(b, n, h, c), x);
                    }
                }
            }
        }
        (out, layout)
    };
    let (q, lq) = relayout(&inputs.q, &inputs.layouts.q, s.dims(TensorName::Q));
    let (k, lk) = relayout(&inputs.k, &inputs.layouts.k, s.dims(TensorName::K));
    let (v, lv) = relayout(&inputs.v, &inputs.layouts.v, s.dims(TensorName::V));
    let (_, lo) = relayout(&inputs.q, &inputs.layouts.q, s.dims(TensorName::O));
    HostInputs {
        q,
        k,
        v,
        layouts: Layouts {
            q: lq,
            k: lk,
            v: lv,
            o: lo,
            params: inputs.layouts.params,
        },
        params: inputs.params.clone(),
        indices: inputs.indices.clone(),
    }
}

/// A short label for a case, usable as a filter key: `KvSink/bf16/causal/b2h8g2/q113k113/d64`.
pub fn label(problem: &Problem) -> String {
    let s = &problem.shape;
    let variant = match problem.variant {
        Variant::ContextScale { gate, granularity } => {
            format!("ContextScale[{gate:?},{granularity:?}]")
        }
        Variant::Sigmoid { bias: Some(b) } => format!("Sigmoid[{b}]"),
        Variant::ClippedSoftmax { zeta, gamma } => format!("ClippedSoftmax[{zeta},{gamma}]"),
        v => v.name().to_string(),
    };
    let mut l = format!(
        "{variant}/{}/{}/b{}h{}g{}/q{}k{}/d{}",
        problem.dtype,
        problem.mask.name().to_lowercase(),
        s.batch,
        s.q_heads,
        s.kv_heads,
        s.q_len,
        s.kv_len,
        s.head_dim
    );
    if let Some(c) = problem.softcap {
        l.push_str(&format!("/cap{c}"));
    }
    if problem.stats.heads() {
        l.push_str(&format!("/{}", problem.stats.name()));
    }
    l
}
