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

mod args;
mod device;
mod host;
mod kernel;

/// The wgpu this crate is built against (30): an engine on the same semver version shares its
/// `Device`, `Buffer` and `CommandEncoder` with this crate.
pub use ::wgpu;

pub use device::{
    DeviceArgs, DeviceIndex, DeviceSlice, DeviceTensor, UNIFORM_SLOTS, WgslAttention, WgslOptions,
};
pub use host::WgslBackend;
