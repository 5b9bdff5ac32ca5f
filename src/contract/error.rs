//! The one error type of the crate.

use super::dtype::DType;
use super::shape::{Dim, TensorName};

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every refusal of the contract, and the failures of backends.
///
/// Messages name the tensor and the dimension concerned and carry the offending values.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A tensor given as a dimension list has the wrong rank.
    #[error("{tensor}: expected rank 4 [batch, seq, heads, channels], got rank {rank}")]
    Rank {
        /// The tensor.
        tensor: TensorName,
        /// Its rank.
        rank: usize,
    },
    /// Two tensors disagree on a dimension.
    #[error("{tensor}: {dim} is {got}, expected {expected} to match {other}")]
    ShapeMismatch {
        /// The tensor found wrong.
        tensor: TensorName,
        /// The dimension.
        dim: Dim,
        /// Its size.
        got: usize,
        /// The size of `other` in that dimension.
        expected: usize,
        /// The tensor it must match.
        other: TensorName,
    },
    /// A dimension of size zero.
    #[error("{tensor}: {dim} is zero")]
    ZeroDim {
        /// The tensor.
        tensor: TensorName,
        /// The dimension.
        dim: Dim,
    },
    /// Hq is not a multiple of Hkv.
    #[error("q: heads (dim 2) is {q_heads}, not a multiple of the {kv_heads} kv heads of k")]
    HeadGroups {
        /// Hq.
        q_heads: usize,
        /// Hkv.
        kv_heads: usize,
    },
    /// The head dim is not a multiple of 8 in 8..=256.
    #[error(
        "q: channels (dim 3) is {head_dim}; the head dim must be a multiple of 8 from 8 to 256"
    )]
    HeadDim {
        /// d.
        head_dim: usize,
    },
    /// The channel dimension is not contiguous.
    #[error("{tensor}: channels (dim 3) have stride {stride}; they must be contiguous (stride 1)")]
    ChannelStride {
        /// The tensor.
        tensor: TensorName,
        /// The stride given.
        stride: u64,
    },
    /// Offset and strides reach past the end of the buffer.
    #[error("{tensor}: offset and strides reach element {needed}, but the buffer holds {len}")]
    BufferTooShort {
        /// The tensor.
        tensor: TensorName,
        /// One past the largest index reached.
        needed: u64,
        /// Elements in the buffer.
        len: u64,
    },
    /// Offset and strides overflow 64-bit indexing.
    #[error("{tensor}: offset and strides overflow 64-bit indexing")]
    IndexOverflow {
        /// The tensor.
        tensor: TensorName,
    },
    /// An output whose strides make two elements share a place.
    #[error("{tensor}: strides make distinct elements overlap; an output must not alias itself")]
    OverlappingOutput {
        /// The tensor.
        tensor: TensorName,
    },
    /// A tensor has the wrong dtype.
    #[error("{tensor}: dtype is {got}, expected {expected}")]
    DType {
        /// The tensor.
        tensor: TensorName,
        /// Its dtype.
        got: DType,
        /// The dtype required.
        expected: DType,
    },
    /// A scalar argument is not finite or out of its range.
    #[error("{name} = {value} is invalid: it must be {requirement}")]
    Scalar {
        /// The argument (`scale`, `softcap`, `sigmoid bias`, `zeta`, `gamma`).
        name: &'static str,
        /// The value given.
        value: f32,
        /// What it must be.
        requirement: &'static str,
    },
    /// A parameter the variant needs was not given.
    #[error("{param} is required by the {variant} variant")]
    MissingParam {
        /// The parameter.
        param: TensorName,
        /// The variant's name.
        variant: &'static str,
    },
    /// A parameter the variant does not use was given.
    #[error("{param} is not used by the {variant} variant")]
    ExtraParam {
        /// The parameter.
        param: TensorName,
        /// The variant's name.
        variant: &'static str,
    },
    /// A parameter or output buffer has the wrong number of elements.
    #[error("{tensor}: holds {got} elements, expected {expected} ({layout})")]
    Size {
        /// The tensor.
        tensor: TensorName,
        /// Elements given.
        got: usize,
        /// Elements required.
        expected: usize,
        /// The shape it must have, spelt out (`[Hq=8, d=64]`).
        layout: String,
    },
    /// An output buffer was given that the statistics level does not produce.
    #[error("{tensor}: given, but the statistics level {level} does not write it")]
    UnexpectedOutput {
        /// The tensor.
        tensor: TensorName,
        /// The level asked for.
        level: &'static str,
    },
    /// Cumulative sequence lengths that do not start at 0.
    #[error("{tensor}[0] = {value}: cumulative sequence lengths must start at 0")]
    SeqStart {
        /// `cu_seqlens_q` or `cu_seqlens_k`.
        tensor: TensorName,
        /// The first entry.
        value: i64,
    },
    /// Cumulative sequence lengths that decrease.
    #[error(
        "{tensor}[{index}] = {value} is below the entry before it ({previous}): cumulative sequence lengths must not decrease"
    )]
    SeqOrder {
        /// `cu_seqlens_q` or `cu_seqlens_k`.
        tensor: TensorName,
        /// The entry that decreases.
        index: usize,
        /// Its value.
        value: i64,
        /// The entry before it.
        previous: i64,
    },
    /// Cumulative sequence lengths whose last entry is not the packed tensor's length.
    #[error(
        "{tensor}[B] = {value}, but the packed tensor holds {total} tokens: the last entry must equal the total"
    )]
    SeqEnd {
        /// `cu_seqlens_q` or `cu_seqlens_k`.
        tensor: TensorName,
        /// The last entry.
        value: i64,
        /// Tokens in the packed tensor (its dimension 0).
        total: usize,
    },
    /// A sequence longer than the call declares or its cache holds, or of negative length.
    #[error("{tensor}: sequence {batch} has length {len}, outside [0, {max}] ({limit})")]
    SeqLen {
        /// The index tensor that gives the length.
        tensor: TensorName,
        /// The sequence.
        batch: usize,
        /// Its length.
        len: i64,
        /// The largest length allowed.
        max: usize,
        /// What bounds it.
        limit: &'static str,
    },
    /// A block-table entry, among the pages a sequence uses, outside the caches.
    #[error(
        "block_table[{batch}, {page}] = {value} is outside [0, {pages}), the pages of the k/v caches (dim 0)"
    )]
    PageIndex {
        /// The sequence.
        batch: usize,
        /// The logical page.
        page: usize,
        /// The entry.
        value: i64,
        /// Physical pages in the caches.
        pages: usize,
    },
    /// A paged-cache setting out of range.
    #[error("paged cache: {field} = {value} is invalid: it must be {requirement}")]
    Paging {
        /// `page_size`, `pages` or `max_pages`.
        field: &'static str,
        /// The value given.
        value: usize,
        /// What it must be.
        requirement: String,
    },
    /// An index tensor the sequence layout reads was not given.
    #[error("{tensor}: required by the {layout} sequence layout")]
    MissingIndex {
        /// The index tensor.
        tensor: TensorName,
        /// The layout ([`Sequences::label`](crate::Sequences::label)).
        layout: String,
    },
    /// An index tensor the sequence layout does not read was given.
    #[error("{tensor}: given, but the {layout} sequence layout does not read it")]
    UnexpectedIndex {
        /// The index tensor.
        tensor: TensorName,
        /// The layout ([`Sequences::label`](crate::Sequences::label)).
        layout: String,
    },
    /// A window bound given in FlashAttention's signed convention that is below −1.
    #[error("window {side} = {value} is invalid: it must be >= 0, or -1 for no bound")]
    Window {
        /// `left` or `right`.
        side: &'static str,
        /// The value given.
        value: i64,
    },
    /// A backend cannot run a valid problem (a dtype its device lacks, say).
    #[error("{backend}: cannot run this problem: {reason}")]
    Unsupported {
        /// The backend.
        backend: String,
        /// Why.
        reason: String,
    },
    /// A backend is not present or failed while running.
    #[error("{backend}: {message}")]
    Backend {
        /// The backend.
        backend: String,
        /// What happened.
        message: String,
    },
}
