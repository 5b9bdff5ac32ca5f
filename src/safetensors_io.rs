//! Attention inputs read from, and outputs written to, safetensors files (feature `safetensors`).
//!
//! Two file layouts, both with tensors laid out `[B, N, H, d]` as the contract's dense layout:
//!
//! - **one call** ([`read_call`]), as `outlier-attn run` replays it: tensors `q`, `k`, `v` (f32,
//!   f16 or bf16, one dtype for the three) and the variant's parameters `k_sink`, `v_sink`,
//!   `v_bias` (`[Hq, d]`), `sink_logits` (`[Hq]`) and `gate` (`[B, Nq, Hq]` or `[B, Nq, Hq, d]`,
//!   the dtype of `q`). Learned parameters stored as f16 or bf16 are widened to f32 (exactly).
//!   Engine-shaped calls (DESIGN.md section 6) are told by the tensors present, index tensors
//!   being i32: packed Q `q` `[total_q, Hq, d]` with `cu_seqlens_q` `[B + 1]`; packed K/V `k`,
//!   `v` `[total_k, Hkv, d]` with `cu_seqlens_k` `[B + 1]`; a dense cache with lengths adds
//!   `seqlens_k` `[B]` to `k`, `v` `[B, Nk, Hkv, d]`; a paged cache is `k_cache`, `v_cache`
//!   `[pages, page_size, Hkv, d]` with `block_table` `[B, max_pages]` and `seqlens_k` `[B]`; a
//!   packed gate is `[total_q, Hq]` or `[total_q, Hq, d]`. Nq and Nk of the call are its longest
//!   sequences.
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
    DType, Dim, GateGranularity, HostInputs, HostOutputs, HostTensor, KvSeqs, Params, Problem,
    QuerySeqs, SeqIndices, Sequences, Shape, Stat, TensorName, Variant,
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

/// Reads dense Q, K and V named `prefix` + `q`/`k`/`v` (a model dump's layers) and checks
/// their dims against each other.
fn read_qkv(st: &SafeTensors<'_>, prefix: &str) -> FileResult<(Shape, [HostTensor; 3])> {
    let hint = " (attention inputs are q, k, v laid out [B, N, H, d])";
    let (qd, q) = tensor(st, &format!("{prefix}q"), hint)?;
    let (kd, k) = tensor(st, &format!("{prefix}k"), hint)?;
    let (vd, v) = tensor(st, &format!("{prefix}v"), hint)?;
    for (name, dims) in [("q", &qd), ("k", &kd), ("v", &vd)] {
        expect_rank(&format!("{prefix}{name}"), dims, 4, "rank 4 [B, N, H, d]")?;
    }
    let shape = Shape::from_dims(&qd, &kd, &vd)?;
    Ok((shape, [q, k, v]))
}

/// An i32 index tensor, if the file has it.
///
/// # Errors
/// [`FileError::DType`] for any other element type.
fn index_tensor(st: &SafeTensors<'_>, name: &str) -> FileResult<Option<(Vec<usize>, Vec<i32>)>> {
    let Ok(view) = st.tensor(name) else {
        return Ok(None);
    };
    if view.dtype() != Dtype::I32 {
        return Err(FileError::DType {
            name: name.to_string(),
            got: view.dtype().to_string(),
            expected: "I32",
        });
    }
    let values = view
        .data()
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(Some((view.shape().to_vec(), values)))
}

fn expect_rank(name: &str, dims: &[usize], rank: usize, spelt: &str) -> FileResult<()> {
    if dims.len() == rank {
        Ok(())
    } else {
        Err(FileError::Shape {
            name: name.to_string(),
            got: dims.to_vec(),
            expected: spelt.to_string(),
        })
    }
}

/// The longest sequence that cumulative lengths describe (0 when they describe none; bad
/// entries are left for validation to name).
fn longest(cu: &[i32]) -> usize {
    cu.windows(2)
        .map(|w| (w[1] as i64 - w[0] as i64).max(0) as usize)
        .max()
        .unwrap_or(0)
}

/// One call read from a file: what `outlier-attn run` replays.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    /// Sizes: B and the heads from the tensors, Nq and Nk the longest sequences (the dense
    /// tensors' lengths, the cache's capacity for a dense cache with `seqlens_k`).
    pub shape: Shape,
    /// The dtype of `q`.
    pub dtype: DType,
    /// The variant asked for, with the gate granularity of `ContextScale` taken from the rank
    /// of `gate`.
    pub variant: Variant,
    /// The sequence layout, from which tensors the file holds.
    pub seqs: Sequences,
    /// Q, K, V dense in their layouts, the variant's parameters and the index tensors.
    pub inputs: HostInputs,
    /// Tensors in the file the variant does not read.
    pub ignored: Vec<String>,
}

impl Call {
    /// The call's problem: shape, dtype, variant and sequences, no mask, default scalars, no
    /// statistics (the caller adds those).
    pub fn problem(&self) -> Problem {
        Problem::new(self.shape, self.dtype)
            .with_variant(self.variant)
            .with_seqs(self.seqs)
    }
}

/// Reads one call for `variant` from safetensors bytes (layout in the module docs).
///
/// # Errors
/// A [`FileError`] for a malformed file, a missing tensor, a dtype other than f32/f16/bf16 (i32
/// for index tensors), or dims that disagree; [`FileError::Contract`] for what the contract
/// refuses.
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
    let name = |n: &str| format!("{prefix}{n}");
    let has = |n: &str| st.tensor(&name(n)).is_ok();
    let mut used: Vec<&str> = vec!["q"];
    let mut indices = SeqIndices::none();
    for (tensor, slot) in [
        ("cu_seqlens_q", &mut indices.cu_seqlens_q),
        ("cu_seqlens_k", &mut indices.cu_seqlens_k),
        ("seqlens_k", &mut indices.seqlens_k),
        ("block_table", &mut indices.block_table),
    ] {
        if let Some((dims, values)) = index_tensor(&st, &name(tensor))? {
            let rank = if tensor == "block_table" { 2 } else { 1 };
            let spelt = if rank == 2 {
                "rank 2 [B, max_pages]"
            } else {
                "rank 1"
            };
            expect_rank(&name(tensor), &dims, rank, spelt)?;
            *slot = Some((dims, values));
            used.push(tensor);
        }
    }

    // Q: dense [B, Nq, Hq, d] or packed [total_q, Hq, d] with cu_seqlens_q.
    let hint = " (attention inputs are q, k, v laid out [B, N, H, d], or packed [total, H, d] with cu_seqlens_q / cu_seqlens_k, or a paged k_cache, v_cache [pages, page_size, H, d] with block_table and seqlens_k)";
    let (qd, q) = tensor(&st, &name("q"), hint)?;
    let (batch, q_len, q_seqs) = match qd.len() {
        4 => (qd[0], qd[1], QuerySeqs::Dense),
        3 => {
            let Some((_, cu)) = &indices.cu_seqlens_q else {
                return Err(FileError::Missing {
                    name: name("cu_seqlens_q"),
                    hint: " (q is packed [total_q, Hq, d])".to_string(),
                });
            };
            (
                cu.len().saturating_sub(1),
                longest(cu),
                QuerySeqs::Packed { total: qd[0] },
            )
        }
        _ => {
            return Err(FileError::Shape {
                name: name("q"),
                got: qd,
                expected: "rank 4 [B, Nq, Hq, d] or rank 3 [total_q, Hq, d]".to_string(),
            });
        }
    };
    let (hq, d) = (qd[qd.len() - 2], qd[qd.len() - 1]);

    // K and V: paged, packed or dense.
    let paged = has("k_cache");
    let (k_name, v_name) = if paged {
        ("k_cache", "v_cache")
    } else {
        ("k", "v")
    };
    used.extend([k_name, v_name]);
    let (kd, k) = tensor(&st, &name(k_name), hint)?;
    let (vd, v) = tensor(&st, &name(v_name), hint)?;
    if vd.len() != kd.len() {
        return Err(FileError::Shape {
            name: name(v_name),
            got: vd,
            expected: format!("{kd:?}, the shape of `{}`", name(k_name)),
        });
    }
    // Dims of a rank-3 (packed) tensor are the last three of [batch, seq, heads, channels].
    let all = [Dim::Batch, Dim::Seq, Dim::Heads, Dim::Channels];
    for (dim, (&got, &expected)) in all[4 - kd.len().min(4)..].iter().zip(vd.iter().zip(&kd)) {
        if got != expected {
            return Err(crate::Error::ShapeMismatch {
                tensor: TensorName::V,
                dim: *dim,
                got,
                expected,
                other: TensorName::K,
            }
            .into());
        }
    }
    let lens_k = indices.seqlens_k.as_ref().map(|(_, v)| v.clone());
    let (kv_len, kv_seqs) = if paged {
        expect_rank(&name(k_name), &kd, 4, "rank 4 [pages, page_size, Hkv, d]")?;
        let max_pages = match &indices.block_table {
            Some((dims, _)) => dims[1],
            None => {
                return Err(FileError::Missing {
                    name: name("block_table"),
                    hint: " (k_cache is paged)".to_string(),
                });
            }
        };
        let capacity = max_pages * kd[1];
        let longest_k = lens_k.iter().flatten().map(|&n| n.max(0) as usize).max();
        (
            longest_k.unwrap_or(0).min(capacity),
            KvSeqs::Paged {
                pages: kd[0],
                page_size: kd[1],
                max_pages,
            },
        )
    } else if kd.len() == 3 {
        let Some((_, cu)) = &indices.cu_seqlens_k else {
            return Err(FileError::Missing {
                name: name("cu_seqlens_k"),
                hint: " (k is packed [total_k, Hkv, d])".to_string(),
            });
        };
        (longest(cu), KvSeqs::Packed { total: kd[0] })
    } else {
        expect_rank(
            &name(k_name),
            &kd,
            4,
            "rank 4 [B, Nk, Hkv, d] or rank 3 [total_k, Hkv, d]",
        )?;
        if matches!(q_seqs, QuerySeqs::Dense) && kd[0] != batch {
            return Err(crate::Error::ShapeMismatch {
                tensor: TensorName::K,
                dim: Dim::Batch,
                got: kd[0],
                expected: batch,
                other: TensorName::Q,
            }
            .into());
        }
        let kv = if lens_k.is_some() {
            KvSeqs::DenseWithLens
        } else {
            KvSeqs::Dense
        };
        (kd[1], kv)
    };
    let (hkv, kv_d) = (kd[kd.len() - 2], kd[kd.len() - 1]);
    if kv_d != d {
        return Err(crate::Error::ShapeMismatch {
            tensor: TensorName::K,
            dim: Dim::Channels,
            got: kv_d,
            expected: d,
            other: TensorName::Q,
        }
        .into());
    }
    let shape = Shape::new(batch, hq, hkv, q_len, kv_len, d);
    let seqs = Sequences {
        q: q_seqs,
        kv: kv_seqs,
    };
    let dtype = q.dtype();
    let mut variant = variant;
    let mut params = Params::none();
    let tokens = match q_seqs {
        QuerySeqs::Dense => vec![batch, q_len],
        QuerySeqs::Packed { total } => vec![total],
    };
    let tokens_spelt = match q_seqs {
        QuerySeqs::Dense => format!("B={batch}, Nq={q_len}"),
        QuerySeqs::Packed { total } => format!("total_q={total}"),
    };
    for &param in variant.params() {
        let full = name(param.as_str());
        let key = full.as_str();
        let hint = format!(" (the {} variant needs it)", variant.name());
        let (dims, data) = tensor(&st, key, &hint)?;
        let data = match param {
            TensorName::SinkLogits => {
                expect_dims(key, &dims, &[hq], format!("[Hq={hq}]"))?;
                widen(data)
            }
            TensorName::Gate => {
                let per_head: Vec<usize> = tokens.iter().copied().chain([hq]).collect();
                let per_channel: Vec<usize> = tokens.iter().copied().chain([hq, d]).collect();
                let granularity = if dims == per_head {
                    GateGranularity::PerHead
                } else if dims == per_channel {
                    GateGranularity::PerChannel
                } else {
                    return Err(FileError::Shape {
                        name: key.to_string(),
                        got: dims,
                        expected: format!(
                            "[{tokens_spelt}, Hq={hq}] or [{tokens_spelt}, Hq={hq}, d={d}]"
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
        match param {
            TensorName::KSink => params.k_sink = Some(data),
            TensorName::VSink => params.v_sink = Some(data),
            TensorName::VBias => params.v_bias = Some(data),
            TensorName::SinkLogits => params.sink_logits = Some(data),
            _ => params.gate = Some(data),
        }
    }
    used.extend(variant.params().iter().map(|p| p.as_str()));
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
    let problem = Problem::new(shape, dtype)
        .with_variant(variant)
        .with_seqs(seqs);
    let inputs = HostInputs::dense(&problem, q, k, v)
        .with_params(params)
        .with_indices(indices.map(|(_, values)| values.clone()));
    Ok(Call {
        shape,
        dtype,
        variant,
        seqs,
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

/// The outputs of one call as safetensors bytes: `o` (the problem's dtype, in Q's layout:
/// `[B, Nq, Hq, d]` or `[total_q, Hq, d]`), `lse` (`[B, Hq, Nq]` or `[Hq, total_q]`), `stats`
/// (`[B, Hq, Stat::COUNT]`, names in the metadata entry `stats`) and `key_mass` (`[B, Hq, Nk]`,
/// or `[Hq, total_k]` for packed K) when computed; `metadata` is added to the header.
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
    let (o_dims, lse_dims) = match problem.seqs.q {
        QuerySeqs::Dense => (
            vec![s.batch, s.q_len, s.q_heads, s.head_dim],
            vec![s.batch, s.q_heads, s.q_len],
        ),
        QuerySeqs::Packed { total } => (vec![total, s.q_heads, s.head_dim], vec![s.q_heads, total]),
    };
    let key_mass_dims = match problem.seqs.kv {
        KvSeqs::Packed { total } => vec![s.q_heads, total],
        _ => vec![s.batch, s.q_heads, s.kv_len],
    };
    let mut owned: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = vec![
        ("o", dtype, o_dims, outputs.o.as_bytes().to_vec()),
        ("lse", Dtype::F32, lse_dims, f32_bytes(&outputs.lse)),
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
        owned.push(("key_mass", Dtype::F32, key_mass_dims, f32_bytes(km)));
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
    fn engine_shaped_calls_round_trip_through_a_file() {
        use crate::cases::{KvStorage, SeqCase, engine_inputs};
        let template = Problem::new(Shape::new(1, 4, 2, 1, 1, 16), DType::F16).with_variant(
            Variant::ContextScale {
                gate: crate::Gate::Sigmoid,
                granularity: GateGranularity::PerChannel,
            },
        );
        for (packed_q, kv) in [
            (true, KvStorage::Packed),
            (
                false,
                KvStorage::Paged {
                    page_size: 4,
                    spare_pages: 1,
                },
            ),
            (true, KvStorage::DenseWithLens { spare: 2 }),
        ] {
            let q_lens = if packed_q { vec![3, 1, 2] } else { vec![2; 3] };
            let seqs = SeqCase {
                q_lens,
                kv_lens: vec![5, 9, 2],
                packed_q,
                kv,
            };
            let (problem, inputs) = engine_inputs(&template, &seqs, &InputSpec::default());
            let dims = |t: TensorName| -> Vec<usize> {
                let d = problem.tensor_dims(t);
                match (t, problem.seqs.q, problem.seqs.kv) {
                    (TensorName::Q, QuerySeqs::Packed { .. }, _)
                    | (TensorName::K | TensorName::V, _, KvSeqs::Packed { .. }) => d[1..].to_vec(),
                    _ => d.to_vec(),
                }
            };
            let mut gate_dims = dims(TensorName::Q);
            let gate_len = gate_dims.len();
            gate_dims[gate_len - 1] = 16;
            let i32_tensor = |v: &Vec<i32>| {
                HostTensor::F32(v.iter().map(|&x| f32::from_bits(x as u32)).collect())
            };
            let (k_name, v_name) = match kv {
                KvStorage::Paged { .. } => ("k_cache", "v_cache"),
                _ => ("k", "v"),
            };
            let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = vec![
                (
                    "q".into(),
                    Dtype::F16,
                    dims(TensorName::Q),
                    inputs.q.as_bytes().to_vec(),
                ),
                (
                    k_name.into(),
                    Dtype::F16,
                    dims(TensorName::K),
                    inputs.k.as_bytes().to_vec(),
                ),
                (
                    v_name.into(),
                    Dtype::F16,
                    dims(TensorName::V),
                    inputs.v.as_bytes().to_vec(),
                ),
                (
                    "gate".into(),
                    Dtype::F16,
                    gate_dims,
                    inputs.params.gate.as_ref().unwrap().as_bytes().to_vec(),
                ),
            ];
            for (name, slot) in inputs.indices.slots() {
                if let Some(values) = slot {
                    let shape = if name == TensorName::BlockTable {
                        vec![3, values.len() / 3]
                    } else {
                        vec![values.len()]
                    };
                    owned.push((
                        name.as_str().into(),
                        Dtype::I32,
                        shape,
                        i32_tensor(values).as_bytes().to_vec(),
                    ));
                }
            }
            let views: Vec<(&str, TensorView<'_>)> = owned
                .iter()
                .map(|(n, d, dims, b)| (n.as_str(), TensorView::new(*d, dims.clone(), b).unwrap()))
                .collect();
            let bytes = safetensors::serialize(views, None).unwrap();
            let call = read_call(&bytes, template.variant).unwrap();
            assert_eq!(call.problem(), problem, "{}", seqs.label());
            // Bitwise: the caches hold NaN in the slots no sequence uses.
            let (a, b) = (&call.inputs, &inputs);
            for (x, y) in [(&a.q, &b.q), (&a.k, &b.k), (&a.v, &b.v)] {
                assert!(x.as_bytes() == y.as_bytes(), "{}", seqs.label());
            }
            let gate = |i: &HostInputs| i.params.gate.as_ref().map(|g| g.as_bytes().to_vec());
            assert!(gate(a) == gate(b));
            assert_eq!(a.layouts, b.layouts, "{}", seqs.label());
            assert_eq!(a.indices, b.indices, "{}", seqs.label());
            assert!(call.ignored.is_empty());
        }
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
