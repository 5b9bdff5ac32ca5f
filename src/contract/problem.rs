//! The problem description and the one validation every backend runs before any kernel.

use std::fmt;

use super::dtype::DType;
use super::error::{Error, Result};
use super::seqs::{KvSeqs, QuerySeqs, SeqIndices, Sequences, check_sequences};
use super::shape::{Dim, HEAD_DIM_MULTIPLE, Layout, Layouts, MAX_HEAD_DIM, Shape, TensorName};
use super::stats::{Stat, StatsLevel};
use super::variant::{GateGranularity, Params, Variant};

/// Which keys a query sees. All masks are aligned bottom-right per sequence, as in
/// FlashAttention >= 2.1: the diagonal of query i is key i + Nk − Nq.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Mask {
    /// Every key.
    #[default]
    None,
    /// Bottom-right causal: key j is visible to query i iff j ≤ i + (Nk − Nq).
    Causal,
    /// A sliding window (FlashAttention's `window_size`): key j is visible to query i iff
    /// i + Nk − Nq − left ≤ j ≤ i + Nk − Nq + right; a side that is `None` is unbounded.
    /// `Causal` is `right = Some(0)`; gpt-oss's 128-token window is `left = Some(127)` with
    /// `right = Some(0)`. Sinks are never masked by a window.
    Window {
        /// Keys visible before the diagonal.
        left: Option<usize>,
        /// Keys visible after the diagonal.
        right: Option<usize>,
    },
}

impl Mask {
    /// The mask of a window, in its simplest form: no bound is [`Mask::None`], only
    /// `right = 0` is [`Mask::Causal`].
    pub fn window(left: Option<usize>, right: Option<usize>) -> Mask {
        match (left, right) {
            (None, None) => Mask::None,
            (None, Some(0)) => Mask::Causal,
            (left, right) => Mask::Window { left, right },
        }
    }

    /// The window in FlashAttention's signed convention: −1 means unbounded.
    ///
    /// # Errors
    /// [`Error::Window`] for a bound below −1.
    pub fn from_signed(left: i64, right: i64) -> Result<Mask> {
        let side = |name: &'static str, value: i64| match value {
            -1 => Ok(None),
            v if v >= 0 => Ok(Some(v as usize)),
            v => Err(Error::Window {
                side: name,
                value: v,
            }),
        };
        Ok(Mask::window(side("left", left)?, side("right", right)?))
    }

    /// `(left, right)`: how far before and after the diagonal keys are visible.
    pub fn bounds(self) -> (Option<usize>, Option<usize>) {
        match self {
            Mask::None => (None, None),
            Mask::Causal => (None, Some(0)),
            Mask::Window { left, right } => (left, right),
        }
    }

    /// The keys visible to query `i` of a sequence of `q_len` queries and `kv_len` keys: always
    /// one contiguous range, possibly empty. The one definition of visibility.
    pub fn key_range(self, i: usize, q_len: usize, kv_len: usize) -> std::ops::Range<usize> {
        let diagonal = i as i64 + kv_len as i64 - q_len as i64;
        let (left, right) = self.bounds();
        let lo = left.map_or(0, |l| (diagonal - l as i64).max(0));
        let hi = right.map_or(kv_len as i64, |r| {
            (diagonal + r as i64 + 1).clamp(0, kv_len as i64)
        });
        let lo = lo.min(hi);
        lo as usize..hi as usize
    }

    /// The mask's name.
    pub fn name(self) -> &'static str {
        match self {
            Mask::None => "None",
            Mask::Causal => "Causal",
            Mask::Window { .. } => "Window",
        }
    }

    /// A short label usable as a filter key: `none`, `causal`, `window127,0`, `window-,4`.
    pub fn label(self) -> String {
        match self {
            Mask::Window { left, right } => {
                let side = |x: Option<usize>| x.map_or("-".to_string(), |v| v.to_string());
                format!("window{},{}", side(left), side(right))
            }
            m => m.name().to_lowercase(),
        }
    }
}

impl fmt::Display for Mask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())
    }
}

/// Everything that defines one attention call except the data.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Problem {
    /// Sizes.
    pub shape: Shape,
    /// dtype of Q, K, V, O and the gate z.
    pub dtype: DType,
    /// The attention form.
    pub variant: Variant,
    /// Which keys each query sees.
    pub mask: Mask,
    /// σ; `None` means 1/√d.
    pub scale: Option<f32>,
    /// Softcap c: s ← c·tanh(s/c); `None` for no softcap.
    pub softcap: Option<f32>,
    /// Which statistics to compute.
    pub stats: StatsLevel,
    /// How the B sequences are laid out ([`Sequences::DENSE`] unless an engine says otherwise).
    pub seqs: Sequences,
}

impl Problem {
    /// Plain softmax attention of `shape` in `dtype`, no mask, default scale, no statistics.
    pub fn new(shape: Shape, dtype: DType) -> Problem {
        Problem {
            shape,
            dtype,
            variant: Variant::Softmax,
            mask: Mask::None,
            scale: None,
            softcap: None,
            stats: StatsLevel::Off,
            seqs: Sequences::DENSE,
        }
    }

    /// With another variant.
    pub fn with_variant(mut self, variant: Variant) -> Problem {
        self.variant = variant;
        self
    }

    /// With another mask.
    pub fn with_mask(mut self, mask: Mask) -> Problem {
        self.mask = mask;
        self
    }

    /// With an explicit scale σ.
    pub fn with_scale(mut self, scale: f32) -> Problem {
        self.scale = Some(scale);
        self
    }

    /// With a softcap.
    pub fn with_softcap(mut self, softcap: f32) -> Problem {
        self.softcap = Some(softcap);
        self
    }

    /// With a statistics level.
    pub fn with_stats(mut self, stats: StatsLevel) -> Problem {
        self.stats = stats;
        self
    }

    /// With a sequence layout.
    pub fn with_seqs(mut self, seqs: Sequences) -> Problem {
        self.seqs = seqs;
        self
    }

    /// Floating-point operations of the forward pass by the usual convention:
    /// 4·B·Hq·Nq·Nk·d, halved for a causal mask; a window counts the pairs it lets through.
    /// For packed and paged calls the shape's longest sequences stand for every sequence.
    pub fn flops(&self) -> f64 {
        let s = &self.shape;
        let per_pair = 4.0 * s.batch as f64 * s.q_heads as f64 * s.head_dim as f64;
        let pairs = match self.mask {
            Mask::None => s.q_len as f64 * s.kv_len as f64,
            Mask::Causal => s.q_len as f64 * s.kv_len as f64 / 2.0,
            Mask::Window { .. } => (0..s.q_len)
                .map(|i| self.mask.key_range(i, s.q_len, s.kv_len).len() as f64)
                .sum(),
        };
        per_pair * pairs
    }

    /// The engine-shaped features of DESIGN.md section 6 the problem uses, in the order of
    /// [`EngineFeature`]'s variants. Empty for a call of the original dense contract.
    pub fn engine_features(&self) -> Vec<EngineFeature> {
        let mut out = Vec::new();
        let (left, right) = self.mask.bounds();
        if matches!(Mask::window(left, right), Mask::Window { .. }) {
            out.push(EngineFeature::Window);
        }
        if matches!(self.seqs.q, QuerySeqs::Packed { .. }) {
            out.push(EngineFeature::PackedQueries);
        }
        match self.seqs.kv {
            KvSeqs::Dense => {}
            KvSeqs::DenseWithLens => out.push(EngineFeature::KeyLengths),
            KvSeqs::Packed { .. } => out.push(EngineFeature::PackedKeys),
            KvSeqs::Paged { .. } => out.push(EngineFeature::PagedKv),
        }
        out
    }

    /// For a backend that implements only the original dense contract (before validation,
    /// where its device-level API has no place for index tensors): [`Error::Unsupported`]
    /// naming every engine-shaped feature the problem uses.
    ///
    /// # Errors
    /// As said, when [`engine_features`](Self::engine_features) is not empty.
    pub fn require_dense(&self, backend: &str) -> Result<()> {
        self.require_features(backend, &[])
    }

    /// For a backend that implements the dense contract and the engine-shaped features in
    /// `supported`: [`Error::Unsupported`] naming every other feature the problem uses.
    ///
    /// # Errors
    /// As said.
    pub fn require_features(&self, backend: &str, supported: &[EngineFeature]) -> Result<()> {
        unsupported_features(backend, self.engine_features(), supported)
    }

    /// Query tokens of the call: B·Nq for dense Q, total_q for packed Q.
    pub fn q_tokens(&self) -> usize {
        match self.seqs.q {
            QuerySeqs::Dense => self.shape.batch * self.shape.q_len,
            QuerySeqs::Packed { total } => total,
        }
    }

    /// The `[outer, token, heads, channels]` dims of a data tensor (Q, K, V, O) in this
    /// call's sequence layout: `[B, N, H, d]` dense, `[1, total, H, d]` packed,
    /// `[pages, page_size, Hkv, d]` paged.
    pub fn tensor_dims(&self, tensor: TensorName) -> [usize; 4] {
        let s = &self.shape;
        match tensor {
            TensorName::K | TensorName::V => match self.seqs.kv {
                KvSeqs::Dense | KvSeqs::DenseWithLens => s.dims(tensor),
                KvSeqs::Packed { total } => [1, total, s.kv_heads, s.head_dim],
                KvSeqs::Paged {
                    pages, page_size, ..
                } => [pages, page_size, s.kv_heads, s.head_dim],
            },
            _ => match self.seqs.q {
                QuerySeqs::Dense => s.dims(tensor),
                QuerySeqs::Packed { total } => [1, total, s.q_heads, s.head_dim],
            },
        }
    }

    /// Dense layouts of Q, K, V and O in this call's sequence layout (every tensor contiguous
    /// in its [`tensor_dims`](Self::tensor_dims), at offset 0), parameters dense.
    pub fn contiguous_layouts(&self) -> Layouts {
        let layout = |tensor| {
            let [_, tokens, heads, d] = self.tensor_dims(tensor);
            Layout::contiguous(tokens, heads, d)
        };
        Layouts {
            q: layout(TensorName::Q),
            k: layout(TensorName::K),
            v: layout(TensorName::V),
            o: layout(TensorName::O),
            params: Params::none(),
        }
    }

    /// Elements of the LSE output: `[B, Hq, Nq]` for dense Q, `[Hq, total_q]` for packed Q.
    pub fn lse_len(&self) -> usize {
        self.q_tokens() * self.shape.q_heads
    }

    /// Elements of the key-mass output: `[B, Hq, Nk]`, or `[Hq, total_k]` for packed K.
    pub fn key_mass_len(&self) -> usize {
        let s = &self.shape;
        match self.seqs.kv {
            KvSeqs::Packed { total } => s.q_heads * total,
            _ => s.key_mass_len(),
        }
    }

    /// The `[outer, token, heads, width]` dims of the gate z (width 1 per head, d per
    /// channel), in Q's sequence layout; `None` for variants without a gate.
    pub fn gate_dims(&self) -> Option<[usize; 4]> {
        match self.variant {
            Variant::ContextScale { granularity, .. } => {
                let [outer, tokens, heads, d] = self.tensor_dims(TensorName::Q);
                let width = match granularity {
                    GateGranularity::PerHead => 1,
                    GateGranularity::PerChannel => d,
                };
                Some([outer, tokens, heads, width])
            }
            _ => None,
        }
    }

    /// The elements of the gate z for this problem's variant (0 for other variants).
    pub fn gate_len(&self) -> usize {
        self.gate_dims().map_or(0, |d| d.iter().product())
    }

    /// The `[1, 1, Hq, w]` dims of a per-head parameter viewed as a tensor (w = 1 for
    /// `sink_logits`, d otherwise), or the gate's dims.
    fn param_dims(&self, param: TensorName) -> [usize; 4] {
        let s = &self.shape;
        match param {
            TensorName::Gate => self.gate_dims().unwrap_or([0; 4]),
            TensorName::SinkLogits => [1, 1, s.q_heads, 1],
            _ => [1, 1, s.q_heads, s.head_dim],
        }
    }

    /// The shape a parameter must have, as `(elements, description)`.
    fn param_size(&self, param: TensorName) -> (usize, String) {
        let s = &self.shape;
        match param {
            TensorName::SinkLogits => (s.q_heads, format!("[Hq={}]", s.q_heads)),
            TensorName::Gate => {
                let tokens = match self.seqs.q {
                    QuerySeqs::Dense => format!("B={}, Nq={}", s.batch, s.q_len),
                    QuerySeqs::Packed { total } => format!("total_q={total}"),
                };
                let width = match self.variant {
                    Variant::ContextScale {
                        granularity: GateGranularity::PerChannel,
                        ..
                    } => format!(", d={}", s.head_dim),
                    _ => String::new(),
                };
                (
                    self.gate_len(),
                    format!("[{tokens}, Hq={}{width}]", s.q_heads),
                )
            }
            _ => (
                s.q_heads * s.head_dim,
                format!("[Hq={}, d={}]", s.q_heads, s.head_dim),
            ),
        }
    }
}

/// A strided data tensor as validation sees it: dtype, buffer length and layout.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TensorArg {
    /// Element type of the buffer.
    pub dtype: DType,
    /// Elements in the buffer (from its start, before the layout's offset).
    pub len: usize,
    /// Offset and strides.
    pub layout: Layout,
}

/// A dense buffer as validation sees it: dtype and element count.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BufferArg {
    /// Element type.
    pub dtype: DType,
    /// Elements.
    pub len: usize,
}

/// The buffers of one call, described for validation. Backends build this from whatever
/// they hold (host vectors, `CudaView`s, `wgpu::Buffer` slices).
#[derive(Clone, Debug, PartialEq)]
pub struct Args {
    /// Q, in the layout's dims ([`Problem::tensor_dims`]).
    pub q: TensorArg,
    /// K.
    pub k: TensorArg,
    /// V.
    pub v: TensorArg,
    /// O.
    pub o: TensorArg,
    /// LSE `[B, Hq, Nq]` (`[Hq, total_q]` for packed Q), f32; `None` when the caller does not
    /// want it.
    pub lse: Option<BufferArg>,
    /// Statistics `[B, Hq, Stat::COUNT]`, f32; present iff the level writes it.
    pub stats: Option<BufferArg>,
    /// Key mass ([`Problem::key_mass_len`]), f32; present iff the level is `HeadsAndKeys`.
    pub key_mass: Option<BufferArg>,
    /// The variant's learned tensors.
    pub params: Params<BufferArg>,
    /// Offsets and strides of the parameters given as views ([`Layouts::params`]); an absent
    /// slot is a dense parameter, which must hold exactly its elements.
    pub param_layouts: Params<Layout>,
    /// Element counts of the i32 index tensors the sequence layout reads.
    pub indices: SeqIndices<usize>,
}

/// A problem that passed [`validate`], with every default resolved. Kernels read their
/// scalars from here and nowhere else.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Validated {
    problem: Problem,
    layouts: Layouts,
    scale: f32,
    sigmoid_bias: Option<f32>,
    lse: bool,
}

impl Validated {
    /// The problem, with its mask in the simplest form ([`Mask::window`]).
    pub fn problem(&self) -> &Problem {
        &self.problem
    }

    /// The shape.
    pub fn shape(&self) -> &Shape {
        &self.problem.shape
    }

    /// Layouts of Q, K, V, O and of the parameters given as views.
    pub fn layouts(&self) -> &Layouts {
        &self.layouts
    }

    /// σ, resolved (1/√d by default).
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// The softcap, if any.
    pub fn softcap(&self) -> Option<f32> {
        self.problem.softcap
    }

    /// β of `Sigmoid` for the shape's key length Nk, resolved (−ln Nk by default); 0 for
    /// other variants. Sequences of their own lengths use
    /// [`sigmoid_bias_for`](Self::sigmoid_bias_for).
    pub fn sigmoid_bias(&self) -> f32 {
        self.sigmoid_bias_for(self.problem.shape.kv_len)
    }

    /// β of `Sigmoid` for a sequence of `kv_len` keys: the given bias, or −ln Nk_b computed
    /// in f32; 0 for other variants.
    pub fn sigmoid_bias_for(&self, kv_len: usize) -> f32 {
        match (self.problem.variant, self.sigmoid_bias) {
            (Variant::Sigmoid { .. }, Some(b)) => b,
            (Variant::Sigmoid { .. }, None) => -(kv_len as f32).ln(),
            _ => 0.0,
        }
    }

    /// Whether an LSE buffer is written.
    pub fn writes_lse(&self) -> bool {
        self.lse
    }

    /// The engine-shaped features of section 6 this call uses: those of
    /// [`Problem::engine_features`], then [`EngineFeature::StridedParams`] and
    /// [`EngineFeature::NoLse`].
    pub fn engine_features(&self) -> Vec<EngineFeature> {
        let mut out = self.problem.engine_features();
        if self.layouts.params.slots().iter().any(|(_, l)| l.is_some()) {
            out.push(EngineFeature::StridedParams);
        }
        if !self.lse {
            out.push(EngineFeature::NoLse);
        }
        out
    }

    /// For a backend that implements only the original dense contract:
    /// [`Error::Unsupported`] naming every engine-shaped feature this call uses.
    ///
    /// # Errors
    /// As said, when [`engine_features`](Self::engine_features) is not empty.
    pub fn require_dense(&self, backend: &str) -> Result<()> {
        self.require_features(backend, &[])
    }

    /// [`Error::Unsupported`] naming every engine-shaped feature this call uses that is not
    /// in `supported`.
    ///
    /// # Errors
    /// As said.
    pub fn require_features(&self, backend: &str, supported: &[EngineFeature]) -> Result<()> {
        unsupported_features(backend, self.engine_features(), supported)
    }
}

/// An engine-shaped feature of DESIGN.md section 6: what a backend that implements only part
/// of section 6 names when it refuses a call ([`Problem::require_features`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EngineFeature {
    /// A [`Mask::Window`] that is neither [`Mask::None`] nor [`Mask::Causal`].
    Window,
    /// [`QuerySeqs::Packed`].
    PackedQueries,
    /// [`KvSeqs::DenseWithLens`].
    KeyLengths,
    /// [`KvSeqs::Packed`].
    PackedKeys,
    /// [`KvSeqs::Paged`].
    PagedKv,
    /// A parameter tensor given as a strided view ([`Layouts`]'s `params`).
    StridedParams,
    /// No LSE buffer.
    NoLse,
}

impl EngineFeature {
    /// The feature's name, as refusals say it.
    pub fn name(self) -> &'static str {
        match self {
            EngineFeature::Window => "sliding window",
            EngineFeature::PackedQueries => "packed queries",
            EngineFeature::KeyLengths => "per-sequence key lengths",
            EngineFeature::PackedKeys => "packed keys",
            EngineFeature::PagedKv => "paged KV cache",
            EngineFeature::StridedParams => "strided parameter views",
            EngineFeature::NoLse => "no LSE buffer",
        }
    }
}

impl std::fmt::Display for EngineFeature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// [`Error::Unsupported`] naming the features not in `supported`, or `Ok` when there are none.
fn unsupported_features(
    backend: &str,
    features: Vec<EngineFeature>,
    supported: &[EngineFeature],
) -> Result<()> {
    let missing: Vec<&str> = features
        .into_iter()
        .filter(|f| !supported.contains(f))
        .map(EngineFeature::name)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::Unsupported {
        backend: backend.to_string(),
        reason: format!("not implemented yet: {}", missing.join(", ")),
    })
}

/// Checks a problem and its buffers against the contract (DESIGN.md sections 4 and 6).
///
/// Every backend calls this before anything runs; the kernels may then assume what it checks.
/// It sees the index tensors' lengths, not their values: host-level calls also run
/// [`validate_indices`](crate::validate_indices) (through
/// [`HostInputs::validate`](crate::HostInputs::validate)); on device-level calls the values
/// live on the device, and the kernels clamp what they read (DESIGN.md section 6).
///
/// # Errors
/// The first refusal found, naming the tensor and the dimension.
pub fn validate(problem: &Problem, args: &Args) -> Result<Validated> {
    let s = &problem.shape;

    for tensor in [TensorName::Q, TensorName::K] {
        for dim in [Dim::Batch, Dim::Seq, Dim::Heads, Dim::Channels] {
            if s.dims(tensor)[dim.index()] == 0 {
                return Err(Error::ZeroDim { tensor, dim });
            }
        }
    }
    if s.q_heads % s.kv_heads != 0 {
        return Err(Error::HeadGroups {
            q_heads: s.q_heads,
            kv_heads: s.kv_heads,
        });
    }
    if s.head_dim % HEAD_DIM_MULTIPLE != 0 || s.head_dim > MAX_HEAD_DIM {
        return Err(Error::HeadDim {
            head_dim: s.head_dim,
        });
    }
    check_sequences(s, &problem.seqs, &args.indices)?;

    let scale = problem.scale.unwrap_or(1.0 / (s.head_dim as f32).sqrt());
    check_scalar(
        "scale",
        scale,
        scale.is_finite() && scale > 0.0,
        "finite and > 0",
    )?;
    if let Some(c) = problem.softcap {
        check_scalar("softcap", c, c.is_finite() && c > 0.0, "finite and > 0")?;
    }
    let mut sigmoid_bias = None;
    match problem.variant {
        Variant::Sigmoid { bias } => {
            sigmoid_bias = bias;
            let resolved = bias.unwrap_or(-(s.kv_len as f32).ln());
            check_scalar("sigmoid bias", resolved, resolved.is_finite(), "finite")?;
        }
        Variant::ClippedSoftmax { zeta, gamma } => {
            check_scalar(
                "zeta",
                zeta,
                zeta.is_finite() && zeta >= 1.0,
                "finite and >= 1",
            )?;
            check_scalar(
                "gamma",
                gamma,
                gamma.is_finite() && gamma <= 0.0,
                "finite and <= 0",
            )?;
        }
        _ => {}
    }

    check_params(problem, &args.params, &args.param_layouts)?;

    let layouts = Layouts {
        q: args.q.layout,
        k: args.k.layout,
        v: args.v.layout,
        o: args.o.layout,
        params: args.param_layouts,
    };
    for (tensor, arg) in [
        (TensorName::Q, &args.q),
        (TensorName::K, &args.k),
        (TensorName::V, &args.v),
        (TensorName::O, &args.o),
    ] {
        check_tensor(tensor, arg, problem.dtype, problem.tensor_dims(tensor))?;
    }
    if !args
        .o
        .layout
        .is_non_overlapping(problem.tensor_dims(TensorName::O))
    {
        return Err(Error::OverlappingOutput {
            tensor: TensorName::O,
        });
    }

    let lse_layout = match problem.seqs.q {
        QuerySeqs::Dense => format!("[B={}, Hq={}, Nq={}]", s.batch, s.q_heads, s.q_len),
        QuerySeqs::Packed { total } => format!("[Hq={}, total_q={total}]", s.q_heads),
    };
    if let Some(lse) = &args.lse {
        check_buffer(
            TensorName::Lse,
            Some(lse),
            Some((problem.lse_len(), lse_layout)),
            problem.stats,
        )?;
    }
    check_buffer(
        TensorName::Stats,
        args.stats.as_ref(),
        problem.stats.heads().then(|| {
            (
                s.heads_total() * Stat::COUNT,
                format!("[B={}, Hq={}, {}]", s.batch, s.q_heads, Stat::COUNT),
            )
        }),
        problem.stats,
    )?;
    let key_mass_layout = match problem.seqs.kv {
        KvSeqs::Packed { total } => format!("[Hq={}, total_k={total}]", s.q_heads),
        _ => format!("[B={}, Hq={}, Nk={}]", s.batch, s.q_heads, s.kv_len),
    };
    check_buffer(
        TensorName::KeyMass,
        args.key_mass.as_ref(),
        problem
            .stats
            .keys()
            .then(|| (problem.key_mass_len(), key_mass_layout)),
        problem.stats,
    )?;

    let (left, right) = problem.mask.bounds();
    Ok(Validated {
        problem: Problem {
            mask: Mask::window(left, right),
            ..*problem
        },
        layouts,
        scale,
        sigmoid_bias,
        lse: args.lse.is_some(),
    })
}

fn check_scalar(name: &'static str, value: f32, ok: bool, requirement: &'static str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::Scalar {
            name,
            value,
            requirement,
        })
    }
}

fn check_params(
    problem: &Problem,
    params: &Params<BufferArg>,
    layouts: &Params<Layout>,
) -> Result<()> {
    let needed = problem.variant.params();
    for ((name, slot), (_, layout)) in params.slots().into_iter().zip(layouts.slots()) {
        match (needed.contains(&name), slot) {
            (true, None) => {
                return Err(Error::MissingParam {
                    param: name,
                    variant: problem.variant.name(),
                });
            }
            (false, Some(_)) => {
                return Err(Error::ExtraParam {
                    param: name,
                    variant: problem.variant.name(),
                });
            }
            (true, Some(arg)) => {
                let expected_dtype = if name == TensorName::Gate {
                    problem.dtype
                } else {
                    DType::F32
                };
                match layout {
                    // A view: any buffer its offset and strides stay inside.
                    Some(layout) => check_tensor(
                        name,
                        &TensorArg {
                            dtype: arg.dtype,
                            len: arg.len,
                            layout: *layout,
                        },
                        expected_dtype,
                        problem.param_dims(name),
                    )?,
                    // Dense: exactly its elements.
                    None => {
                        if arg.dtype != expected_dtype {
                            return Err(Error::DType {
                                tensor: name,
                                got: arg.dtype,
                                expected: expected_dtype,
                            });
                        }
                        let (expected, layout) = problem.param_size(name);
                        if arg.len != expected {
                            return Err(Error::Size {
                                tensor: name,
                                got: arg.len,
                                expected,
                                layout,
                            });
                        }
                    }
                }
            }
            (false, None) => {}
        }
    }
    Ok(())
}

fn check_tensor(tensor: TensorName, arg: &TensorArg, dtype: DType, dims: [usize; 4]) -> Result<()> {
    if arg.dtype != dtype {
        return Err(Error::DType {
            tensor,
            got: arg.dtype,
            expected: dtype,
        });
    }
    if arg.layout.strides.channel != 1 && dims[3] > 1 {
        return Err(Error::ChannelStride {
            tensor,
            stride: arg.layout.strides.channel,
        });
    }
    let needed = arg
        .layout
        .reach(dims)
        .ok_or(Error::IndexOverflow { tensor })?;
    if needed > arg.len as u64 {
        return Err(Error::BufferTooShort {
            tensor,
            needed,
            len: arg.len as u64,
        });
    }
    Ok(())
}

/// Checks an f32 output buffer: present with the right size when `expected` is `Some`,
/// absent otherwise.
fn check_buffer(
    tensor: TensorName,
    arg: Option<&BufferArg>,
    expected: Option<(usize, String)>,
    level: StatsLevel,
) -> Result<()> {
    match (arg, expected) {
        (None, None) => Ok(()),
        (Some(_), None) => Err(Error::UnexpectedOutput {
            tensor,
            level: level.name(),
        }),
        (None, Some((expected, layout))) => Err(Error::Size {
            tensor,
            got: 0,
            expected,
            layout,
        }),
        (Some(arg), Some((expected, layout))) => {
            if arg.dtype != DType::F32 {
                return Err(Error::DType {
                    tensor,
                    got: arg.dtype,
                    expected: DType::F32,
                });
            }
            if arg.len != expected {
                return Err(Error::Size {
                    tensor,
                    got: arg.len,
                    expected,
                    layout,
                });
            }
            Ok(())
        }
    }
}
