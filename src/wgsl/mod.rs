//! The WGSL backend, run through wgpu (cargo feature `wgpu`).
//!
//! Hand-written WGSL (`shaders/*.wgsl`, embedded in the crate) computes every variant of the
//! contract with an online softmax, the LSE and the per-head statistics in one fused pass;
//! `HeadsAndKeys` adds a second pass for the key mass. Two levels:
//!
//! - [`WgslAttention`], for engines: it takes the caller's `wgpu::Device` and buffers (with
//!   element offsets and strides, as a KV cache holds them) and records compute passes into
//!   the caller's `CommandEncoder`. Pipelines are cached per specialisation (head dim, dtype,
//!   variant, gate, statistics level, reduction path; the mask is a uniform); the statistics
//!   scratch buffer is reused across calls.
//! - [`WgslBackend`], the crate's [`Backend`](crate::Backend): finds an adapter, opens a
//!   device, uploads, runs and reads back. [`Backend::describe`](crate::Backend::describe)
//!   says which adapter was chosen, which features it has and which path each one selects.
//!
//! Paths and dtypes:
//! - f32, f16 and bf16 on every adapter: 16-bit tensors are bound as 32-bit words and decoded
//!   in the shader (bf16 to f32 is a 16-bit shift), so `SHADER_F16` is not required, and odd
//!   element offsets work. Outputs are rounded to nearest even. Accumulation is f32.
//! - With `Features::SUBGROUP` the per-block statistics reductions use subgroup operations
//!   (the subgroup size is read at run time); [`WgslOptions::subgroups`] = `false` forces the
//!   workgroup-memory path, which every adapter runs.
//! - K/V tiles follow the device's workgroup-memory limit (16 KiB by WebGPU default, 32 KiB
//!   on lavapipe, more on GPUs).
//!
//! Engine-shaped calls (DESIGN.md section 6): sliding windows, packed Q and K/V, dense K/V
//! with `seqlens_k`, paged K/V of any page size. The sequence layout is uniforms, not a
//! specialisation; calls that are not dense first run a small sequence pass
//! (`shaders/seqs.wgsl`) that reads the engine's index tensors ([`DeviceArgs::indices`]), checks
//! them on the device and leaves one record per sequence and a checked block table for the
//! other kernels, so that a bad entry makes rows NaN and never an address outside a buffer.
//!
//! Statistics are deterministic: each query block writes a partial record, and a combine pass
//! folds them in block order; no float atomics anywhere.
//!
//! Split-KV decode ([`WgslOptions::split_kv`], [`SplitKv`](crate::SplitKv), one definition with
//! the CUDA backend): each row's keys are cut into splits of whole K/V tiles, each run by
//! workgroups of its own (grid x: split · query blocks + block), which leave the row's partial
//! (running max m, sum l, a NaN flag, the statistics' sums, the unnormalised output in f32) in
//! the scratch buffer, and each split's last block the K/V statistics of the split's keys; a
//! combine pass (`shaders/split_combine.wgsl`) merges a row's splits in split order, so results
//! stay bit-identical run to run, and ends the row with the forward kernel's own epilogue
//! functions: O (the output's dtype, view and odd offsets as the forward pass writes them),
//! the LSE, the row's statistics record and the key mass's row state. The statistics stay
//! exact under splitting: the entropy's sum is moved to the merged max (t_s + (m_s − M)·l_s,
//! weighed by e^(m_s − M)), the K/V records are folded in split order. A split that sees no key
//! of a row (a window, a shorter sequence) weighs 0 and a row that sees none gets what the
//! unsplit kernel gives it, never a NaN of its own. Sinks join split 0 only; the value bias,
//! ContextBias's share of v' and the gate are applied by the combine; Sigmoid's absolute
//! weights are summed unweighted. Limits: every variant but ClippedSoftmax splits, at every
//! statistics level (ClippedSoftmax needs the final normaliser before any weight); forcing
//! a split of it is refused. `Auto` splits on lavapipe only a call that would otherwise exceed the loop
//! budget (a split brings no parallelism on the CPU, BENCHMARKS.md), on a GPU by
//! FlashAttention-2's heuristic over [`TYPICAL_COMPUTE_UNITS`]; `KeysPerSplit` fixes the chunk,
//! so that a sub-batch gives bit for bit the rows of the full batch.

mod args;
mod device;
mod host;
mod kernel;

/// The wgpu this crate is built against (30): an engine on the same semver version shares its
/// `Device`, `Buffer` and `CommandEncoder` with this crate.
pub use ::wgpu;

pub use device::{
    CPU_ROW_BLOCKS, DeviceArgs, DeviceIndex, DeviceSlice, DeviceTensor, MAX_ROW_BLOCK,
    TYPICAL_COMPUTE_UNITS, UNIFORM_SLOTS, WgslAttention, WgslOptions,
};
pub use host::WgslBackend;
