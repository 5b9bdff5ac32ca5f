//! The launch plan: everything a forward pass needs to launch its kernels, computed once in
//! plain Rust from a validated problem, for every executor (the GPU through cudarc, the CPU
//! through the emulator): the specialisation, each kernel's grid, block and dynamic shared
//! memory, the workspace layout, and the argument block with the buffers' addresses.

use super::params::{KernelParams, TensorLayout};
use super::spec::{
    Arch, COMBINE_ENTRY, COMBINE_WARPS, FINALIZE_ENTRY, KEY_MASS_ENTRY, KernelPath, ROW_RECORD,
    SPLIT_SCALARS, STATS_THREADS, Specialization, partial_record, strided_tiles,
};
use crate::contract::heuristic_splits;
use crate::contract::{
    EngineFeature, Error, Gate, GateGranularity, KvSeqs, Layout, Mask, Problem, QuerySeqs, Result,
    StatsLevel, TensorName, Validated, Variant,
};
pub use crate::contract::{MAX_SPLITS, SplitKv};

/// The backend name in refusals: the plan's limits are the CUDA kernels', on either executor.
const BACKEND: &str = "cuda";

/// The engine-shaped features of DESIGN.md section 6 the kernels implement: all of them.
pub const SUPPORTED: &[EngineFeature] = &[
    EngineFeature::Window,
    EngineFeature::PackedQueries,
    EngineFeature::KeyLengths,
    EngineFeature::PackedKeys,
    EngineFeature::PagedKv,
    EngineFeature::StridedParams,
    EngineFeature::NoLse,
];

/// One kernel launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launch {
    /// Entry point in the module.
    pub entry: &'static str,
    /// Grid (x, y, z).
    pub grid: [u32; 3],
    /// Threads per block (x only).
    pub threads: u32,
    /// Dynamic shared memory in bytes.
    pub dynamic_smem: usize,
}

/// Where the parts of the workspace lie, in f32 elements from its start: the per-block partial
/// statistics records (row statistics and Q/K/V channel statistics, combined by
/// `finalize_stats`), then, with `HeadsAndKeys`, one record per query row for the key-mass
/// kernel (the row's max and 1/l, and ClippedSoftmax's weight sum), then, with split-KV, each
/// row's split partials (its max, sums and unnormalised O per split, merged by the combine).
///
/// In floats, with `blocks = ⌈rows / block_m⌉` (rows = Nq, or fold·Nq for a GQA-folded
/// decode; block_m = 128 on the tensor-core tiles 64 and 128, 64 on tile 256, 8 on the SIMT
/// path), `splits` the plan's split count ([`DecodeCut`]) and `combine = ⌈Nq / 4⌉` when split:
///
/// - `partials` (`Heads`, `HeadsAndKeys`): B·Hq·records·(15 + 3d) with records = blocks
///   unsplit, blocks·splits + combine split (15 sums, then the d channel maxima of Q, K, V);
/// - `rows` (`HeadsAndKeys`): B·Hq·Nq·3;
/// - `splits` (split only): B·Hq·Nq·splits·(8 + d).
///
/// Without split-KV the size never depends on the key length; the split count does (more keys,
/// more splits, up to [`MAX_SPLITS`]; fewer blocks, more splits), so an engine that sizes one
/// workspace before its first call (to capture a forward pass in a CUDA graph) reserves the
/// largest [`WorkspaceLayout::for_problem`] over the calls it will make, at their largest key
/// length (a paged cache's capacity): the split count follows the shape, not the lengths in
/// `seqlens_k`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct WorkspaceLayout {
    /// Floats of partial records (`[B, Hq, records, 15 + 3d]`), at 0.
    pub partials: usize,
    /// Floats of row records (`[B, Hq, Nq, 3]`), after the partials.
    pub rows: usize,
    /// Floats of split partials (`[B, Hq, Nq, splits, 8 + d]`), after the row records.
    pub splits: usize,
}

impl WorkspaceLayout {
    /// The workspace of an unsplit call with `batch` x `q_heads` heads of `q_len` queries at
    /// head dim `head_dim` on `spec`.
    pub fn new(
        spec: Specialization,
        batch: usize,
        q_heads: usize,
        q_len: usize,
        head_dim: usize,
        stats: StatsLevel,
    ) -> WorkspaceLayout {
        let shape = crate::Shape::new(batch, q_heads, q_heads, q_len, 1, head_dim);
        WorkspaceLayout::of_cut(spec, &shape, stats, &DecodeCut::NONE)
    }

    fn of_cut(
        spec: Specialization,
        s: &crate::Shape,
        stats: StatsLevel,
        cut: &DecodeCut,
    ) -> WorkspaceLayout {
        let heads = s.batch * s.q_heads;
        let split = cut.splits > 1;
        WorkspaceLayout {
            partials: if stats.heads() {
                heads * cut.records(spec, s.q_len) * partial_record(s.head_dim)
            } else {
                0
            },
            rows: if stats.keys() {
                heads * s.q_len * ROW_RECORD
            } else {
                0
            },
            splits: if split {
                heads * s.q_len * cut.splits * (SPLIT_SCALARS + s.head_dim)
            } else {
                0
            },
        }
    }

    /// The workspace `problem` needs on a device of `arch` with the default
    /// [`PlanOptions::for_arch`]: what [`LaunchPlan::new`] lays out for it. Without split-KV it
    /// is at least what any call with no larger batch, query heads, query length and head dim,
    /// the same dtype and head-dim tile and no higher statistics level needs.
    pub fn for_problem(problem: &Problem, arch: Arch) -> WorkspaceLayout {
        let options = PlanOptions::for_arch(arch);
        WorkspaceLayout::for_problem_with(problem, arch, &options)
            .expect("the automatic split never refuses")
    }

    /// The workspace `problem` needs on a device of `arch` with `options`.
    ///
    /// # Errors
    /// Those of [`DecodeCut::choose`].
    pub fn for_problem_with(
        problem: &Problem,
        arch: Arch,
        options: &PlanOptions,
    ) -> Result<WorkspaceLayout> {
        let spec = Specialization::select(problem.dtype, problem.shape.head_dim, arch);
        let cut = DecodeCut::choose(problem, spec, options)?;
        Ok(WorkspaceLayout::of_cut(
            spec,
            &problem.shape,
            problem.stats,
            &cut,
        ))
    }

    /// Floats the workspace must hold (0 without statistics and split-KV).
    pub fn len(&self) -> usize {
        self.partials + self.rows + self.splits
    }

    /// Whether the call needs no workspace.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a plan may choose that the contract leaves open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PlanOptions {
    /// Split-KV.
    pub split_kv: SplitKv,
    /// Multiprocessors of the device, which the split heuristic fills.
    pub multiprocessors: u32,
}

impl PlanOptions {
    /// The automatic split on a device of `arch` with the multiprocessors of its usual part
    /// ([`Arch::typical_multiprocessors`]); a GPU executor reads the device's own count.
    pub fn for_arch(arch: Arch) -> PlanOptions {
        PlanOptions {
            split_kv: SplitKv::Auto,
            multiprocessors: arch.typical_multiprocessors(),
        }
    }

    /// With another split setting.
    pub fn with_split_kv(self, split_kv: SplitKv) -> PlanOptions {
        PlanOptions { split_kv, ..self }
    }
}

/// How a plan cuts its work for decode: query heads folded into one block's rows, and splits
/// of the keys.
///
/// - `fold`: with Nq below a block's rows (decode, speculative decode) and Hq/Hkv > 1, the
///   Hq/Hkv query heads that read one kv head share a block (rows interleaved, head fastest), so
///   each K/V tile read from memory serves all of them: Hq/Hkv times less K/V traffic. Not with
///   statistics (their records are per head and per block), packed Q (prefill: its sequences
///   fill blocks) nor on the SIMT path.
/// - `splits`, `tiles_per_split`: split `s` runs K/V tiles [s·tiles_per_split,
///   (s + 1)·tiles_per_split) of every row; 1 split is no split.
///
/// The split heuristic is FlashAttention-2's, written from its description: no split when the
/// blocks fill 80 % of the multiprocessors; else, over the split counts up to [`MAX_SPLITS`] and
/// the key tiles that change the chunk length, the efficiency of a count is its waves
/// (blocks·splits / multiprocessors) over the whole waves they take, and the smallest count
/// within 85 % of the best efficiency wins. ClippedSoftmax needs each row's final normaliser
/// before its first weight, so it never splits (forcing it is refused), nor does the SIMT path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeCut {
    /// Query heads per block.
    pub fold: usize,
    /// Splits of each row's keys.
    pub splits: usize,
    /// K/V tiles per split.
    pub tiles_per_split: usize,
}

impl DecodeCut {
    /// No fold, no split.
    pub const NONE: DecodeCut = DecodeCut {
        fold: 1,
        splits: 1,
        tiles_per_split: 1,
    };

    /// The cut of `problem` on `spec` with `options`.
    ///
    /// # Errors
    /// [`Error::Unsupported`] when `options` force a split where the kernels cannot split
    /// (ClippedSoftmax, the SIMT path).
    pub fn choose(
        problem: &Problem,
        spec: Specialization,
        options: &PlanOptions,
    ) -> Result<DecodeCut> {
        let s = &problem.shape;
        let group = s.group_size();
        let tensor_core = matches!(spec.path, KernelPath::TensorCore(_));
        let dense_q = matches!(problem.seqs.q, QuerySeqs::Dense);
        let fold = if tensor_core
            && dense_q
            && !problem.stats.heads()
            && group > 1
            && s.q_len < spec.block_m()
        {
            group
        } else {
            1
        };
        let block_n = match spec.path {
            KernelPath::TensorCore(t) => t.block_n(),
            KernelPath::Simt => 1,
        };
        let tiles = s.kv_len.div_ceil(block_n).max(1);
        let blocks = s.batch * (s.q_heads / fold) * (fold * s.q_len).div_ceil(spec.block_m());
        let can_split =
            spec.splits_kv() && !matches!(problem.variant, Variant::ClippedSoftmax { .. });
        let refuse = || {
            let why = if spec.splits_kv() {
                "ClippedSoftmax needs each row's final normaliser before any weight"
            } else {
                "the SIMT kernel"
            };
            Err(Error::Unsupported {
                backend: BACKEND.to_string(),
                reason: format!("split-KV was forced, but {why} does not split"),
            })
        };
        let sms = options.multiprocessors.max(1) as usize;
        let tiles_per_split = match options.split_kv {
            SplitKv::Off => tiles,
            SplitKv::Auto if !can_split => tiles,
            SplitKv::On | SplitKv::KeysPerSplit(_) if !can_split => return refuse(),
            SplitKv::Auto => tiles.div_ceil(heuristic_splits(blocks, tiles, sms, false)),
            SplitKv::On => tiles.div_ceil(heuristic_splits(blocks, tiles, sms, true)),
            SplitKv::KeysPerSplit(keys) => keys.div_ceil(block_n).max(1),
        };
        Ok(DecodeCut {
            fold,
            splits: tiles.div_ceil(tiles_per_split),
            tiles_per_split,
        })
    }

    /// Partial statistics records per head: the forward blocks', and with splits the combine
    /// blocks' after them.
    fn records(&self, spec: Specialization, q_len: usize) -> usize {
        let m_blocks = (self.fold * q_len).div_ceil(spec.block_m());
        if self.splits > 1 {
            m_blocks * self.splits + q_len.div_ceil(COMBINE_WARPS)
        } else {
            m_blocks
        }
    }
}

/// The addresses of one call's buffers: device addresses on a GPU, host addresses in the
/// emulator; 0 where a buffer is absent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Addresses {
    /// Q.
    pub q: u64,
    /// K.
    pub k: u64,
    /// V.
    pub v: u64,
    /// O.
    pub o: u64,
    /// LSE.
    pub lse: u64,
    /// k′.
    pub k_sink: u64,
    /// v′ (ContextBias, KvSink) or the bias (ValueBias).
    pub v_param: u64,
    /// θ.
    pub sink_logits: u64,
    /// z.
    pub gate: u64,
    /// `cu_seqlens_q` (i32), packed Q.
    pub cu_seqlens_q: u64,
    /// `cu_seqlens_k` (i32), packed K/V.
    pub cu_seqlens_k: u64,
    /// `seqlens_k` (i32), dense K/V with lengths and paged K/V.
    pub seqlens_k: u64,
    /// `block_table` (i32), paged K/V.
    pub block_table: u64,
    /// The statistics record.
    pub stats: u64,
    /// The key mass.
    pub key_mass: u64,
    /// The workspace (at least [`WorkspaceLayout::len`] floats).
    pub workspace: u64,
}

/// Everything one forward pass launches.
#[derive(Clone, Debug)]
pub struct LaunchPlan {
    /// The module.
    pub spec: Specialization,
    /// The launches, in stream order.
    pub launches: Vec<Launch>,
    /// The workspace the launches use.
    pub workspace: WorkspaceLayout,
    /// The decode's fold and splits.
    pub cut: DecodeCut,
    scalars: KernelParams,
    elem_bytes: u64,
}

impl LaunchPlan {
    /// The plan of `checked` on a device of `arch` with the default options
    /// ([`PlanOptions::for_arch`]).
    ///
    /// # Errors
    /// Those of [`with_options`](Self::with_options).
    pub fn new(checked: &Validated, arch: Arch) -> Result<LaunchPlan> {
        LaunchPlan::with_options(checked, arch, &PlanOptions::for_arch(arch))
    }

    /// The plan of `checked` on a device of `arch` with `options`.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for more than 65535 query heads or 65535 sequences (the grid's y
    /// and z limits), Nq + Nk above 2^30, a packed tensor or page count above 2^31, or a split
    /// forced where the kernels cannot split ([`DecodeCut::choose`]).
    pub fn with_options(
        checked: &Validated,
        arch: Arch,
        options: &PlanOptions,
    ) -> Result<LaunchPlan> {
        checked.require_features(BACKEND, SUPPORTED)?;
        let problem = checked.problem();
        let s = checked.shape();
        let spec = Specialization::select(problem.dtype, s.head_dim, arch);
        let unsupported = |reason: String| Error::Unsupported {
            backend: BACKEND.to_string(),
            reason,
        };
        // Batch and head are grid dimensions of their own (z and y), as in FlashAttention-2.
        for (what, n) in [("query heads", s.q_heads), ("batch", s.batch)] {
            if n > 65535 {
                return Err(unsupported(format!(
                    "{what} = {n}, above the grid limit 65535"
                )));
            }
        }
        // The kernels' key ranges are 32-bit sums of Nq, Nk and a window side (key_range).
        if s.q_len + s.kv_len > 1 << 30 {
            return Err(unsupported(format!(
                "Nq + Nk = {} above 2^30 tokens",
                s.q_len + s.kv_len
            )));
        }
        // The sequence map of cuda/common.cuh counts rows and pages in i32, as the index
        // tensors do.
        let packed = |n: usize, what: &str| {
            if n > i32::MAX as usize {
                Err(unsupported(format!("{what} = {n}, above 2^31")))
            } else {
                Ok(())
            }
        };
        if let QuerySeqs::Packed { total } = problem.seqs.q {
            packed(total, "total_q")?;
        }
        match problem.seqs.kv {
            KvSeqs::Packed { total } => packed(total, "total_k")?,
            KvSeqs::Paged {
                pages,
                page_size,
                max_pages,
            } => {
                packed(pages, "pages")?;
                packed(page_size, "page_size")?;
                packed(max_pages, "max_pages")?;
            }
            _ => {}
        }
        let to_u32 = |x: usize| u32::try_from(x).map_err(|_| unsupported(format!("grid of {x}")));
        let cut = DecodeCut::choose(problem, spec, options)?;
        let m_blocks = (cut.fold * s.q_len).div_ceil(spec.block_m());
        let workspace = WorkspaceLayout::of_cut(spec, s, problem.stats, &cut);
        let (heads, batch) = (s.q_heads as u32, s.batch as u32);
        let mut launches = vec![Launch {
            entry: spec.forward_entry(problem),
            grid: [
                to_u32(m_blocks * cut.splits)?,
                to_u32(s.q_heads / cut.fold)?,
                batch,
            ],
            threads: spec.threads(),
            dynamic_smem: spec.forward_smem_bytes(s.head_dim),
        }];
        if cut.splits > 1 {
            launches.push(Launch {
                entry: COMBINE_ENTRY,
                grid: [to_u32(s.q_len.div_ceil(COMBINE_WARPS))?, heads, batch],
                threads: (COMBINE_WARPS * 32) as u32,
                dynamic_smem: 0,
            });
        }
        if problem.stats.heads() {
            launches.push(Launch {
                entry: FINALIZE_ENTRY,
                grid: [heads, batch, 1],
                threads: STATS_THREADS,
                dynamic_smem: 0,
            });
        }
        if problem.stats.keys() {
            launches.push(Launch {
                entry: KEY_MASS_ENTRY,
                grid: [
                    to_u32(s.kv_len.div_ceil(spec.key_mass_block_keys()))?,
                    heads,
                    batch,
                ],
                threads: spec.threads(),
                dynamic_smem: spec.key_mass_smem_bytes(),
            });
        }
        Ok(LaunchPlan {
            spec,
            launches,
            workspace,
            cut,
            scalars: kernel_params(checked, m_blocks, &cut, spec),
            elem_bytes: problem.dtype.size_bytes() as u64,
        })
    }

    /// The argument block every launch of the plan takes, with the buffers at `a`. The
    /// workspace parts follow [`WorkspaceLayout`]; `aligned` is set when every row of Q, K and V
    /// starts 16-byte aligned (cp.async moves 16 bytes), `o_aligned` when every row of O
    /// starts 4-byte aligned (two channels per store).
    pub(crate) fn arguments(&self, a: &Addresses) -> KernelParams {
        let mut p = self.scalars;
        p.q = a.q;
        p.k = a.k;
        p.v = a.v;
        p.o = a.o;
        p.lse = a.lse;
        p.k_sink = a.k_sink;
        p.v_param = a.v_param;
        p.sink_logits = a.sink_logits;
        p.gate = a.gate;
        p.cu_seqlens_q = a.cu_seqlens_q;
        p.cu_seqlens_k = a.cu_seqlens_k;
        p.seqlens_k = a.seqlens_k;
        p.block_table = a.block_table;
        p.stats = a.stats;
        p.key_mass = a.key_mass;
        let w = &self.workspace;
        if w.partials > 0 {
            p.partials = a.workspace;
        }
        if w.rows > 0 {
            p.row_records = a.workspace + (w.partials * 4) as u64;
        }
        if w.splits > 0 {
            p.split_partials = a.workspace + ((w.partials + w.rows) * 4) as u64;
        }
        let elem = self.elem_bytes;
        let rows_aligned = |ptr: u64, l: &TensorLayout, bytes: u64| {
            ptr % bytes == 0
                && [l.offset, l.batch, l.seq, l.head]
                    .iter()
                    .all(|&x| x.wrapping_mul(elem) % bytes == 0)
        };
        p.aligned = [(a.q, &p.lq), (a.k, &p.lk), (a.v, &p.lv)]
            .iter()
            .all(|(ptr, l)| rows_aligned(*ptr, l, 16)) as i32;
        p.o_aligned = rows_aligned(a.o, &p.lo, 4) as i32;
        p
    }

    /// The most dynamic shared memory any specialisation's forward kernel takes (at d = 256):
    /// what a GPU executor opts the function into.
    pub fn max_forward_smem(spec: Specialization) -> usize {
        spec.forward_smem_bytes(256)
    }
}

/// The scalar part of the kernel arguments, from a validated problem, its decode cut and the
/// specialisation that runs it.
fn kernel_params(
    checked: &Validated,
    m_blocks: usize,
    cut: &DecodeCut,
    spec: Specialization,
) -> KernelParams {
    let block_n = spec.block_n();
    let problem = checked.problem();
    let s = checked.shape();
    let l = checked.layouts();
    // `new` refused counts above 2^31; heads fit the grid limit; d <= 256.
    let int = |x: usize| x as i32;
    let (q_seqs, q_total) = match problem.seqs.q {
        QuerySeqs::Dense => (0, 0),
        QuerySeqs::Packed { total } => (1, int(total)),
    };
    let (mut kv_total, mut pages, mut page_size, mut max_pages) = (0, 0, 1, 0);
    let kv_seqs = match problem.seqs.kv {
        KvSeqs::Dense => 0,
        KvSeqs::DenseWithLens => 1,
        KvSeqs::Packed { total } => {
            kv_total = int(total);
            2
        }
        KvSeqs::Paged {
            pages: n,
            page_size: size,
            max_pages: m,
        } => {
            (pages, page_size, max_pages) = (int(n), int(size), int(m));
            3
        }
    };
    // A window side that reaches past every key of every row is no bound at all: left >= Nk
    // or right >= Nq (then key_range's 32-bit sums stay below Nq + 2·Nk).
    let side = |x: Option<usize>, reach: usize| x.filter(|&v| v < reach).map_or(-1, int);
    let (left, right) = problem.mask.bounds();
    // The parameters through their own layouts (dense ones as [1, 1, Hq, w] or the gate's
    // dims): the element at (outer, token, head, channel) is offset + the strides.
    let param = |name: TensorName, given: Option<&Layout>, width: usize| {
        let dims = match name {
            TensorName::Gate => problem.gate_dims().unwrap_or([1, 1, 1, 1]),
            _ => [1, 1, s.q_heads, width],
        };
        TensorLayout::from(
            &given
                .copied()
                .unwrap_or_else(|| Layout::contiguous(dims[1], dims[2], dims[3])),
        )
    };
    let pl = &l.params;
    // β of Sigmoid: the host's for one key length, the device's −ln Nk_b per sequence.
    let per_seq_bias = matches!(problem.variant, Variant::Sigmoid { bias: None })
        && problem.seqs.kv != KvSeqs::Dense;
    let (mut zeta, mut gamma) = (1.0, 0.0);
    let (mut gate_kind, mut per_channel) = (0, 0);
    let variant = match problem.variant {
        Variant::Softmax => 0,
        Variant::ValueBias => 1,
        Variant::ContextBias => 2,
        Variant::KvSink => 3,
        Variant::ContextScale { gate, granularity } => {
            gate_kind = match gate {
                Gate::TwoSigmoid => 0,
                Gate::Sigmoid => 1,
                Gate::Identity => 2,
            };
            per_channel = (granularity == GateGranularity::PerChannel) as i32;
            4
        }
        Variant::Sigmoid { .. } => 5,
        Variant::LogitSink => 6,
        Variant::Softmax1 => 7,
        Variant::ClippedSoftmax { zeta: z, gamma: g } => {
            (zeta, gamma) = (z, g);
            8
        }
    };
    KernelParams {
        lq: TensorLayout::from(&l.q),
        lk: TensorLayout::from(&l.k),
        lv: TensorLayout::from(&l.v),
        lo: TensorLayout::from(&l.o),
        batch: int(s.batch),
        q_heads: int(s.q_heads),
        kv_heads: int(s.kv_heads),
        q_len: int(s.q_len),
        kv_len: int(s.kv_len),
        head_dim: int(s.head_dim),
        group: int(s.group_size()),
        variant,
        causal: (problem.mask == Mask::Causal) as i32,
        has_softcap: checked.softcap().is_some() as i32,
        gate_kind,
        gate_per_channel: per_channel,
        aligned: 0,
        m_blocks: int(m_blocks),
        scale: checked.scale(),
        softcap: checked.softcap().unwrap_or(1.0),
        sigmoid_bias: checked.sigmoid_bias(),
        clip_zeta: zeta,
        clip_gamma: gamma,
        stats_on: problem.stats.heads() as i32,
        part_record: int(partial_record(s.head_dim)),
        lgate: param(TensorName::Gate, pl.gate.as_ref(), 1),
        lk_sink: param(TensorName::KSink, pl.k_sink.as_ref(), s.head_dim),
        lv_param: param(
            TensorName::VSink,
            pl.v_sink.as_ref().or(pl.v_bias.as_ref()),
            s.head_dim,
        ),
        lsink: param(TensorName::SinkLogits, pl.sink_logits.as_ref(), 1),
        q_seqs,
        kv_seqs,
        q_total,
        kv_total,
        pages,
        page_size,
        max_pages,
        window_left: side(left, s.kv_len),
        window_right: side(right, s.q_len),
        sigmoid_bias_per_seq: per_seq_bias as i32,
        paged_tiles: strided_tiles(problem, block_n) as i32,
        fold: int(cut.fold),
        q_rows: int(cut.fold * s.q_len),
        splits: int(cut.splits),
        tiles_per_split: int(cut.tiles_per_split),
        part_count: int(cut.records(spec, s.q_len)),
        split_record: int(SPLIT_SCALARS + s.head_dim),
        ..KernelParams::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cases::{InputSpec, random_inputs};
    use crate::{DType, Problem, Shape, StatsLevel};

    fn plan_of(problem: &Problem) -> LaunchPlan {
        plan_with(problem, SplitKv::Auto)
    }

    fn plan_with(problem: &Problem, split: SplitKv) -> LaunchPlan {
        let inputs = random_inputs(problem, &InputSpec::default());
        let checked = inputs.validate(problem).expect("valid");
        let options = PlanOptions::for_arch(Arch::SM90).with_split_kv(split);
        LaunchPlan::with_options(&checked, Arch::SM90, &options).expect("plan")
    }

    /// The codes must follow `VariantCode` and `GateCode` in cuda/common.cuh.
    #[test]
    fn variants_and_scalars_reach_the_kernel_arguments() {
        let shape = Shape::new(2, 4, 2, 5, 7, 24);
        let base = Problem::new(shape, DType::F16);
        let codes: Vec<i32> = Variant::all_default()
            .iter()
            .map(|&v| plan_of(&base.with_variant(v)).scalars.variant)
            .collect();
        assert_eq!(codes, (0..9).collect::<Vec<_>>());

        let p = plan_of(
            &base
                .with_variant(Variant::ContextScale {
                    gate: Gate::Identity,
                    granularity: GateGranularity::PerChannel,
                })
                .with_mask(Mask::Causal)
                .with_softcap(30.0)
                .with_stats(StatsLevel::Heads),
        )
        .scalars;
        assert_eq!((p.gate_kind, p.gate_per_channel), (2, 1));
        assert_eq!((p.causal, p.has_softcap, p.softcap), (1, 1, 30.0));
        assert_eq!((p.group, p.m_blocks, p.stats_on), (2, 1, 1));
        assert_eq!(p.scale, 1.0 / 24f32.sqrt());

        let p = plan_of(&base.with_variant(Variant::ClippedSoftmax {
            zeta: 1.1,
            gamma: -0.05,
        }))
        .scalars;
        assert_eq!((p.clip_zeta, p.clip_gamma), (1.1, -0.05));
        let p = plan_of(&base.with_variant(Variant::Sigmoid { bias: None })).scalars;
        assert_eq!(p.sigmoid_bias, -(7f32).ln());
        assert_eq!(
            p.lk.seq,
            (2 * 24) as u64,
            "K strides come from its own layout"
        );
    }

    #[test]
    fn launches_and_workspace_follow_the_statistics_level() {
        let shape = Shape::new(2, 4, 2, 130, 300, 128);
        let base = Problem::new(shape, DType::Bf16);
        let plan_of = |p: &Problem| plan_with(p, SplitKv::Off);
        let off = plan_of(&base);
        assert_eq!(off.launches.len(), 1);
        assert_eq!(
            off.launches[0].grid,
            [2, 4, 2],
            "ceil(130 / 128) query blocks, Hq, B"
        );
        assert_eq!(off.launches[0].entry, "attention_tc");
        assert_eq!(off.launches[0].threads, 256);
        assert!(off.workspace.is_empty());
        let generic = plan_of(&base.with_softcap(20.0));
        assert_eq!(generic.launches[0].entry, "attention_tc_generic");
        let keys = plan_of(&base.with_stats(StatsLevel::HeadsAndKeys));
        let entries: Vec<_> = keys.launches.iter().map(|l| l.entry).collect();
        assert_eq!(entries, ["attention_tc", "finalize_stats", "key_mass"]);
        assert_eq!(keys.launches[1].grid, [4, 2, 1], "Hq, B");
        assert_eq!(
            keys.launches[2].grid,
            [5, 4, 2],
            "ceil(300 / 64) key tiles, Hq, B"
        );
        assert_eq!(
            keys.workspace,
            WorkspaceLayout {
                partials: 8 * 2 * (15 + 3 * 128),
                rows: 8 * 130 * ROW_RECORD,
                splits: 0,
            }
        );
        let a = Addresses {
            q: 0x1000,
            k: 0x2000,
            v: 0x3000,
            o: 0x4000,
            workspace: 0x10000,
            ..Addresses::default()
        };
        let p = keys.arguments(&a);
        assert_eq!(p.partials, 0x10000);
        assert_eq!(p.row_records, 0x10000 + 4 * 8 * 2 * (15 + 3 * 128) as u64);
        assert_eq!(p.part_record, 15 + 3 * 128);
        assert_eq!((p.aligned, p.o_aligned), (1, 1));
        assert_eq!(keys.arguments(&Addresses { k: 0x2002, ..a }).aligned, 0);
        assert_eq!(keys.arguments(&Addresses { o: 0x4002, ..a }).o_aligned, 0);
        let heads = plan_of(&base.with_stats(StatsLevel::Heads));
        assert_eq!(
            heads.arguments(&a).row_records,
            0,
            "no row records without key mass"
        );
    }

    /// The size formula of [`WorkspaceLayout`]'s docs, written out, against the plans of
    /// random shapes (the automatic split included); and, without split-KV, the bound an engine
    /// takes from its largest call covers every smaller call.
    #[test]
    fn workspace_follows_its_documented_formula_and_is_bounded_by_the_largest_call() {
        let mut rng = crate::cases::Rng::new(7);
        let off = PlanOptions::for_arch(Arch::SM90).with_split_kv(SplitKv::Off);
        let mut split_plans = 0;
        for _ in 0..200 {
            let batch = 1 + rng.below(4);
            let kv_heads = 1 + rng.below(3);
            let q_heads = kv_heads * (1 + rng.below(3));
            let q_len = 1 + rng.below(700);
            let kv_len = 1 + rng.below(700);
            let head_dim = 8 * (1 + rng.below(32));
            let dtype = [DType::F32, DType::F16, DType::Bf16][rng.below(3)];
            let stats =
                [StatsLevel::Off, StatsLevel::Heads, StatsLevel::HeadsAndKeys][rng.below(3)];
            let shape = Shape::new(batch, q_heads, kv_heads, q_len, kv_len, head_dim);
            let problem = Problem::new(shape, dtype).with_stats(stats);
            let plan = plan_of(&problem);
            let block_m = match dtype {
                DType::F32 => 8,
                _ if head_dim <= 128 => 128,
                _ => 64,
            };
            let heads = batch * q_heads;
            let cut = plan.cut;
            let m_blocks = (cut.fold * q_len).div_ceil(block_m);
            let split = cut.splits > 1;
            split_plans += split as usize;
            let records = if split {
                m_blocks * cut.splits + q_len.div_ceil(4)
            } else {
                m_blocks
            };
            let mut floats = 0;
            if stats != StatsLevel::Off {
                floats += heads * records * (15 + 3 * head_dim);
            }
            if stats == StatsLevel::HeadsAndKeys {
                floats += heads * q_len * 3;
            }
            if split {
                floats += heads * q_len * cut.splits * (8 + head_dim);
            }
            assert_eq!(plan.workspace.len(), floats, "{problem:?}");
            assert_eq!(
                WorkspaceLayout::for_problem(&problem, Arch::SM90),
                plan.workspace
            );
            // Any unsplit call with no larger batch, heads or query length fits in the bound.
            let largest = Problem::new(Shape::new(4, 9, 3, 700, 1, head_dim), dtype)
                .with_stats(StatsLevel::HeadsAndKeys);
            let bound = |p: &Problem| WorkspaceLayout::for_problem_with(p, Arch::SM90, &off);
            assert!(bound(&problem).unwrap().len() <= bound(&largest).unwrap().len());
        }
        assert!(
            split_plans > 10,
            "the sample holds split plans: {split_plans}"
        );
    }

    #[test]
    fn decode_folds_gqa_groups_and_splits_where_the_device_would_idle() {
        // gpt-oss decode: B = 1, 64 query heads on 8 kv heads, 32k keys, on an H200.
        let decode = Problem::new(Shape::new(1, 64, 8, 1, 32 * 1024, 64), DType::Bf16);
        let plan = plan_of(&decode);
        assert_eq!(plan.cut.fold, 8, "the group's 8 heads share a block");
        assert!(plan.cut.splits > 4, "{:?}", plan.cut);
        assert_eq!(plan.launches[0].grid[1], 8, "one head block per kv head");
        assert_eq!(plan.launches[0].grid[0] as usize, plan.cut.splits);
        assert_eq!(plan.launches[1].entry, "combine_splits");
        assert_eq!(plan.launches[1].grid, [1, 64, 1]);
        // The blocks fill the device: no split.
        let batch = plan_of(&Problem::new(
            Shape::new(64, 64, 8, 1, 4096, 64),
            DType::Bf16,
        ));
        assert_eq!((batch.cut.fold, batch.cut.splits), (8, 1));
        // Prefill neither folds nor splits; statistics keep one head per block.
        let prefill = plan_of(&Problem::new(
            Shape::new(1, 64, 8, 4096, 4096, 64),
            DType::Bf16,
        ));
        assert_eq!((prefill.cut.fold, prefill.cut.splits), (1, 1));
        let with_stats = plan_of(&decode.with_stats(StatsLevel::Heads));
        assert_eq!(with_stats.cut.fold, 1);
        assert!(with_stats.cut.splits > 1);
        // Forced on and off, and a fixed chunk.
        let spec = plan.spec;
        let opts = |split| PlanOptions::for_arch(Arch::SM90).with_split_kv(split);
        let small = Problem::new(Shape::new(64, 8, 8, 1, 200, 64), DType::Bf16);
        assert_eq!(
            DecodeCut::choose(&small, spec, &opts(SplitKv::Auto))
                .unwrap()
                .splits,
            1
        );
        assert!(
            DecodeCut::choose(&small, spec, &opts(SplitKv::On))
                .unwrap()
                .splits
                >= 2
        );
        assert_eq!(
            DecodeCut::choose(&decode, spec, &opts(SplitKv::Off))
                .unwrap()
                .splits,
            1
        );
        let chunked = DecodeCut::choose(&decode, spec, &opts(SplitKv::KeysPerSplit(1000))).unwrap();
        assert_eq!((chunked.tiles_per_split, chunked.splits), (16, 32));
        let clipped = decode.with_variant(Variant::ClippedSoftmax {
            zeta: 1.1,
            gamma: 0.0,
        });
        assert_eq!(
            DecodeCut::choose(&clipped, spec, &opts(SplitKv::Auto))
                .unwrap()
                .splits,
            1
        );
        assert!(DecodeCut::choose(&clipped, spec, &opts(SplitKv::On)).is_err());
        // The heuristic never passes its bound.
        for tiles in [1, 2, 3, 100, 5000] {
            for blocks in [1, 7, 100, 1000] {
                let n = heuristic_splits(blocks, tiles, 132, true);
                assert!((1..=MAX_SPLITS.min(tiles).max(1)).contains(&n));
            }
        }
    }

    /// The sequence layout, window and per-sequence β reach the kernel arguments as
    /// cuda/common.cuh reads them (`QuerySeqsCode`, `KvSeqsCode`, −1 for an unbounded side),
    /// and paged calls take the fast path's strided kernel with pages a multiple of the K/V
    /// tile, its key-by-key kernel with other page sizes.
    #[test]
    fn sequence_layouts_and_windows_reach_the_kernel_arguments() {
        use crate::cases::{KvStorage, SeqCase, engine_inputs};
        let template = Problem::new(Shape::new(1, 2, 1, 1, 1, 32), DType::Bf16)
            .with_mask(Mask::window(Some(5), Some(0)));
        let plan = |template: &Problem, kv: KvStorage| {
            let case = SeqCase {
                q_lens: vec![3, 4],
                kv_lens: vec![70, 9],
                packed_q: true,
                kv,
            };
            let (problem, inputs) = engine_inputs(template, &case, &InputSpec::default());
            let checked = inputs.validate(&problem).expect("valid");
            LaunchPlan::new(&checked, Arch::SM90).expect("plan")
        };
        let paged = |page_size| KvStorage::Paged {
            page_size,
            spare_pages: 1,
        };
        let p = plan(&template, paged(128));
        let a = p.scalars;
        assert_eq!((a.q_seqs, a.q_total, a.kv_seqs), (1, 7, 3));
        assert_eq!((a.page_size, a.max_pages, a.pages), (128, 1, 3));
        assert_eq!((a.window_left, a.window_right, a.paged_tiles), (5, 0, 1));
        assert_eq!(p.launches[0].entry, "attention_tc");
        let p = plan(&template, paged(24));
        assert_eq!(
            (p.scalars.paged_tiles, p.launches[0].entry),
            (0, "attention_tc_paged")
        );
        let p = plan(&template, KvStorage::Packed).scalars;
        assert_eq!((p.kv_seqs, p.kv_total, p.sigmoid_bias_per_seq), (2, 79, 0));
        // A side past every key (capacity 72, 4 queries) is unbounded; Sigmoid without a
        // bias takes −ln Nk_b per sequence on the device.
        let wide = template
            .with_mask(Mask::window(Some(72), Some(4)))
            .with_variant(Variant::Sigmoid { bias: None });
        let p = plan(&wide, KvStorage::DenseWithLens { spare: 2 }).scalars;
        assert_eq!((p.kv_seqs, p.window_left, p.window_right), (1, -1, -1));
        assert_eq!(p.sigmoid_bias_per_seq, 1);
        let p = plan(
            &wide.with_mask(Mask::window(Some(69), Some(3))),
            KvStorage::Packed,
        )
        .scalars;
        assert_eq!((p.window_left, p.window_right), (69, 3));
    }

    #[test]
    fn batch_and_heads_have_grid_dimensions_of_their_own() {
        // B·Hq = 80000: refused while both shared grid.y, launched now.
        let wide = plan_of(&Problem::new(Shape::new(40_000, 2, 2, 1, 1, 8), DType::F16));
        assert_eq!(wide.launches[0].grid, [1, 2, 40_000]);
        let problem = Problem::new(Shape::new(70_000, 1, 1, 1, 1, 8), DType::F16);
        let inputs = random_inputs(&problem, &InputSpec::default());
        let checked = inputs.validate(&problem).expect("valid");
        match LaunchPlan::new(&checked, Arch::SM90) {
            Err(Error::Unsupported { reason, .. }) => assert!(reason.contains("batch"), "{reason}"),
            other => panic!("a batch of 70000 must be refused: {other:?}"),
        }
    }
}
