//! Attention inputs read from, and outputs written to, safetensors files (feature `safetensors`).
//!
//! Two file layouts, both with tensors laid out `[B, N, H, d]` as the contract's dense layout:
//!
//! - **one call** ([`read_call`]), as `outlier-attn run` replays it: tensors `q`, `k`, `v` (f32,
//!   f16 or bf16, one dtype for the three) and the variant's parameters `k_sink`, `v_sink`,
//!   `v_bias` (`[Hq, d]`), `sink_logits` (`[Hq]`) and `gate` (`[B, Nq, Hq]` or `[B, Nq, Hq, d]`,
//!   the dtype of `q`). Learned parameters stored as f16 or bf16 are widened to f32 (exactly).
//! - **a model dump** ([`ModelDump`]), as `outlier-attn inspect` and the MiniLM fixture use it:
//!   `layers.{i}.q`, `layers.{i}.k`, `layers.{i}.v` for each layer `i`, optionally the
//!   framework's own attention output `layers.{i}.o` (`[B, Nq, Hq, d]`) and probabilities
//!   `layers.{i}.probs` (`[B, Hq, Nq, Nk]`), and the tokens as metadata `tokens`: a JSON array
//!   with one array of token strings per batch entry.
//!
//! [`write_outputs`] writes `o`, `lse`, `stats` (`[B, Hq, Stat::COUNT]`, the statistic names in
//! the metadata entry `stats`) and `key_mass`.
//!
//! Every malformed file is a [`FileError`] naming the tensor and what was expected.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::contract::{
    DType, GateGranularity, HostInputs, HostOutputs, HostTensor, Params, Problem, Shape, Stat,
    TensorName, Variant,
};

/// Path of the all-MiniLM-L6-v2 fixture relative to the root of a checkout of this crate's
/// repository (see its README): Q/K/V of the six layers for two sentences, with PyTorch's
/// attention outputs and probabilities. The published package leaves the file out (1 MB); the
/// demo and the tool take its path.
pub const MINILM_FIXTURE: &str = "tests/fixtures/all-MiniLM-L6-v2.safetensors";

/// Why a file could not be read as attention inputs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// The file could not be read.
    #[error("cannot read the file: {0}")]
    Io(String),
    /// The bytes are not a safetensors file.
    #[error("not a valid safetensors file: {0}")]
    Format(String),
    /// A tensor the call needs is absent.
    #[error("tensor `{name}` is missing{hint}")]
    Missing {
        /// The tensor's name in the file.
        name: String,
        /// Why it is needed, with a leading separator, or empty.
        hint: String,
    },
    /// A tensor of an element type the contract does not take.
    #[error("tensor `{name}` has dtype {got}; expected {expected}")]
    DType {
        /// The tensor's name in the file.
        name: String,
        /// The dtype found.
        got: String,
        /// The dtypes accepted.
        expected: &'static str,
    },
    /// A tensor of the wrong rank or dimensions.
    #[error("tensor `{name}` has shape {got:?}; expected {expected}")]
    Shape {
        /// The tensor's name in the file.
        name: String,
        /// Its dims.
        got: Vec<usize>,
        /// The shape it must have, spelt out.
        expected: String,
    },
    /// A metadata entry that cannot be read.
    #[error("metadata `{key}`: {message}")]
    Metadata {
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The tensors were read but the contract refuses them (shapes that disagree, a head dim
    /// that is no multiple of 8, dtypes that differ).
    #[error(transparent)]
    Contract(#[from] crate::Error),
}

/// Result with a [`FileError`].
pub type FileResult<T> = std::result::Result<T, FileError>;

/// Reads a whole file.
///
/// # Errors
/// [`FileError::Io`] with the system's reason.
pub fn read_file(path: &Path) -> FileResult<Vec<u8>> {
    std::fs::read(path).map_err(|e| FileError::Io(e.to_string()))
}

fn parse(bytes: &[u8]) -> FileResult<SafeTensors<'_>> {
    SafeTensors::deserialize(bytes).map_err(|e| FileError::Format(e.to_string()))
}

fn metadata(bytes: &[u8]) -> FileResult<HashMap<String, String>> {
    let (_, meta) =
        SafeTensors::read_metadata(bytes).map_err(|e| FileError::Format(e.to_string()))?;
    Ok(meta.metadata().clone().unwrap_or_default())
}

/// One tensor: its dims and its elements (f32, f16 or bf16).
///
/// # Errors
/// [`FileError::Missing`] or [`FileError::DType`].
fn tensor(st: &SafeTensors<'_>, name: &str, hint: &str) -> FileResult<(Vec<usize>, HostTensor)> {
    let view = st.tensor(name).map_err(|_| FileError::Missing {
        name: name.to_string(),
        hint: hint.to_string(),
    })?;
    let dtype = match view.dtype() {
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::Bf16,
        other => {
            return Err(FileError::DType {
                name: name.to_string(),
                got: other.to_string(),
                expected: "F32, F16 or BF16",
            });
        }
    };
    // The safetensors parser checked that the byte count matches dims and dtype.
    let data = HostTensor::from_bytes(dtype, view.data()).ok_or_else(|| {
        FileError::Format(format!(
            "tensor `{name}`: byte count is no multiple of its element"
        ))
    })?;
    Ok((view.shape().to_vec(), data))
}

fn expect_dims(name: &str, got: &[usize], expected: &[usize], spelt: String) -> FileResult<()> {
    if got == expected {
        Ok(())
    } else {
        Err(FileError::Shape {
            name: name.to_string(),
            got: got.to_vec(),
            expected: spelt,
        })
    }
}

/// Reads Q, K and V named `prefix` + `q`/`k`/`v` and checks their dims against each other.
fn read_qkv(st: &SafeTensors<'_>, prefix: &str) -> FileResult<(Shape, [HostTensor; 3])> {
    let hint = " (attention inputs are q, k, v laid out [B, N, H, d])";
    let (qd, q) = tensor(st, &format!("{prefix}q"), hint)?;
    let (kd, k) = tensor(st, &format!("{prefix}k"), hint)?;
    let (vd, v) = tensor(st, &format!("{prefix}v"), hint)?;
    for (name, dims) in [("q", &qd), ("k", &kd), ("v", &vd)] {
        if dims.len() != 4 {
            return Err(FileError::Shape {
                name: format!("{prefix}{name}"),
                got: dims.clone(),
                expected: "rank 4 [B, N, H, d]".to_string(),
            });
        }
    }
    let shape = Shape::from_dims(&qd, &kd, &vd)?;
    Ok((shape, [q, k, v]))
}

/// One call read from a file: what `outlier-attn run` replays.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    /// Sizes, from the dims of `q`, `k` and `v`.
    pub shape: Shape,
    /// The dtype of `q`.
    pub dtype: DType,
    /// The variant asked for, with the gate granularity of `ContextScale` taken from the rank
    /// of `gate`.
    pub variant: Variant,
    /// Q, K, V dense and the variant's parameters.
    pub inputs: HostInputs,
    /// Tensors in the file the variant does not read.
    pub ignored: Vec<String>,
}

/// Reads one call for `variant` from safetensors bytes (layout in the module docs).
///
/// # Errors
/// A [`FileError`] for a malformed file, a missing tensor, a dtype other than f32/f16/bf16, or
/// dims that disagree; [`FileError::Contract`] for what the contract refuses.
pub fn read_call(bytes: &[u8], variant: Variant) -> FileResult<Call> {
    read_call_at(bytes, "", variant)
}

/// As [`read_call`], with every tensor name preceded by `prefix`: `layers.3.` replays layer 3
/// of a model dump. Only tensors under the prefix are listed in [`Call::ignored`].
///
/// # Errors
/// As [`read_call`].
pub fn read_call_at(bytes: &[u8], prefix: &str, variant: Variant) -> FileResult<Call> {
    let st = parse(bytes)?;
    let (shape, [q, k, v]) = read_qkv(&st, prefix)?;
    let dtype = q.dtype();
    let mut variant = variant;
    let mut params = Params::none();
    let (hq, d) = (shape.q_heads, shape.head_dim);
    for &name in variant.params() {
        let full = format!("{prefix}{}", name.as_str());
        let key = full.as_str();
        let hint = format!(" (the {} variant needs it)", variant.name());
        let (dims, data) = tensor(&st, key, &hint)?;
        let data = match name {
            TensorName::SinkLogits => {
                expect_dims(key, &dims, &[hq], format!("[Hq={hq}]"))?;
                widen(data)
            }
            TensorName::Gate => {
                let per_head = [shape.batch, shape.q_len, hq];
                let granularity = if dims == per_head {
                    GateGranularity::PerHead
                } else if dims == [shape.batch, shape.q_len, hq, d] {
                    GateGranularity::PerChannel
                } else {
                    return Err(FileError::Shape {
                        name: key.to_string(),
                        got: dims,
                        expected: format!(
                            "[B={}, Nq={}, Hq={hq}] or [B={}, Nq={}, Hq={hq}, d={d}]",
                            shape.batch, shape.q_len, shape.batch, shape.q_len
                        ),
                    });
                };
                if let Variant::ContextScale { gate, .. } = variant {
                    variant = Variant::ContextScale { gate, granularity };
                }
                data
            }
            _ => {
                expect_dims(key, &dims, &[hq, d], format!("[Hq={hq}, d={d}]"))?;
                widen(data)
            }
        };
        match name {
            TensorName::KSink => params.k_sink = Some(data),
            TensorName::VSink => params.v_sink = Some(data),
            TensorName::VBias => params.v_bias = Some(data),
            TensorName::SinkLogits => params.sink_logits = Some(data),
            _ => params.gate = Some(data),
        }
    }
    let used: Vec<&str> = ["q", "k", "v"]
        .into_iter()
        .chain(variant.params().iter().map(|p| p.as_str()))
        .collect();
    let mut ignored: Vec<String> = st
        .names()
        .into_iter()
        .filter(|n| {
            n.strip_prefix(prefix)
                .is_some_and(|rest| !used.contains(&rest))
        })
        .map(str::to_string)
        .collect();
    ignored.sort();
    let problem = Problem::new(shape, dtype).with_variant(variant);
    let inputs = HostInputs::dense(&problem, q, k, v).with_params(params);
    Ok(Call {
        shape,
        dtype,
        variant,
        inputs,
        ignored,
    })
}

/// Learned parameters are f32 in the contract; f16 and bf16 widen exactly.
fn widen(t: HostTensor) -> HostTensor {
    match t {
        HostTensor::F32(_) => t,
        other => HostTensor::F32(other.to_f64_vec().into_iter().map(|x| x as f32).collect()),
    }
}

/// One layer of a model dump.
#[derive(Clone, Debug, PartialEq)]
pub struct Layer {
    /// The layer index `i` of `layers.{i}.*`.
    pub index: usize,
    /// Sizes, from the dims of Q, K and V.
    pub shape: Shape,
    /// The dtype of Q.
    pub dtype: DType,
    /// Q, K, V dense, no parameters.
    pub inputs: HostInputs,
    /// `layers.{i}.o`: the framework's attention output `[B, Nq, Hq, d]`, when present.
    pub framework_output: Option<Vec<f64>>,
    /// `layers.{i}.probs`: the framework's attention probabilities `[B, Hq, Nq, Nk]`, when present.
    pub framework_probs: Option<Vec<f64>>,
}

/// Q/K/V of several layers of a model, as dumped by an engine (layout in the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct ModelDump {
    /// The layers, by increasing index.
    pub layers: Vec<Layer>,
    /// Token strings per batch entry, from the metadata entry `tokens`, when present.
    pub tokens: Option<Vec<Vec<String>>>,
    /// Every metadata entry of the file.
    pub metadata: HashMap<String, String>,
}

impl ModelDump {
    /// Reads a dump from a file.
    ///
    /// # Errors
    /// As [`ModelDump::from_bytes`], and [`FileError::Io`].
    pub fn open(path: impl AsRef<Path>) -> FileResult<ModelDump> {
        ModelDump::from_bytes(&read_file(path.as_ref())?)
    }

    /// Reads a dump from safetensors bytes.
    ///
    /// # Errors
    /// A [`FileError`] when no `layers.{i}.q` is present, when a layer lacks `k` or `v`, when
    /// a tensor has the wrong dtype or dims, or when `tokens` is not a JSON array of string
    /// arrays matching B and Nk.
    pub fn from_bytes(bytes: &[u8]) -> FileResult<ModelDump> {
        let st = parse(bytes)?;
        let metadata = metadata(bytes)?;
        let mut indices: Vec<usize> = st
            .names()
            .iter()
            .filter_map(|n| n.strip_prefix("layers.")?.strip_suffix(".q")?.parse().ok())
            .collect();
        indices.sort_unstable();
        if indices.is_empty() {
            return Err(FileError::Missing {
                name: "layers.0.q".to_string(),
                hint: " (a model dump holds layers.{i}.q, layers.{i}.k, layers.{i}.v)".to_string(),
            });
        }
        let mut layers = Vec::with_capacity(indices.len());
        for index in indices {
            let prefix = format!("layers.{index}.");
            let (shape, [q, k, v]) = read_qkv(&st, &prefix)?;
            let dtype = q.dtype();
            let problem = Problem::new(shape, dtype);
            let optional = |name: &str, dims: [usize; 4]| -> FileResult<Option<Vec<f64>>> {
                let full = format!("{prefix}{name}");
                if !st.names().contains(&full.as_str()) {
                    return Ok(None);
                }
                let (got, data) = tensor(&st, &full, "")?;
                expect_dims(&full, &got, &dims, format!("{dims:?}"))?;
                Ok(Some(data.to_f64_vec()))
            };
            let s = &shape;
            let framework_output = optional("o", [s.batch, s.q_len, s.q_heads, s.head_dim])?;
            let framework_probs = optional("probs", [s.batch, s.q_heads, s.q_len, s.kv_len])?;
            layers.push(Layer {
                index,
                shape,
                dtype,
                inputs: HostInputs::dense(&problem, q, k, v),
                framework_output,
                framework_probs,
            });
        }
        let tokens = match metadata.get("tokens") {
            None => None,
            Some(json) => Some(parse_tokens(json, &layers[0].shape)?),
        };
        Ok(ModelDump {
            layers,
            tokens,
            metadata,
        })
    }

    /// The token string of key `key` in batch entry `batch`, when the file carries tokens.
    pub fn token(&self, batch: usize, key: usize) -> Option<&str> {
        self.tokens
            .as_ref()?
            .get(batch)?
            .get(key)
            .map(String::as_str)
    }
}

fn parse_tokens(json: &str, shape: &Shape) -> FileResult<Vec<Vec<String>>> {
    let bad = |message: String| FileError::Metadata {
        key: "tokens".to_string(),
        message,
    };
    let tokens: Vec<Vec<String>> = serde_json::from_str(json)
        .map_err(|e| bad(format!("expected a JSON array of arrays of strings: {e}")))?;
    if tokens.len() != shape.batch || tokens.iter().any(|t| t.len() != shape.kv_len) {
        let lens: Vec<usize> = tokens.iter().map(Vec::len).collect();
        return Err(bad(format!(
            "expected {} arrays of {} tokens (B, Nk), got lengths {lens:?}",
            shape.batch, shape.kv_len
        )));
    }
    Ok(tokens)
}

/// The outputs of one call as safetensors bytes: `o` (the problem's dtype, `[B, Nq, Hq, d]`),
/// `lse` (`[B, Hq, Nq]`), `stats` (`[B, Hq, Stat::COUNT]`, names in the metadata entry `stats`)
/// and `key_mass` (`[B, Hq, Nk]`) when computed; `metadata` is added to the header.
///
/// # Errors
/// [`FileError::Format`] if an output's length does not match the problem.
pub fn write_outputs(
    problem: &Problem,
    outputs: &HostOutputs,
    metadata: BTreeMap<String, String>,
) -> FileResult<Vec<u8>> {
    let s = &problem.shape;
    let f32_bytes = |x: &[f32]| bytemuck::cast_slice::<f32, u8>(x).to_vec();
    let dtype = match outputs.o.dtype() {
        DType::F32 => Dtype::F32,
        DType::F16 => Dtype::F16,
        DType::Bf16 => Dtype::BF16,
    };
    let mut owned: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = vec![
        (
            "o",
            dtype,
            vec![s.batch, s.q_len, s.q_heads, s.head_dim],
            outputs.o.as_bytes().to_vec(),
        ),
        (
            "lse",
            Dtype::F32,
            vec![s.batch, s.q_heads, s.q_len],
            f32_bytes(&outputs.lse),
        ),
    ];
    if let Some(stats) = &outputs.stats {
        owned.push((
            "stats",
            Dtype::F32,
            vec![s.batch, s.q_heads, Stat::COUNT],
            f32_bytes(stats),
        ));
    }
    if let Some(km) = &outputs.key_mass {
        owned.push((
            "key_mass",
            Dtype::F32,
            vec![s.batch, s.q_heads, s.kv_len],
            f32_bytes(km),
        ));
    }
    let mut views = Vec::with_capacity(owned.len());
    for (name, dtype, dims, bytes) in &owned {
        let view = TensorView::new(*dtype, dims.clone(), bytes)
            .map_err(|e| FileError::Format(format!("output `{name}`: {e}")))?;
        views.push((*name, view));
    }
    let mut header: HashMap<String, String> = metadata.into_iter().collect();
    if outputs.stats.is_some() {
        let names: Vec<&str> = Stat::ALL.iter().map(|s| s.name()).collect();
        header.insert("stats".to_string(), names.join(","));
    }
    safetensors::serialize(views, Some(header)).map_err(|e| FileError::Format(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cases::{InputSpec, random_inputs};
    use crate::reference::Reference;
    use crate::{Backend, StatsLevel};

    fn file(tensors: &[(&str, DType, Vec<usize>, &HostTensor)]) -> Vec<u8> {
        let views: Vec<(&str, TensorView<'_>)> = tensors
            .iter()
            .map(|(name, dtype, dims, t)| {
                let dt = match dtype {
                    DType::F32 => Dtype::F32,
                    DType::F16 => Dtype::F16,
                    DType::Bf16 => Dtype::BF16,
                };
                (
                    *name,
                    TensorView::new(dt, dims.clone(), t.as_bytes()).unwrap(),
                )
            })
            .collect();
        safetensors::serialize(views, None).unwrap()
    }

    #[test]
    fn a_call_round_trips_through_a_file() {
        let shape = Shape::new(1, 4, 2, 5, 7, 16);
        let problem = Problem::new(shape, DType::Bf16).with_variant(Variant::KvSink);
        let inputs = random_inputs(&problem, &InputSpec::default());
        let qd = vec![1, 5, 4, 16];
        let kd = vec![1, 7, 2, 16];
        let bytes = file(&[
            ("q", DType::Bf16, qd, &inputs.q),
            ("k", DType::Bf16, kd.clone(), &inputs.k),
            ("v", DType::Bf16, kd, &inputs.v),
            (
                "k_sink",
                DType::F32,
                vec![4, 16],
                inputs.params.k_sink.as_ref().unwrap(),
            ),
            (
                "v_sink",
                DType::F32,
                vec![4, 16],
                inputs.params.v_sink.as_ref().unwrap(),
            ),
        ]);
        let call = read_call(&bytes, Variant::KvSink).unwrap();
        assert_eq!(call.shape, shape);
        assert_eq!(call.inputs, inputs);
        assert!(call.ignored.is_empty());

        let problem = problem.with_stats(StatsLevel::HeadsAndKeys);
        let out = Reference.forward(&problem, &call.inputs).unwrap();
        let written = write_outputs(&problem, &out, BTreeMap::new()).unwrap();
        let st = SafeTensors::deserialize(&written).unwrap();
        assert_eq!(st.tensor("o").unwrap().data(), out.o.as_bytes());
        assert_eq!(st.tensor("stats").unwrap().shape(), &[1, 4, Stat::COUNT]);
        assert_eq!(st.tensor("key_mass").unwrap().shape(), &[1, 4, 7]);
    }

    #[test]
    fn the_gate_rank_picks_the_granularity() {
        let shape = Shape::new(1, 2, 2, 3, 3, 8);
        let variant = Variant::ContextScale {
            gate: crate::Gate::Sigmoid,
            granularity: GateGranularity::PerHead,
        };
        let problem = Problem::new(shape, DType::F32).with_variant(Variant::ContextScale {
            gate: crate::Gate::Sigmoid,
            granularity: GateGranularity::PerChannel,
        });
        let inputs = random_inputs(&problem, &InputSpec::default());
        let d = vec![1, 3, 2, 8];
        let bytes = file(&[
            ("q", DType::F32, d.clone(), &inputs.q),
            ("k", DType::F32, d.clone(), &inputs.k),
            ("v", DType::F32, d.clone(), &inputs.v),
            ("gate", DType::F32, d, inputs.params.gate.as_ref().unwrap()),
        ]);
        let call = read_call(&bytes, variant).unwrap();
        assert_eq!(call.variant, problem.variant);
    }
}
