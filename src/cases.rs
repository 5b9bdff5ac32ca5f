//! Deterministic inputs for tests, benches and tools: the same seed gives the same tensors on
//! every machine, so a failing case can be named by its problem and seed alone.

use crate::contract::{
    DType, HostInputs, HostTensor, KvSeqs, Layout, Layouts, Params, Problem, QuerySeqs, SeqIndices,
    Sequences, Shape, Strides, TensorName, Variant,
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
    let dims = |t| problem.tensor_dims(t);
    let (q, lq) = relayout(&inputs.q, &inputs.layouts.q, dims(TensorName::Q));
    let (k, lk) = relayout(&inputs.k, &inputs.layouts.k, dims(TensorName::K));
    let (v, lv) = relayout(&inputs.v, &inputs.layouts.v, dims(TensorName::V));
    let (_, lo) = relayout(&inputs.q, &inputs.layouts.q, dims(TensorName::O));
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
        problem.mask.label(),
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
    if !problem.seqs.is_dense() {
        l.push_str(&format!("/{}", problem.seqs.label()));
    }
    l
}

/// How the keys of an engine-shaped case are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvStorage {
    /// `[B, Nk, Hkv, d]`, every sequence the same length.
    Dense,
    /// `[B, capacity, Hkv, d]` with `seqlens_k`: a cache `spare` slots longer than the
    /// longest sequence, every slot past a sequence's length NaN.
    DenseWithLens {
        /// Slots beyond the longest sequence.
        spare: usize,
    },
    /// `[total_k, Hkv, d]` with `cu_seqlens_k`.
    Packed,
    /// `[pages, page_size, Hkv, d]` with `block_table` and `seqlens_k`: each sequence's pages
    /// drawn as a random permutation of the physical pages, `spare_pages` pages that no
    /// sequence uses, every slot outside a sequence NaN and every block-table entry past a
    /// sequence's pages −1.
    Paged {
        /// Tokens per page.
        page_size: usize,
        /// Pages no sequence uses.
        spare_pages: usize,
    },
}

/// An engine-shaped batch: each sequence's query and key lengths and the storage of Q and
/// K/V. Dense Q needs every `q_lens` equal, dense K/V every `kv_lens` equal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeqCase {
    /// Nq_b of each sequence.
    pub q_lens: Vec<usize>,
    /// Nk_b of each sequence.
    pub kv_lens: Vec<usize>,
    /// Q packed (`cu_seqlens_q`) rather than dense.
    pub packed_q: bool,
    /// How K and V are stored.
    pub kv: KvStorage,
}

impl SeqCase {
    /// A short label: `q[3,1]k[9,4]/packed-q/paged16`.
    pub fn label(&self) -> String {
        let list = |v: &[usize]| {
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let storage = match self.kv {
            KvStorage::Dense => "dense-k".to_string(),
            KvStorage::DenseWithLens { spare } => format!("lens-k+{spare}"),
            KvStorage::Packed => "packed-k".to_string(),
            KvStorage::Paged {
                page_size,
                spare_pages,
            } => format!("paged{page_size}+{spare_pages}"),
        };
        let q = if self.packed_q { "packed-q" } else { "dense-q" };
        format!(
            "q[{}]k[{}]/{q}/{storage}",
            list(&self.q_lens),
            list(&self.kv_lens)
        )
    }
}

/// The sequences of an engine-shaped case as B = 1 dense problems of their own lengths, with
/// the template's variant, mask, scalars and statistics, and their inputs: each sequence's Q,
/// K, V and gate drawn from its own stream of `spec.seed`, the per-head parameters shared.
/// [`engine_inputs`] lays exactly these tensors out as one call.
pub fn per_sequence(
    template: &Problem,
    case: &SeqCase,
    spec: &InputSpec,
) -> Vec<(Problem, HostInputs)> {
    let mut shared: Option<Params<HostTensor>> = None;
    case.q_lens
        .iter()
        .zip(&case.kv_lens)
        .enumerate()
        .map(|(b, (&nq, &nk))| {
            let problem = Problem {
                shape: Shape {
                    batch: 1,
                    q_len: nq,
                    kv_len: nk,
                    ..template.shape
                },
                seqs: Sequences::DENSE,
                ..*template
            };
            let mut inputs = random_inputs(
                &problem,
                &InputSpec {
                    seed: Rng::stream(spec.seed, 100 + b as u64).next_u64(),
                    ..*spec
                },
            );
            let own_gate = inputs.params.gate.take();
            let params = shared.get_or_insert_with(|| inputs.params.clone());
            inputs.params = Params {
                gate: own_gate,
                ..params.clone()
            };
            (problem, inputs)
        })
        .collect()
}

/// One engine-shaped call holding the sequences of [`per_sequence`]: Q dense or packed, K/V
/// as `case.kv` says, O and the gate in Q's layout, and the index tensors. The shape's
/// `q_len` and `kv_len` are the longest sequences (the cache capacity for
/// [`KvStorage::DenseWithLens`]).
///
/// A sequence may have no queries (packed Q) or no keys (any storage but dense): the call is
/// still valid as long as some sequence has both.
///
/// # Panics
/// When dense Q (or dense K/V) is asked for sequences of different lengths: the case itself
/// is malformed, which is a bug in the test that built it.
pub fn engine_inputs(
    template: &Problem,
    case: &SeqCase,
    spec: &InputSpec,
) -> (Problem, HostInputs) {
    let seqs = per_sequence(template, case, spec);
    let b = seqs.len();
    assert!(
        b > 0 && case.q_lens.len() == case.kv_lens.len(),
        "malformed case"
    );
    let s0 = template.shape;
    let (hq, hkv, d) = (s0.q_heads, s0.kv_heads, s0.head_dim);
    let max_q = *case.q_lens.iter().max().unwrap_or(&1);
    let max_k = *case.kv_lens.iter().max().unwrap_or(&1);
    let mut rng = Rng::stream(spec.seed, 4);
    let cumulative = |lens: &[usize]| -> Vec<i32> {
        std::iter::once(0)
            .chain(lens.iter().scan(0usize, |acc, &n| {
                *acc += n;
                Some(*acc as i32)
            }))
            .collect()
    };
    let mut indices = SeqIndices::none();

    // Q, O and the gate: dense [B, Nq, ...] or packed [total_q, ...]; in both cases the
    // sequences' rows one after the other.
    let q_seqs = if case.packed_q {
        indices.cu_seqlens_q = Some(cumulative(&case.q_lens));
        QuerySeqs::Packed {
            total: case.q_lens.iter().sum(),
        }
    } else {
        assert!(
            case.q_lens.iter().all(|&n| n == max_q),
            "dense Q needs equal query lengths"
        );
        QuerySeqs::Dense
    };
    // The sequences' tensors one after the other (the layout of dense and packed tensors
    // alike).
    let concat = |parts: Vec<&HostTensor>| -> Option<HostTensor> {
        let dtype = parts.first()?.dtype();
        let values: Vec<f64> = parts.iter().flat_map(|t| t.to_f64_vec()).collect();
        Some(HostTensor::from_f64(dtype, &values))
    };
    let joined = |get: fn(&HostInputs) -> &HostTensor| {
        concat(seqs.iter().map(|(_, i)| get(i)).collect())
            .unwrap_or_else(|| HostTensor::filled(template.dtype, 0, 0.0))
    };
    let q = joined(|i| &i.q);
    let gate = concat(
        seqs.iter()
            .filter_map(|(_, i)| i.params.gate.as_ref())
            .collect(),
    );

    // K and V.
    let (kv_seqs, kv_len, k, v) = match case.kv {
        KvStorage::Dense => {
            assert!(
                case.kv_lens.iter().all(|&n| n == max_k),
                "dense K/V needs equal key lengths"
            );
            (KvSeqs::Dense, max_k, joined(|i| &i.k), joined(|i| &i.v))
        }
        KvStorage::Packed => {
            indices.cu_seqlens_k = Some(cumulative(&case.kv_lens));
            (
                KvSeqs::Packed {
                    total: case.kv_lens.iter().sum(),
                },
                max_k,
                joined(|i| &i.k),
                joined(|i| &i.v),
            )
        }
        KvStorage::DenseWithLens { spare } => {
            let capacity = max_k + spare;
            let row = hkv * d;
            let mut k = HostTensor::filled(template.dtype, b * capacity * row, f64::NAN);
            let mut v = k.clone();
            for (bi, (_, inputs)) in seqs.iter().enumerate() {
                for (dst, src) in [(&mut k, &inputs.k), (&mut v, &inputs.v)] {
                    for (x, value) in src.to_f64_vec().into_iter().enumerate() {
                        dst.set(bi * capacity * row + x, value);
                    }
                }
            }
            indices.seqlens_k = Some(case.kv_lens.iter().map(|&n| n as i32).collect());
            (KvSeqs::DenseWithLens, capacity, k, v)
        }
        KvStorage::Paged {
            page_size,
            spare_pages,
        } => {
            let used: Vec<usize> = case
                .kv_lens
                .iter()
                .map(|&n| n.div_ceil(page_size))
                .collect();
            let max_pages = *used.iter().max().unwrap_or(&1);
            let pages = used.iter().sum::<usize>() + spare_pages;
            // A random permutation of the physical pages (Fisher-Yates), handed out in turn.
            let mut order: Vec<usize> = (0..pages).collect();
            for i in (1..pages).rev() {
                order.swap(i, rng.below(i + 1));
            }
            let row = hkv * d;
            let mut k = HostTensor::filled(template.dtype, pages * page_size * row, f64::NAN);
            let mut v = k.clone();
            let mut table = vec![-1i32; b * max_pages];
            let mut next = order.into_iter();
            for (bi, (_, inputs)) in seqs.iter().enumerate() {
                for p in 0..used[bi] {
                    let physical = next.next().unwrap_or(0);
                    table[bi * max_pages + p] = physical as i32;
                    for slot in 0..page_size {
                        let j = p * page_size + slot;
                        if j >= case.kv_lens[bi] {
                            break;
                        }
                        for x in 0..row {
                            let at = (physical * page_size + slot) * row + x;
                            k.set(at, inputs.k.get(j * row + x).unwrap_or(f64::NAN));
                            v.set(at, inputs.v.get(j * row + x).unwrap_or(f64::NAN));
                        }
                    }
                }
            }
            indices.seqlens_k = Some(case.kv_lens.iter().map(|&n| n as i32).collect());
            indices.block_table = Some(table);
            (
                KvSeqs::Paged {
                    pages,
                    page_size,
                    max_pages,
                },
                max_k,
                k,
                v,
            )
        }
    };

    let problem = Problem {
        shape: Shape::new(b, hq, hkv, max_q, kv_len, d),
        seqs: Sequences {
            q: q_seqs,
            kv: kv_seqs,
        },
        ..*template
    };
    let params = Params {
        gate,
        ..seqs[0].1.params.clone()
    };
    let inputs = HostInputs::dense(&problem, q, k, v)
        .with_params(params)
        .with_indices(indices);
    (problem, inputs)
}

/// The same inputs with the gate z given as a view: the second half of a tensor twice as
/// wide, as Qwen3-Next's q projection holds it (`[tokens, Hq, 2·w]`, z at channel offset w),
/// the first half NaN so that a kernel that reads the wrong half fails.
pub fn gate_as_view(problem: &Problem, inputs: &HostInputs) -> HostInputs {
    let (Some(dims), Some(gate)) = (problem.gate_dims(), inputs.params.gate.as_ref()) else {
        return inputs.clone();
    };
    let [outer, tokens, heads, width] = dims;
    let dense = Layout::contiguous(tokens, heads, width);
    let wide = Layout {
        offset: width as u64,
        strides: Strides {
            batch: (tokens * heads * 2 * width) as u64,
            seq: (heads * 2 * width) as u64,
            head: (2 * width) as u64,
            channel: 1,
        },
    };
    let mut out = HostTensor::filled(gate.dtype(), outer * tokens * heads * 2 * width, f64::NAN);
    for o in 0..outer {
        for t in 0..tokens {
            for h in 0..heads {
                for c in 0..width {
                    let x = gate.get(dense.index(o, t, h, c)).unwrap_or(f64::NAN);
                    out.set(wide.index(o, t, h, c), x);
                }
            }
        }
    }
    let mut viewed = inputs.clone();
    viewed.params.gate = Some(out);
    viewed.layouts.params.gate = Some(wide);
    viewed
}
