//! Fused attention kernels for plain softmax and the outlier-free attention forms of
//! "Systematic Outliers in Large Language Models" (An et al., ICLR 2025), with per-head outlier
//! statistics computed inside the same pass.
//!
//! The crate is layered:
//! - [`contract`](crate::contract): shapes, layouts, dtypes, variants, statistics, errors and
//!   the one [`validate`] function every backend calls before a kernel runs;
//! - [`reference`]: the f64 CPU reference that defines the mathematics, and the parity rule's
//!   same-precision baseline;
//! - [`parity`]: the rule every backend is held to;
//! - [`cases`]: deterministic problem and input generators shared by tests, benches and tools;
//! - [`suites`]: the named problem sets of the `outlier-attn` tool's sweeps and the benches;
//! - `safetensors_io` (feature `safetensors`): attention inputs and model dumps read from
//!   safetensors files, outputs written to them;
//! - one module per GPU backend, behind its cargo feature, depending on the contract only.
#![warn(missing_docs)]

mod backends;
pub mod cases;
mod contract;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod parity;
pub mod reference;
#[cfg(feature = "safetensors")]
pub mod safetensors_io;
pub mod suites;
#[cfg(feature = "wgpu")]
pub mod wgsl;

pub use backends::{Discovery, discover};
pub use contract::*;
