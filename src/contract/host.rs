//! Host tensors in, host tensors out: the level at which every backend is compared.

use super::dtype::{DType, HostTensor};
use super::error::Result;
use super::problem::{Args, BufferArg, Problem, TensorArg, Validated, validate};
use super::seqs::{SeqIndices, validate_indices};
use super::shape::{Layout, Layouts, TensorName};
use super::stats::{HeadStats, Stat};
use super::variant::Params;

/// The inputs of one call on the host: Q, K, V (any dtype, any valid layout), the variant's
/// parameters and the index tensors of the sequence layout.
#[derive(Clone, Debug, PartialEq)]
pub struct HostInputs {
    /// Q `[B, Nq, Hq, d]` (or packed `[total_q, Hq, d]`) as laid out by `layouts.q`.
    pub q: HostTensor,
    /// K `[B, Nk, Hkv, d]` (packed `[total_k, Hkv, d]`, paged `[pages, page_size, Hkv, d]`)
    /// as laid out by `layouts.k`.
    pub k: HostTensor,
    /// V, shaped as K, as laid out by `layouts.v`.
    pub v: HostTensor,
    /// Layouts of Q, K, V and of parameters given as views; `layouts.o` is where the output
    /// would go on a device and is ignored by host-level calls, which return O dense.
    pub layouts: Layouts,
    /// The variant's learned tensors.
    pub params: Params<HostTensor>,
    /// The index tensors the sequence layout reads (none for dense calls).
    pub indices: SeqIndices<Vec<i32>>,
}

impl HostInputs {
    /// Contiguous inputs in the problem's sequence layout (`[B, N, H, d]` for a dense call,
    /// `[total, H, d]` packed, `[pages, page_size, Hkv, d]` paged), with no parameters and no
    /// index tensors.
    pub fn dense(problem: &Problem, q: HostTensor, k: HostTensor, v: HostTensor) -> HostInputs {
        HostInputs {
            q,
            k,
            v,
            layouts: problem.contiguous_layouts(),
            params: Params::none(),
            indices: SeqIndices::none(),
        }
    }

    /// With parameters.
    pub fn with_params(mut self, params: Params<HostTensor>) -> HostInputs {
        self.params = params;
        self
    }

    /// With index tensors.
    pub fn with_indices(mut self, indices: SeqIndices<Vec<i32>>) -> HostInputs {
        self.indices = indices;
        self
    }

    /// Validates `problem` against these inputs and a dense host output of the right size,
    /// and the values of the index tensors: a host-level call checks every index before any
    /// kernel runs.
    ///
    /// # Errors
    /// Every refusal of [`validate`] and of [`validate_indices`].
    pub fn validate(&self, problem: &Problem) -> Result<Validated> {
        let s = &problem.shape;
        let tensor = |t: &HostTensor, layout: Layout| TensorArg {
            dtype: t.dtype(),
            len: t.len(),
            layout,
        };
        let f32_buffer = |len| BufferArg {
            dtype: DType::F32,
            len,
        };
        let [_, o_tokens, _, _] = problem.tensor_dims(TensorName::O);
        let o_layout = Layout::contiguous(o_tokens, s.q_heads, s.head_dim);
        let args = Args {
            q: tensor(&self.q, self.layouts.q),
            k: tensor(&self.k, self.layouts.k),
            v: tensor(&self.v, self.layouts.v),
            o: TensorArg {
                dtype: problem.dtype,
                len: problem.q_tokens() * s.q_heads * s.head_dim,
                layout: o_layout,
            },
            lse: Some(f32_buffer(problem.lse_len())),
            stats: problem
                .stats
                .heads()
                .then(|| f32_buffer(s.heads_total() * Stat::COUNT)),
            key_mass: problem
                .stats
                .keys()
                .then(|| f32_buffer(problem.key_mass_len())),
            params: self.params.map(|t| BufferArg {
                dtype: t.dtype(),
                len: t.len(),
            }),
            param_layouts: self.layouts.params,
            indices: self.indices.lens(),
        };
        let checked = validate(problem, &args)?;
        validate_indices(s, &problem.seqs, &self.indices)?;
        Ok(checked)
    }
}

/// The outputs of one call on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct HostOutputs {
    /// O, dense in Q's sequence layout (`[B, Nq, Hq, d]` or `[total_q, Hq, d]`), in the
    /// problem's dtype.
    pub o: HostTensor,
    /// LSE `[B, Hq, Nq]` (or `[Hq, total_q]` for packed Q), natural log; host-level calls
    /// always return it.
    pub lse: Vec<f32>,
    /// Statistics `[B, Hq, Stat::COUNT]` when the level asks for them.
    pub stats: Option<Vec<f32>>,
    /// Key mass ([`Problem::key_mass_len`]) when the level is `HeadsAndKeys`.
    pub key_mass: Option<Vec<f32>>,
}

impl HostOutputs {
    /// The statistics record of (batch `b`, query head `h`), when statistics were computed.
    pub fn head_stats(&self, problem: &Problem, b: usize, h: usize) -> Option<HeadStats> {
        let start = (b * problem.shape.q_heads + h) * Stat::COUNT;
        let record = self.stats.as_ref()?.get(start..start + Stat::COUNT)?;
        let mut r = [0.0; Stat::COUNT];
        r.copy_from_slice(record);
        Some(HeadStats::from_record(&r))
    }
}

/// A backend seen from the host: validated host inputs in, host outputs out.
///
/// Every backend implements this so that one test harness can hold each of them to the
/// reference. Engines use each backend's device-level entry points instead.
pub trait Backend {
    /// A name saying which backend and device this is (`"wgsl (llvmpipe)"`).
    fn name(&self) -> String;

    /// Lines that explain the choice: device or adapter, its features, and which kernel path
    /// each one selects. Defaults to the name alone.
    fn describe(&self) -> Vec<String> {
        vec![self.name()]
    }

    /// Runs one forward pass.
    ///
    /// # Errors
    /// Every refusal of [`validate`](crate::validate), [`Error::Unsupported`](crate::Error)
    /// for a valid problem the device cannot run, and [`Error::Backend`](crate::Error) for
    /// failures of the device.
    fn forward(&self, problem: &Problem, inputs: &HostInputs) -> Result<HostOutputs>;

    /// Device-side times of `reps` forward passes of `problem` after `warmup` untimed ones,
    /// one per pass, measured with the device's own timer (CUDA events, WebGPU timestamp
    /// queries) around the kernels only. `Ok(None)`, the default, means the backend has no
    /// device timer; tools then time [`forward`](Backend::forward) on the host.
    ///
    /// # Errors
    /// As [`forward`](Backend::forward).
    fn device_times(
        &self,
        problem: &Problem,
        inputs: &HostInputs,
        warmup: usize,
        reps: usize,
    ) -> Result<Option<Vec<std::time::Duration>>> {
        let _ = (problem, inputs, warmup, reps);
        Ok(None)
    }
}
