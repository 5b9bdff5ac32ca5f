//! Fused attention kernels for plain softmax and the outlier-free attention forms of
//! "Systematic Outliers in Large Language Models" (An et al., ICLR 2025), with per-head outlier
//! statistics computed inside the same pass.
//!
//! # Layers
//! - [`contract`]: shapes, layouts, dtypes, variants, statistics, errors and the one
//!   [`validate`] function every backend calls before a kernel runs (all re-exported here);
//! - [`mod@reference`]: the f64 CPU reference that defines the mathematics, and the parity
//!   rule's same-precision baseline;
//! - [`parity`]: the rule every backend is held to;
//! - [`cases`]: deterministic inputs shared by tests, benches and tools;
//! - [`suites`]: the named problem sets of the `outlier-attn` tool's sweeps and the benches;
//! - `safetensors_io` (feature `safetensors`): attention inputs and model dumps read from
//!   safetensors files, outputs written to them;
//! - one module per GPU backend, behind its cargo feature, depending on the contract only;
//!   [`discover`] finds the ones present;
//! - `cuda_emu` (feature `cuda-emulator`): the CUDA kernels built for the host and run on a CPU
//!   emulator of the CUDA they use, through the CUDA backend's launch plan; listed by
//!   [`discover`] only when asked for by name.
//!
//! # For engines
//! The device-level entries take the engine's own device, stream or encoder and buffers:
//! `cuda::CudaAttention::forward` (feature `cuda`) and `wgsl::WgslAttention::encode` (feature
//! `wgpu`), with `DeviceArgs::dense` and its `with_` methods to build a call's arguments, and
//! `cuda::CudaAttention::prepare_model` to load the kernels before the first forward. cudarc
//! and wgpu are re-exported as `cuda::cudarc` and `wgsl::wgpu`. A CUDA engine with cudarc
//! features of its own depends on this crate with `default-features = false`: the defaults
//! choose cudarc's linking mode (run-time loading) and CUDA version (12.8), which must agree
//! across a build. The README's "For engine authors" has the one-line dependency for each stack
//! and the reasons; `examples/wgpu_engine.rs` and `examples/cuda_engine.rs` are a prefill and a
//! decode step on each.
//!
//! # Variants
//! With s_ij = σ·q_i·k_j (softcapped if asked), p_ij = softmax_j(s_ij) over the visible keys
//! and A_i = Σ_j p_ij v_j:
//!
//! | variant | letter | o_i |
//! | --- | --- | --- |
//! | [`Variant::Softmax`] | (a) | A_i |
//! | [`Variant::ValueBias`] | (b) | A_i + v′ |
//! | [`Variant::ContextBias`] | (c) | A_i + (1 − S_i)·v′, 1 − S_i = e^{s′}/(e^{s′} + Σ_j e^{s_ij}) |
//! | [`Variant::KvSink`] | (d) | (e^{s′} v′ + Σ_j e^{s_ij} v_j)/(e^{s′} + Σ_j e^{s_ij}) |
//! | [`Variant::ContextScale`] | (e) | gate(z_i) ⊙ A_i |
//! | [`Variant::Sigmoid`] | (f) | Σ_j sigmoid(s_ij + β) v_j |
//! | [`Variant::LogitSink`] | (g) | Σ_j e^{s_ij} v_j/(e^{θ} + Σ_j e^{s_ij}) |
//! | [`Variant::Softmax1`] | (h) | Σ_j e^{s_ij} v_j/(1 + Σ_j e^{s_ij}) |
//! | [`Variant::ClippedSoftmax`] | (i) | Σ_j clip((ζ − γ)·p_ij + γ, 0, 1) v_j |
//!
//! # Decisions where DESIGN.md left room
//! - σ and the default β are f32 arguments: 1/√d and −ln Nk are rounded to f32 before use, in
//!   the reference as in the kernels.
//! - Statistics describe the distribution each variant applies to its keys. For `ContextBias`
//!   that is the plain softmax p_ij (its sink only adds a bias): `sink_mass` reports 1 − S_i as
//!   DESIGN.md asks, but the sink is no outcome of the distribution, so `mean_entropy`,
//!   `key_mass` and `row_mass_mean` (= 1) see the keys alone, and Σ_j key_mass equals the
//!   number of rows.
//! - `Sigmoid`: the LSE is ln Σ_j sigmoid(s_ij + β) computed in the log domain
//!   (logsumexp of log-sigmoid), as is the distribution the statistics use; a direct f32 sum
//!   underflows once every score is below about −87, which massive activations make common.
//! - `ClippedSoftmax`: a row whose clipped weights are all 0 has an all-zero distribution
//!   (it contributes 0 to `first_key_mass`, `key_mass` and the entropy, and still counts as a row).
//! - `gate_min/mean/max` run over the rows counted by the statistics (those that see a key).
//! - NaN in Q, K or V propagates to every output it reaches: the rows' O and LSE, and every
//!   statistic that sums over them (the means, `mean_entropy` included, the key mass); a
//!   ClippedSoftmax weight of NaN stays NaN. Maxima and minima (`max_score`, the absmax
//!   values and their channels, `gate_min`/`gate_max`) ignore NaN, as GPU `max`/`fmax` do, so
//!   that one NaN does not hide where the outliers are. ±Inf follows the same arithmetic
//!   (a score of +inf gives e^{inf − inf} = NaN in its row; −inf gives weight 0).
//!   The CUDA kernels follow this (tests/common `nonfinite_cases`, on the emulator), with two
//!   differences a tiled P·V cannot avoid or that were left: a NaN or infinite V element
//!   also reaches, as NaN, that channel of rows of the same query block that the mask hides
//!   its key from, or that see no key (their weight 0 times it is NaN; FlashAttention does
//!   the same); and a `ClippedSoftmax` row whose every visible score is −inf (infinite
//!   inputs only) gets zero weights (O = 0, LSE −inf) where the reference has NaN.
//! - A statistics or key-mass buffer given for a level that does not write it is refused
//!   ([`Error::UnexpectedOutput`]) rather than silently left alone. An output layout whose
//!   strides make elements alias is refused ([`Error::OverlappingOutput`]).
//!
//! # Engine-shaped calls (DESIGN.md section 6), decisions
//! - [`Sequences`] says how Q and K/V hold the B sequences; the shape's `q_len` and `kv_len`
//!   are the longest sequences (FlashAttention's max_seqlen_q/k), the capacity for a dense
//!   cache with `seqlens_k`. The key mass of a paged call is `[B, Hq, kv_len]` with the declared
//!   `kv_len` (DESIGN.md's max_b Nk_b when the caller declares it exactly, as `run` does).
//! - `Sigmoid`'s default β is −ln Nk_b of each sequence, computed in f32
//!   ([`Validated::sigmoid_bias_for`]).
//! - Sequences may be empty (cumulative lengths may repeat). A sequence with no queries writes
//!   nothing and its records have no row to describe: row means are NaN, `max_score` is −inf,
//!   its Q statistics NaN. A sequence with no keys has rows that see no key (DESIGN.md section
//!   2 says what they give) and NaN K/V statistics and `v0_norm_ratio`.
//! - A [`Mask::Window`] that is no window at all, or only causal, is [`Mask::None`] or
//!   [`Mask::Causal`] after validation ([`Mask::window`]); FlashAttention's −1 is `None`
//!   ([`Mask::from_signed`]). A window masks keys only; sinks are never masked.
//! - Host-level calls check the index tensors' values ([`validate_indices`]); entries of
//!   `block_table` past the pages a sequence uses are never read and never checked (engines
//!   leave −1 there). Device-level calls see only their lengths.
//! - Bad index tensors on the device. A device-level call cannot have its index values checked
//!   (they live on the device), so every kernel clamps each index it computes into the
//!   buffers it was given and never reads or writes outside them, and: a row that reads a
//!   `block_table` entry outside `[0, pages)` is written as NaN (O and LSE, every head; rows of
//!   that sequence that do not read it may be NaN too, rows of other sequences are not); a
//!   sequence whose `seqlens_k` is outside `[0, capacity]` has every row NaN; cumulative
//!   lengths that do not start at 0, decrease, end anywhere but the tensor's length or hold a
//!   sequence longer than the shape declares make every row of the call NaN (sequences can no
//!   longer be told apart). A sequence with a NaN row has an all-NaN statistics record and NaN
//!   key mass (its own keys of packed K, its whole row `[0, Nk)` otherwise: a bad `seqlens_k`
//!   no longer says where the sequence ends). `tests/common` (`bad_index_cases`, `check_bad_index_outputs`) holds kernels to
//!   this.
//! - The LSE buffer is optional at the device level ([`Args::lse`]); host-level calls always
//!   return it. A dense parameter must hold exactly its elements; one given as a view (an
//!   offset and strides in [`Layouts::params`]) may sit anywhere inside a larger buffer.
#![warn(missing_docs)]

mod backends;
pub mod cases;
pub mod contract;
#[cfg(any(feature = "cuda", feature = "cuda-emulator"))]
pub mod cuda;
#[cfg(feature = "cuda-emulator")]
pub mod cuda_emu;
pub mod parity;
pub mod reference;
#[cfg(feature = "safetensors")]
pub mod safetensors_io;
pub mod suites;
#[cfg(feature = "wgpu")]
pub mod wgsl;

pub use backends::{Discovery, ON_REQUEST, discover, discover_named};
pub use contract::*;
