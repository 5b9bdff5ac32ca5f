//! The attention variants (a)–(i) and their learned parameters.

use std::fmt;

use super::shape::TensorName;

/// The gate of [`Variant::ContextScale`]: γ = gate(z).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Gate {
    /// γ = 2·sigmoid(z): the paper's explicit context-aware scaling factor.
    TwoSigmoid,
    /// γ = sigmoid(z): gated attention (Bondarenko et al.; Qwen, per channel).
    Sigmoid,
    /// γ = z: the caller computed the factor.
    Identity,
}

/// Whether [`Variant::ContextScale`] has one factor per token and head or one per channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GateGranularity {
    /// z: `[B, Nq, Hq]`.
    PerHead,
    /// z: `[B, Nq, Hq, d]`.
    PerChannel,
}

/// Which attention form a kernel computes; see the crate docs for each formula.
///
/// The variant carries its scalar settings; its learned tensors travel in [`Params`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Variant {
    /// (a) o = softmax(s)·V.
    Softmax,
    /// (b) o = A + v′ (param `v_bias`).
    ValueBias,
    /// (c) o = A + (1 − S)·v′ with 1 − S the share a sink key k′ would take (params `k_sink`,
    /// `v_sink`).
    ContextBias,
    /// (d) a learned key/value sink token joins the softmax (params `k_sink`, `v_sink`).
    KvSink,
    /// (e) o = γ ⊙ A with γ = gate(z) (param `gate`, dtype of Q): the paper's proposal.
    ContextScale {
        /// The gate function.
        gate: Gate,
        /// One factor per (token, head) or per (token, head, channel).
        granularity: GateGranularity,
    },
    /// (f) o = Σ sigmoid(s + β)·v.
    Sigmoid {
        /// β; `None` means −ln(Nk).
        bias: Option<f32>,
    },
    /// (g) learned per-head sink logits θ in the denominator (param `sink_logits`), as gpt-oss.
    LogitSink,
    /// (h) softmax off by one: a sink of logit 0.
    Softmax1,
    /// (i) clipped softmax: weights clip((ζ − γ)·p + γ, 0, 1).
    ClippedSoftmax {
        /// ζ ≥ 1, the stretch above 1.
        zeta: f32,
        /// γ ≤ 0, the stretch below 0.
        gamma: f32,
    },
}

impl Variant {
    /// The variant's name, as in the crate docs and the command line.
    pub fn name(&self) -> &'static str {
        match self {
            Variant::Softmax => "Softmax",
            Variant::ValueBias => "ValueBias",
            Variant::ContextBias => "ContextBias",
            Variant::KvSink => "KvSink",
            Variant::ContextScale { .. } => "ContextScale",
            Variant::Sigmoid { .. } => "Sigmoid",
            Variant::LogitSink => "LogitSink",
            Variant::Softmax1 => "Softmax1",
            Variant::ClippedSoftmax { .. } => "ClippedSoftmax",
        }
    }

    /// The row of Table 2 of An et al. (2025), `'a'` to `'i'`.
    pub fn letter(&self) -> char {
        match self {
            Variant::Softmax => 'a',
            Variant::ValueBias => 'b',
            Variant::ContextBias => 'c',
            Variant::KvSink => 'd',
            Variant::ContextScale { .. } => 'e',
            Variant::Sigmoid { .. } => 'f',
            Variant::LogitSink => 'g',
            Variant::Softmax1 => 'h',
            Variant::ClippedSoftmax { .. } => 'i',
        }
    }

    /// The learned tensors this variant reads; every other parameter must be absent.
    pub fn params(&self) -> &'static [TensorName] {
        match self {
            Variant::ValueBias => &[TensorName::VBias],
            Variant::ContextBias | Variant::KvSink => &[TensorName::KSink, TensorName::VSink],
            Variant::ContextScale { .. } => &[TensorName::Gate],
            Variant::LogitSink => &[TensorName::SinkLogits],
            Variant::Softmax
            | Variant::Sigmoid { .. }
            | Variant::Softmax1
            | Variant::ClippedSoftmax { .. } => &[],
        }
    }

    /// Whether a sink outside the keys is visible to every row: (c), (d), (g), (h).
    pub fn has_sink(&self) -> bool {
        matches!(
            self,
            Variant::ContextBias | Variant::KvSink | Variant::LogitSink | Variant::Softmax1
        )
    }

    /// One instance of each variant, with the paper's defaults for the scalar settings.
    pub fn all_default() -> [Variant; 9] {
        [
            Variant::Softmax,
            Variant::ValueBias,
            Variant::ContextBias,
            Variant::KvSink,
            Variant::ContextScale {
                gate: Gate::TwoSigmoid,
                granularity: GateGranularity::PerHead,
            },
            Variant::Sigmoid { bias: None },
            Variant::LogitSink,
            Variant::Softmax1,
            Variant::ClippedSoftmax {
                zeta: 1.003,
                gamma: -0.003,
            },
        ]
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The learned tensors of the variants, one slot each; `T` is whatever holds them (a host
/// tensor, a device buffer, a size for validation, or a view's [`Layout`](crate::Layout)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Params<T> {
    /// k′ `[Hq, d]`, f32: (c), (d).
    pub k_sink: Option<T>,
    /// v′ `[Hq, d]`, f32: (c), (d).
    pub v_sink: Option<T>,
    /// v′ `[Hq, d]`, f32: (b).
    pub v_bias: Option<T>,
    /// θ `[Hq]`, f32: (g).
    pub sink_logits: Option<T>,
    /// z `[B, Nq, Hq]` or `[B, Nq, Hq, d]`, dtype of Q: (e).
    pub gate: Option<T>,
}

impl<T> Default for Params<T> {
    fn default() -> Self {
        Params {
            k_sink: None,
            v_sink: None,
            v_bias: None,
            sink_logits: None,
            gate: None,
        }
    }
}

impl<T> Params<T> {
    /// No parameters (the variants (a), (f), (h), (i)).
    pub fn none() -> Self {
        Self::default()
    }

    /// The slot of one parameter; `None` for a name that is no parameter.
    pub fn get(&self, name: TensorName) -> Option<&T> {
        match name {
            TensorName::KSink => self.k_sink.as_ref(),
            TensorName::VSink => self.v_sink.as_ref(),
            TensorName::VBias => self.v_bias.as_ref(),
            TensorName::SinkLogits => self.sink_logits.as_ref(),
            TensorName::Gate => self.gate.as_ref(),
            _ => None,
        }
    }

    /// Every slot with its name.
    pub fn slots(&self) -> [(TensorName, Option<&T>); 5] {
        [
            (TensorName::KSink, self.k_sink.as_ref()),
            (TensorName::VSink, self.v_sink.as_ref()),
            (TensorName::VBias, self.v_bias.as_ref()),
            (TensorName::SinkLogits, self.sink_logits.as_ref()),
            (TensorName::Gate, self.gate.as_ref()),
        ]
    }

    /// Applies `f` to every present parameter.
    pub fn map<U>(&self, mut f: impl FnMut(&T) -> U) -> Params<U> {
        Params {
            k_sink: self.k_sink.as_ref().map(&mut f),
            v_sink: self.v_sink.as_ref().map(&mut f),
            v_bias: self.v_bias.as_ref().map(&mut f),
            sink_logits: self.sink_logits.as_ref().map(&mut f),
            gate: self.gate.as_ref().map(&mut f),
        }
    }
}
