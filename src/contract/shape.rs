//! Problem shape, per-tensor layouts and the names used in error messages.

use std::fmt;

use super::error::{Error, Result};
use super::variant::Params;

/// The tensors of the contract, as named in error messages and file formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TensorName {
    /// Queries `[B, Nq, Hq, d]`.
    Q,
    /// Keys `[B, Nk, Hkv, d]`.
    K,
    /// Values `[B, Nk, Hkv, d]`.
    V,
    /// Output `[B, Nq, Hq, d]`.
    O,
    /// Log-sum-exp `[B, Hq, Nq]`, f32.
    Lse,
    /// Per-head statistics `[B, Hq, Stat::COUNT]`, f32.
    Stats,
    /// Accumulated attention per key `[B, Hq, Nk]`, f32.
    KeyMass,
    /// Learned sink key k′ `[Hq, d]`, f32.
    KSink,
    /// Learned sink value v′ `[Hq, d]`, f32.
    VSink,
    /// Learned value bias v′ `[Hq, d]`, f32.
    VBias,
    /// Learned sink logits θ `[Hq]`, f32.
    SinkLogits,
    /// Gate input z `[B, Nq, Hq]` or `[B, Nq, Hq, d]`, dtype of Q.
    Gate,
    /// Cumulative query lengths `[B + 1]`, i32, of packed Q.
    CuSeqlensQ,
    /// Cumulative key lengths `[B + 1]`, i32, of packed K/V.
    CuSeqlensK,
    /// Key lengths `[B]`, i32, of a dense-with-lengths or paged cache.
    SeqlensK,
    /// Physical page of each logical page `[B, max_pages]`, i32, of a paged cache.
    BlockTable,
}

impl TensorName {
    /// The lowercase name (`q`, `k_sink`, …), as used by files and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            TensorName::Q => "q",
            TensorName::K => "k",
            TensorName::V => "v",
            TensorName::O => "o",
            TensorName::Lse => "lse",
            TensorName::Stats => "stats",
            TensorName::KeyMass => "key_mass",
            TensorName::KSink => "k_sink",
            TensorName::VSink => "v_sink",
            TensorName::VBias => "v_bias",
            TensorName::SinkLogits => "sink_logits",
            TensorName::Gate => "gate",
            TensorName::CuSeqlensQ => "cu_seqlens_q",
            TensorName::CuSeqlensK => "cu_seqlens_k",
            TensorName::SeqlensK => "seqlens_k",
            TensorName::BlockTable => "block_table",
        }
    }
}

impl fmt::Display for TensorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A dimension of a `[batch, seq, heads, channels]` tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    /// Dimension 0.
    Batch,
    /// Dimension 1 (Nq for Q and O, Nk for K and V).
    Seq,
    /// Dimension 2 (Hq for Q and O, Hkv for K and V).
    Heads,
    /// Dimension 3, the head dim d.
    Channels,
}

impl Dim {
    /// Position in the `[batch, seq, heads, channels]` order.
    pub fn index(self) -> usize {
        match self {
            Dim::Batch => 0,
            Dim::Seq => 1,
            Dim::Heads => 2,
            Dim::Channels => 3,
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Dim::Batch => "batch",
            Dim::Seq => "sequence",
            Dim::Heads => "heads",
            Dim::Channels => "channels",
        };
        write!(f, "{name} (dim {})", self.index())
    }
}

/// The problem shape: B, Hq, Hkv, Nq, Nk and d.
///
/// Query head `h` reads key/value head `h / (Hq / Hkv)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    /// B.
    pub batch: usize,
    /// Hq.
    pub q_heads: usize,
    /// Hkv; `q_heads % kv_heads == 0`.
    pub kv_heads: usize,
    /// Nq.
    pub q_len: usize,
    /// Nk.
    pub kv_len: usize,
    /// d, shared by K and V.
    pub head_dim: usize,
}

/// Largest supported head dim.
pub const MAX_HEAD_DIM: usize = 256;
/// Head dims must be a multiple of this.
pub const HEAD_DIM_MULTIPLE: usize = 8;

impl Shape {
    /// A shape from its six sizes; checked by [`validate`](crate::validate), not here.
    pub fn new(
        batch: usize,
        q_heads: usize,
        kv_heads: usize,
        q_len: usize,
        kv_len: usize,
        head_dim: usize,
    ) -> Self {
        Shape {
            batch,
            q_heads,
            kv_heads,
            q_len,
            kv_len,
            head_dim,
        }
    }

    /// The shape of Q, K and V given as `[B, N, H, d]` dimension lists (as a file or a
    /// framework reports them), with every mismatch named.
    ///
    /// # Errors
    /// [`Error::Rank`] when a list is not of length 4, [`Error::ShapeMismatch`] when K or V
    /// disagree with Q (batch, channels) or with each other (everything).
    pub fn from_dims(q: &[usize], k: &[usize], v: &[usize]) -> Result<Shape> {
        for (tensor, dims) in [(TensorName::Q, q), (TensorName::K, k), (TensorName::V, v)] {
            if dims.len() != 4 {
                return Err(Error::Rank {
                    tensor,
                    rank: dims.len(),
                });
            }
        }
        for dim in [Dim::Batch, Dim::Channels] {
            if k[dim.index()] != q[dim.index()] {
                return Err(Error::ShapeMismatch {
                    tensor: TensorName::K,
                    dim,
                    got: k[dim.index()],
                    expected: q[dim.index()],
                    other: TensorName::Q,
                });
            }
        }
        for dim in [Dim::Batch, Dim::Seq, Dim::Heads, Dim::Channels] {
            if v[dim.index()] != k[dim.index()] {
                return Err(Error::ShapeMismatch {
                    tensor: TensorName::V,
                    dim,
                    got: v[dim.index()],
                    expected: k[dim.index()],
                    other: TensorName::K,
                });
            }
        }
        Ok(Shape::new(q[0], q[2], k[2], q[1], k[1], q[3]))
    }

    /// Query heads per key/value head.
    pub fn group_size(&self) -> usize {
        self.q_heads / self.kv_heads.max(1)
    }

    /// The key/value head that query head `h` reads.
    pub fn kv_head(&self, h: usize) -> usize {
        h / self.group_size().max(1)
    }

    /// The `[B, N, H, d]` dims of a data tensor.
    pub fn dims(&self, tensor: TensorName) -> [usize; 4] {
        match tensor {
            TensorName::K | TensorName::V => {
                [self.batch, self.kv_len, self.kv_heads, self.head_dim]
            }
            _ => [self.batch, self.q_len, self.q_heads, self.head_dim],
        }
    }

    /// Elements of the LSE output `[B, Hq, Nq]`.
    pub fn lse_len(&self) -> usize {
        self.batch * self.q_heads * self.q_len
    }

    /// Elements of the key-mass output `[B, Hq, Nk]`.
    pub fn key_mass_len(&self) -> usize {
        self.batch * self.q_heads * self.kv_len
    }

    /// Number of (batch, query head) pairs, one statistics record each.
    pub fn heads_total(&self) -> usize {
        self.batch * self.q_heads
    }

    /// Whether key `j` is visible to query `i` under a bottom-right causal mask.
    pub fn causal_visible(&self, i: usize, j: usize) -> bool {
        // j <= i + (Nk - Nq), kept in unsigned arithmetic.
        j + self.q_len <= i + self.kv_len
    }
}

/// Strides in elements of a `[batch, seq, heads, channels]` tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Strides {
    /// Distance between batches.
    pub batch: u64,
    /// Distance between tokens.
    pub seq: u64,
    /// Distance between heads.
    pub head: u64,
    /// Distance between channels; the contract requires 1.
    pub channel: u64,
}

/// Where a tensor lives in its buffer: an element offset and strides, all 64-bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Layout {
    /// Offset in elements of element `[0, 0, 0, 0]`.
    pub offset: u64,
    /// Per-dimension strides in elements.
    pub strides: Strides,
}

impl Layout {
    /// The dense `[B, N, H, d]` layout at offset 0.
    pub fn contiguous(seq_len: usize, heads: usize, head_dim: usize) -> Layout {
        let (n, h, d) = (seq_len as u64, heads as u64, head_dim as u64);
        Layout {
            offset: 0,
            strides: Strides {
                batch: n * h * d,
                seq: h * d,
                head: d,
                channel: 1,
            },
        }
    }

    /// Element index of `[b, n, h, c]`. The caller has validated the layout, so it fits.
    pub fn index(&self, b: usize, n: usize, h: usize, c: usize) -> usize {
        let s = &self.strides;
        (self.offset
            + b as u64 * s.batch
            + n as u64 * s.seq
            + h as u64 * s.head
            + c as u64 * s.channel) as usize
    }

    /// One past the largest element index the tensor of `dims` reaches, or `None` on overflow.
    pub fn reach(&self, dims: [usize; 4]) -> Option<u64> {
        let s = &self.strides;
        let mut last = self.offset;
        for (size, stride) in dims.iter().zip([s.batch, s.seq, s.head, s.channel]) {
            let steps = (*size as u64).checked_sub(1)?;
            last = last.checked_add(steps.checked_mul(stride)?)?;
        }
        last.checked_add(1)
    }

    /// Whether distinct elements of a tensor of `dims` map to distinct indices (needed for an
    /// output). Sufficient test: each dimension, in increasing stride order, steps past the
    /// whole extent of the smaller ones.
    pub fn is_non_overlapping(&self, dims: [usize; 4]) -> bool {
        let s = &self.strides;
        let mut order: Vec<(u64, u64)> = [s.channel, s.head, s.seq, s.batch]
            .into_iter()
            .zip(dims.iter().rev().map(|&n| n as u64))
            .filter(|&(_, n)| n > 1)
            .collect();
        order.sort_unstable();
        let mut extent: u64 = 1;
        for (stride, n) in order {
            if stride < extent {
                return false;
            }
            match stride
                .checked_mul(n - 1)
                .and_then(|x| x.checked_add(extent))
            {
                Some(e) => extent = e,
                None => return false,
            }
        }
        true
    }
}

/// The layouts of Q, K, V and O, and of the parameters given as views.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Layouts {
    /// Layout of Q.
    pub q: Layout,
    /// Layout of K.
    pub k: Layout,
    /// Layout of V.
    pub v: Layout,
    /// Layout of O.
    pub o: Layout,
    /// Layouts of the parameters given as strided views; an absent slot is a dense tensor at
    /// offset 0. The gate z is viewed as `[B, Nq, Hq, w]` (`[1, total_q, Hq, w]` for packed Q)
    /// with w = 1 per head or d per channel; `k_sink`, `v_sink`, `v_bias` as `[1, 1, Hq, d]`
    /// and `sink_logits` as `[1, 1, Hq, 1]`, so only their offset and head stride matter.
    /// Channels are contiguous wherever w > 1.
    pub params: Params<Layout>,
}

impl Layouts {
    /// Dense `[B, N, H, d]` layouts for every tensor of `shape`.
    pub fn contiguous(shape: &Shape) -> Layouts {
        let q = Layout::contiguous(shape.q_len, shape.q_heads, shape.head_dim);
        let kv = Layout::contiguous(shape.kv_len, shape.kv_heads, shape.head_dim);
        Layouts {
            q,
            k: kv,
            v: kv,
            o: q,
            params: Params::none(),
        }
    }

    /// The layout of one of Q, K, V, O, or of a parameter given as a view.
    pub fn get(&self, tensor: TensorName) -> Option<&Layout> {
        match tensor {
            TensorName::Q => Some(&self.q),
            TensorName::K => Some(&self.k),
            TensorName::V => Some(&self.v),
            TensorName::O => Some(&self.o),
            name => self.params.get(name),
        }
    }
}
