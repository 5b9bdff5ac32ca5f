//! The problem description and the one validation every backend runs before any kernel.

use std::fmt;

use super::dtype::DType;
use super::error::{Error, Result};
use super::shape::{Dim, HEAD_DIM_MULTIPLE, Layout, Layouts, MAX_HEAD_DIM, Shape, TensorName};
use super::stats::{Stat, StatsLevel};
use super::variant::{GateGranularity, Params, Variant};

/// Which keys a query sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Mask {
    /// Every key.
    #[default]
    None,
    /// Bottom-right causal: key j is visible to query i iff j ≤ i + (Nk − Nq).
    Causal,
}

impl Mask {
    /// The mask's name.
    pub fn name(self) -> &'static str {
        match self {
            Mask::None => "None",
            Mask::Causal => "Causal",
        }
    }
}

impl fmt::Display for Mask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
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

    /// Floating-point operations of the forward pass by the usual convention:
    /// 4·B·Hq·Nq·Nk·d, halved for a causal mask.
    pub fn flops(&self) -> f64 {
        let s = &self.shape;
        let full = 4.0
            * s.batch as f64
            * s.q_heads as f64
            * s.q_len as f64
            * s.kv_len as f64
            * s.head_dim as f64;
        match self.mask {
            Mask::None => full,
            Mask::Causal => full / 2.0,
        }
    }

    /// The elements of the gate z for this problem's variant (0 for other variants).
    pub fn gate_len(&self) -> usize {
        let s = &self.shape;
        match self.variant {
            Variant::ContextScale { granularity, .. } => {
                let per_token = s.batch * s.q_len * s.q_heads;
                match granularity {
                    GateGranularity::PerHead => per_token,
                    GateGranularity::PerChannel => per_token * s.head_dim,
                }
            }
            _ => 0,
        }
    }

    /// The shape a parameter must have, as `(elements, description)`.
    fn param_size(&self, param: TensorName) -> (usize, String) {
        let s = &self.shape;
        match param {
            TensorName::SinkLogits => (s.q_heads, format!("[Hq={}]", s.q_heads)),
            TensorName::Gate => match self.variant {
                Variant::ContextScale {
                    granularity: GateGranularity::PerChannel,
                    ..
                } => (
                    self.gate_len(),
                    format!(
                        "[B={}, Nq={}, Hq={}, d={}]",
                        s.batch, s.q_len, s.q_heads, s.head_dim
                    ),
                ),
                _ => (
                    self.gate_len(),
                    format!("[B={}, Nq={}, Hq={}]", s.batch, s.q_len, s.q_heads),
                ),
            },
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
    /// Q.
    pub q: TensorArg,
    /// K.
    pub k: TensorArg,
    /// V.
    pub v: TensorArg,
    /// O.
    pub o: TensorArg,
    /// LSE `[B, Hq, Nq]`, f32; always written.
    pub lse: BufferArg,
    /// Statistics `[B, Hq, Stat::COUNT]`, f32; present iff the level writes it.
    pub stats: Option<BufferArg>,
    /// Key mass `[B, Hq, Nk]`, f32; present iff the level is `HeadsAndKeys`.
    pub key_mass: Option<BufferArg>,
    /// The variant's learned tensors.
    pub params: Params<BufferArg>,
}

/// A problem that passed [`validate`], with every default resolved. Kernels read their
/// scalars from here and nowhere else.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Validated {
    problem: Problem,
    layouts: Layouts,
    scale: f32,
    sigmoid_bias: f32,
}

impl Validated {
    /// The problem as given.
    pub fn problem(&self) -> &Problem {
        &self.problem
    }

    /// The shape.
    pub fn shape(&self) -> &Shape {
        &self.problem.shape
    }

    /// Layouts of Q, K, V, O.
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

    /// β of `Sigmoid`, resolved (−ln Nk by default); 0 for other variants.
    pub fn sigmoid_bias(&self) -> f32 {
        self.sigmoid_bias
    }
}

/// Checks a problem and its buffers against the contract (DESIGN.md section 4).
///
/// Every backend calls this before anything runs; the kernels may then assume what it checks.
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
    let mut sigmoid_bias = 0.0;
    match problem.variant {
        Variant::Sigmoid { bias } => {
            sigmoid_bias = bias.unwrap_or(-(s.kv_len as f32).ln());
            check_scalar(
                "sigmoid bias",
                sigmoid_bias,
                sigmoid_bias.is_finite(),
                "finite",
            )?;
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

    check_params(problem, &args.params)?;

    let layouts = Layouts {
        q: args.q.layout,
        k: args.k.layout,
        v: args.v.layout,
        o: args.o.layout,
    };
    for (tensor, arg) in [
        (TensorName::Q, &args.q),
        (TensorName::K, &args.k),
        (TensorName::V, &args.v),
        (TensorName::O, &args.o),
    ] {
        check_tensor(tensor, arg, problem.dtype, s.dims(tensor))?;
    }
    if !args.o.layout.is_non_overlapping(s.dims(TensorName::O)) {
        return Err(Error::OverlappingOutput {
            tensor: TensorName::O,
        });
    }

    check_buffer(
        TensorName::Lse,
        Some(&args.lse),
        Some((
            s.lse_len(),
            format!("[B={}, Hq={}, Nq={}]", s.batch, s.q_heads, s.q_len),
        )),
        problem.stats,
    )?;
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
    check_buffer(
        TensorName::KeyMass,
        args.key_mass.as_ref(),
        problem.stats.keys().then(|| {
            (
                s.key_mass_len(),
                format!("[B={}, Hq={}, Nk={}]", s.batch, s.q_heads, s.kv_len),
            )
        }),
        problem.stats,
    )?;

    Ok(Validated {
        problem: *problem,
        layouts,
        scale,
        sigmoid_bias,
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

fn check_params(problem: &Problem, params: &Params<BufferArg>) -> Result<()> {
    let needed = problem.variant.params();
    for (name, slot) in params.slots() {
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
    if arg.layout.strides.channel != 1 {
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
