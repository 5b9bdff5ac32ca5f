//! Engine-shaped calls (DESIGN.md section 6): how the B sequences of one call are laid out in
//! Q, K and V, the i32 index tensors that locate them, and the one map from (sequence, token) to
//! a place in a tensor or an output.
//!
//! A call holds B sequences, each with its own query length Nq_b and key length Nk_b, and all
//! of the contract applies to each sequence alone: its own bottom-right causal alignment and
//! window, its own default sigmoid bias −ln Nk_b, its own statistics record per head. The
//! [`Shape`](super::Shape) of such a call gives B and, as FlashAttention's varlen API does, the
//! *longest* sequence: `q_len` is max_b Nq_b (max_seqlen_q) and `kv_len` is max_b Nk_b
//! (max_seqlen_k) for packed and paged keys, the cache capacity Nk for dense ones. Kernels size
//! their grids from these; host-level calls check that no sequence exceeds them.
//!
//! Every tensor stays a 4-dimensional strided view `[outer, token, head, channel]`
//! ([`Layout`](super::Layout)): dense tensors are `[B, N, H, d]`, packed ones `[1, total, H, d]`
//! (their batch stride is never used) and paged caches `[pages, page_size, Hkv, d]`.

use super::error::{Error, Result};
use super::shape::{Dim, Shape, TensorName};

/// How the queries (and so O, the gate and the LSE) of the B sequences are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum QuerySeqs {
    /// Q, O `[B, Nq, Hq, d]`: every sequence has Nq queries. LSE `[B, Hq, Nq]`.
    #[default]
    Dense,
    /// Q, O `[total_q, Hq, d]` (varlen): sequence b holds rows `cu_seqlens_q[b] ..
    /// cu_seqlens_q[b + 1]`. The shape's `q_len` is the longest sequence. LSE `[Hq, total_q]`.
    Packed {
        /// Rows of Q: `cu_seqlens_q[B]`.
        total: usize,
    },
}

/// How the keys and values of the B sequences are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum KvSeqs {
    /// K, V `[B, Nk, Hkv, d]`: every sequence sees all Nk keys. Key mass `[B, Hq, Nk]`.
    #[default]
    Dense,
    /// K, V `[B, Nk, Hkv, d]`, a contiguous cache of capacity Nk: sequence b uses its first
    /// `seqlens_k[b]` keys and the rest is never read. Key mass `[B, Hq, Nk]`, 0 past a
    /// sequence's length.
    DenseWithLens,
    /// K, V `[total_k, Hkv, d]` (varlen): sequence b holds rows `cu_seqlens_k[b] ..
    /// cu_seqlens_k[b + 1]`. The shape's `kv_len` is the longest sequence. Key mass
    /// `[Hq, total_k]`.
    Packed {
        /// Rows of K and V: `cu_seqlens_k[B]`.
        total: usize,
    },
    /// K, V caches `[pages, page_size, Hkv, d]`: key j of sequence b is slot `j % page_size`
    /// of physical page `block_table[b, j / page_size]`, and the sequence has `seqlens_k[b]`
    /// keys. The shape's `kv_len` is the longest sequence (at most `max_pages · page_size`).
    /// Key mass `[B, Hq, kv_len]`, 0 past a sequence's length.
    Paged {
        /// Physical pages in the caches (dimension 0).
        pages: usize,
        /// Tokens per page (dimension 1), any value >= 1.
        page_size: usize,
        /// Entries per sequence in `block_table` `[B, max_pages]`.
        max_pages: usize,
    },
}

/// The sequence layout of one call: queries and keys independently (dense Q with a paged
/// cache is batched decode, packed Q with packed K is varlen prefill).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Sequences {
    /// Layout of Q, O, the gate and the LSE.
    pub q: QuerySeqs,
    /// Layout of K, V and the key mass.
    pub kv: KvSeqs,
}

impl Sequences {
    /// One batch of equal-length sequences: the layout of every call before section 6.
    pub const DENSE: Sequences = Sequences {
        q: QuerySeqs::Dense,
        kv: KvSeqs::Dense,
    };

    /// Whether this is [`Sequences::DENSE`].
    pub fn is_dense(&self) -> bool {
        *self == Sequences::DENSE
    }

    /// Which index tensors this layout reads: `(name, read)` for each of them.
    pub fn index_tensors(&self) -> [(TensorName, bool); 4] {
        [
            (
                TensorName::CuSeqlensQ,
                matches!(self.q, QuerySeqs::Packed { .. }),
            ),
            (
                TensorName::CuSeqlensK,
                matches!(self.kv, KvSeqs::Packed { .. }),
            ),
            (
                TensorName::SeqlensK,
                matches!(self.kv, KvSeqs::DenseWithLens | KvSeqs::Paged { .. }),
            ),
            (
                TensorName::BlockTable,
                matches!(self.kv, KvSeqs::Paged { .. }),
            ),
        ]
    }

    /// A short name for labels and messages: `dense`, `packed-q/paged16`, ….
    pub fn label(&self) -> String {
        let q = match self.q {
            QuerySeqs::Dense => None,
            QuerySeqs::Packed { .. } => Some("packed-q".to_string()),
        };
        let kv = match self.kv {
            KvSeqs::Dense => None,
            KvSeqs::DenseWithLens => Some("lens-k".to_string()),
            KvSeqs::Packed { .. } => Some("packed-k".to_string()),
            KvSeqs::Paged { page_size, .. } => Some(format!("paged{page_size}")),
        };
        match (q, kv) {
            (None, None) => "dense".to_string(),
            (Some(a), None) | (None, Some(a)) => a,
            (Some(a), Some(b)) => format!("{a}/{b}"),
        }
    }
}

/// The i32 index tensors of a call, one slot each; `T` is whatever holds them (host vectors,
/// device buffers, or element counts for validation). A layout reads exactly those of
/// [`Sequences::index_tensors`]; the others must be absent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SeqIndices<T> {
    /// `[B + 1]`: packed Q.
    pub cu_seqlens_q: Option<T>,
    /// `[B + 1]`: packed K/V.
    pub cu_seqlens_k: Option<T>,
    /// `[B]`: dense K/V with lengths, and paged K/V.
    pub seqlens_k: Option<T>,
    /// `[B, max_pages]`, dense, row-major: paged K/V.
    pub block_table: Option<T>,
}

impl<T> SeqIndices<T> {
    /// No index tensors (dense calls).
    pub fn none() -> Self {
        SeqIndices {
            cu_seqlens_q: None,
            cu_seqlens_k: None,
            seqlens_k: None,
            block_table: None,
        }
    }

    /// Every slot with its name.
    pub fn slots(&self) -> [(TensorName, Option<&T>); 4] {
        [
            (TensorName::CuSeqlensQ, self.cu_seqlens_q.as_ref()),
            (TensorName::CuSeqlensK, self.cu_seqlens_k.as_ref()),
            (TensorName::SeqlensK, self.seqlens_k.as_ref()),
            (TensorName::BlockTable, self.block_table.as_ref()),
        ]
    }

    /// Applies `f` to every present index tensor.
    pub fn map<U>(&self, mut f: impl FnMut(&T) -> U) -> SeqIndices<U> {
        SeqIndices {
            cu_seqlens_q: self.cu_seqlens_q.as_ref().map(&mut f),
            cu_seqlens_k: self.cu_seqlens_k.as_ref().map(&mut f),
            seqlens_k: self.seqlens_k.as_ref().map(&mut f),
            block_table: self.block_table.as_ref().map(&mut f),
        }
    }
}

impl SeqIndices<Vec<i32>> {
    /// Element counts, for [`validate`](crate::validate).
    pub fn lens(&self) -> SeqIndices<usize> {
        self.map(Vec::len)
    }
}

/// Elements each index tensor of `seqs` must hold for a batch of `batch` sequences.
fn index_len(seqs: &Sequences, batch: usize, tensor: TensorName) -> (usize, String) {
    match tensor {
        TensorName::CuSeqlensQ | TensorName::CuSeqlensK => {
            (batch + 1, format!("[B+1={}]", batch + 1))
        }
        TensorName::SeqlensK => (batch, format!("[B={batch}]")),
        _ => {
            let max_pages = match seqs.kv {
                KvSeqs::Paged { max_pages, .. } => max_pages,
                _ => 0,
            };
            (
                batch * max_pages,
                format!("[B={batch}, max_pages={max_pages}]"),
            )
        }
    }
}

/// Checks that the layout's index tensors, and only those, are given, each with the length
/// of a batch of `batch` sequences (so that B agrees between them).
fn check_index_lens(seqs: &Sequences, batch: usize, lens: &SeqIndices<usize>) -> Result<()> {
    let layout = seqs.label();
    for ((tensor, read), (_, given)) in seqs.index_tensors().into_iter().zip(lens.slots()) {
        match (read, given) {
            (true, None) => return Err(Error::MissingIndex { tensor, layout }),
            (false, Some(_)) => return Err(Error::UnexpectedIndex { tensor, layout }),
            (true, Some(&len)) => {
                let (expected, spelt) = index_len(seqs, batch, tensor);
                if len != expected {
                    return Err(Error::Size {
                        tensor,
                        got: len,
                        expected,
                        layout: spelt,
                    });
                }
            }
            (false, None) => {}
        }
    }
    Ok(())
}

/// The sequence layout's own settings, and which index tensors it reads, with their lengths.
pub(crate) fn check_sequences(
    s: &Shape,
    seqs: &Sequences,
    indices: &SeqIndices<usize>,
) -> Result<()> {
    if let QuerySeqs::Packed { total: 0 } = seqs.q {
        return Err(Error::ZeroDim {
            tensor: TensorName::Q,
            dim: Dim::Seq,
        });
    }
    match seqs.kv {
        KvSeqs::Packed { total: 0 } => {
            return Err(Error::ZeroDim {
                tensor: TensorName::K,
                dim: Dim::Seq,
            });
        }
        KvSeqs::Paged {
            pages,
            page_size,
            max_pages,
        } => {
            let at_least_one = |field, value: usize| {
                if value == 0 {
                    Err(Error::Paging {
                        field,
                        value,
                        requirement: ">= 1".to_string(),
                    })
                } else {
                    Ok(())
                }
            };
            at_least_one("page_size", page_size)?;
            at_least_one("pages", pages)?;
            at_least_one("max_pages", max_pages)?;
            let capacity = max_pages.saturating_mul(page_size);
            if s.kv_len > capacity {
                return Err(Error::Paging {
                    field: "max_pages",
                    value: max_pages,
                    requirement: format!(
                        "enough for Nk = {} keys: max_pages · page_size = {capacity}",
                        s.kv_len
                    ),
                });
            }
        }
        _ => {}
    }
    check_index_lens(seqs, s.batch, indices)
}

const LIMIT_Q: &str = "Nq of the shape, the longest sequence of the call";
const LIMIT_K: &str = "Nk of the shape, the longest sequence of the call";

/// Checks host index tensors: the layout's settings and its tensors, each of its length (as
/// [`validate`](crate::validate) does), then their values: cumulative lengths start at 0,
/// never decrease and end at the tensor's length; no sequence is longer than the shape
/// declares or its cache holds; every page a sequence uses is in `[0, pages)`. Entries of
/// `block_table` past the pages a sequence uses are not read and may hold anything (engines
/// leave −1 there).
///
/// # Errors
/// [`Error::Paging`] or [`Error::ZeroDim`] for the layout, [`Error::MissingIndex`],
/// [`Error::UnexpectedIndex`] or [`Error::Size`] for the tensors;
/// then the first bad entry: [`Error::SeqStart`], [`Error::SeqOrder`], [`Error::SeqEnd`],
/// [`Error::SeqLen`] or [`Error::PageIndex`].
pub fn validate_indices(
    shape: &Shape,
    seqs: &Sequences,
    indices: &SeqIndices<Vec<i32>>,
) -> Result<()> {
    let b = shape.batch;
    check_sequences(shape, seqs, &indices.lens())?;
    if let (QuerySeqs::Packed { total }, Some(cu)) = (seqs.q, &indices.cu_seqlens_q) {
        check_cumulative(TensorName::CuSeqlensQ, cu, total, shape.q_len, LIMIT_Q)?;
    }
    if let (KvSeqs::Packed { total }, Some(cu)) = (seqs.kv, &indices.cu_seqlens_k) {
        check_cumulative(TensorName::CuSeqlensK, cu, total, shape.kv_len, LIMIT_K)?;
    }
    let capacity = match seqs.kv {
        KvSeqs::DenseWithLens | KvSeqs::Paged { .. } => shape.kv_len,
        _ => return Ok(()),
    };
    let lens = indices.seqlens_k.as_deref().unwrap_or(&[]);
    for (batch, &len) in lens.iter().enumerate().take(b) {
        if len < 0 || len as usize > capacity {
            return Err(Error::SeqLen {
                tensor: TensorName::SeqlensK,
                batch,
                len: len as i64,
                max: capacity,
                limit: match seqs.kv {
                    KvSeqs::Paged { .. } => LIMIT_K,
                    _ => "Nk, the capacity of the dense cache",
                },
            });
        }
    }
    if let (
        KvSeqs::Paged {
            pages,
            page_size,
            max_pages,
        },
        Some(table),
    ) = (seqs.kv, &indices.block_table)
    {
        for (batch, &len) in lens.iter().enumerate().take(b) {
            let used = (len as usize).div_ceil(page_size);
            for page in 0..used {
                let entry = table[batch * max_pages + page];
                if entry < 0 || entry as usize >= pages {
                    return Err(Error::PageIndex {
                        batch,
                        page,
                        value: entry as i64,
                        pages,
                    });
                }
            }
        }
    }
    Ok(())
}

/// Checks cumulative lengths `cu` of a packed tensor of `total` rows whose sequences may be
/// at most `max` long (`limit` says what bounds them).
fn check_cumulative(
    tensor: TensorName,
    cu: &[i32],
    total: usize,
    max: usize,
    limit: &'static str,
) -> Result<()> {
    if cu.first() != Some(&0) {
        return Err(Error::SeqStart {
            tensor,
            value: cu.first().copied().unwrap_or(0) as i64,
        });
    }
    for (index, pair) in cu.windows(2).enumerate() {
        let (previous, value) = (pair[0] as i64, pair[1] as i64);
        if value < previous {
            return Err(Error::SeqOrder {
                tensor,
                index: index + 1,
                value,
                previous,
            });
        }
        if (value - previous) as u64 > max as u64 {
            return Err(Error::SeqLen {
                tensor,
                batch: index,
                len: value - previous,
                max,
                limit,
            });
        }
    }
    let last = *cu.last().unwrap_or(&0) as i64;
    if last != total as i64 {
        return Err(Error::SeqEnd {
            tensor,
            value: last,
            total,
        });
    }
    Ok(())
}

/// One sequence of a call, resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqSpan {
    /// Nq_b.
    pub q_len: usize,
    /// Nk_b.
    pub kv_len: usize,
    /// First row of the sequence in packed Q (0 for dense Q).
    pub q_start: usize,
    /// First row of the sequence in packed K (0 otherwise).
    pub kv_start: usize,
}

/// Where every token of every sequence lives: the one definition of the sequence layouts that
/// the reference, the test inputs and the tools use. Built from host index tensors that
/// [`validate_indices`] accepted.
#[derive(Clone, Debug, PartialEq)]
pub struct SeqMap {
    seqs: Sequences,
    shape: Shape,
    spans: Vec<SeqSpan>,
    block_table: Vec<i32>,
}

impl SeqMap {
    /// The map of a validated call.
    ///
    /// # Errors
    /// Every refusal of [`validate_indices`].
    pub fn new(shape: &Shape, seqs: &Sequences, indices: &SeqIndices<Vec<i32>>) -> Result<SeqMap> {
        validate_indices(shape, seqs, indices)?;
        let entry = |v: &Option<Vec<i32>>, i: usize| v.as_ref().map_or(0, |x| x[i] as usize);
        let spans = (0..shape.batch)
            .map(|b| {
                let (q_start, q_len) = match seqs.q {
                    QuerySeqs::Dense => (0, shape.q_len),
                    QuerySeqs::Packed { .. } => {
                        let s = entry(&indices.cu_seqlens_q, b);
                        (s, entry(&indices.cu_seqlens_q, b + 1) - s)
                    }
                };
                let (kv_start, kv_len) = match seqs.kv {
                    KvSeqs::Dense => (0, shape.kv_len),
                    KvSeqs::DenseWithLens | KvSeqs::Paged { .. } => {
                        (0, entry(&indices.seqlens_k, b))
                    }
                    KvSeqs::Packed { .. } => {
                        let s = entry(&indices.cu_seqlens_k, b);
                        (s, entry(&indices.cu_seqlens_k, b + 1) - s)
                    }
                };
                SeqSpan {
                    q_len,
                    kv_len,
                    q_start,
                    kv_start,
                }
            })
            .collect();
        Ok(SeqMap {
            seqs: *seqs,
            shape: *shape,
            spans,
            block_table: indices.block_table.clone().unwrap_or_default(),
        })
    }

    /// The sequences, in batch order.
    pub fn spans(&self) -> &[SeqSpan] {
        &self.spans
    }

    /// `(outer, token)` of query `i` of sequence `b` in Q's (and O's and the gate's) layout.
    pub fn q_pos(&self, b: usize, i: usize) -> (usize, usize) {
        match self.seqs.q {
            QuerySeqs::Dense => (b, i),
            QuerySeqs::Packed { .. } => (0, self.spans[b].q_start + i),
        }
    }

    /// `(outer, token)` of key `j` of sequence `b` in K's and V's layout.
    pub fn kv_pos(&self, b: usize, j: usize) -> (usize, usize) {
        match self.seqs.kv {
            KvSeqs::Dense | KvSeqs::DenseWithLens => (b, j),
            KvSeqs::Packed { .. } => (0, self.spans[b].kv_start + j),
            KvSeqs::Paged {
                page_size,
                max_pages,
                ..
            } => (
                self.block_table[b * max_pages + j / page_size] as usize,
                j % page_size,
            ),
        }
    }

    /// Index in the LSE output of query `i` of sequence `b`, head `h`.
    pub fn lse_index(&self, b: usize, h: usize, i: usize) -> usize {
        let hq = self.shape.q_heads;
        match self.seqs.q {
            QuerySeqs::Dense => (b * hq + h) * self.shape.q_len + i,
            QuerySeqs::Packed { total } => h * total + self.spans[b].q_start + i,
        }
    }

    /// Index in the key-mass output of key `j` of sequence `b`, head `h`.
    pub fn key_mass_index(&self, b: usize, h: usize, j: usize) -> usize {
        let hq = self.shape.q_heads;
        match self.seqs.kv {
            KvSeqs::Packed { total } => h * total + self.spans[b].kv_start + j,
            _ => (b * hq + h) * self.shape.kv_len + j,
        }
    }
}
