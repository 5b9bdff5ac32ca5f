//! The launch plan: everything a forward pass needs to launch its kernels, computed once in
//! plain Rust from a validated problem, for every executor (the GPU through cudarc, the CPU
//! through the emulator): the specialisation, each kernel's grid, block and dynamic shared
//! memory, the workspace layout, and the argument block with the buffers' addresses.

use super::params::{KernelParams, TensorLayout};
use super::spec::{
    Arch, FINALIZE_ENTRY, KEY_MASS_ENTRY, ROW_RECORD, STATS_THREADS, Specialization,
    partial_record, takes_fast_path,
};
use crate::contract::{
    EngineFeature, Error, Gate, GateGranularity, KvSeqs, Layout, Mask, Problem, QuerySeqs, Result,
    StatsLevel, TensorName, Validated, Variant,
};

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

/// Where the parts of the workspace lie, in f32 elements from its start: the forward kernel's
/// per-query-block partial records (row statistics and Q/K/V channel statistics, combined by
/// `finalize_stats`), then, with `HeadsAndKeys`, one record per query row for the key-mass
/// kernel (the row's max and 1/l, and ClippedSoftmax's weight sum).
///
/// Its size depends only on the batch, the query heads, the query length, the head-dim tile
/// and the statistics level (never on the key length), and grows with each: an engine sizes
/// one workspace from the largest call it will make ([`WorkspaceLayout::for_problem`]) before
/// its first call, and every smaller call fits in it, so a forward pass can be captured in a
/// CUDA graph. In floats, with `blocks = ⌈Nq / block_m⌉` and block_m = 128 on the tensor-core
/// tiles 64 and 128, 64 on tile 256, 8 on the SIMT path:
///
/// - `Off`: 0;
/// - `Heads`: B·Hq·blocks·(15 + 3d) (15 sums, then the d channel maxima of each of Q, K, V);
/// - `HeadsAndKeys`: that plus B·Hq·Nq·3.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct WorkspaceLayout {
    /// Floats of partial records (`[B, Hq, blocks, 15 + 3d]`), at 0.
    pub partials: usize,
    /// Floats of row records (`[B, Hq, Nq, 3]`), after the partials.
    pub rows: usize,
}

impl WorkspaceLayout {
    /// The workspace of a call with `batch` x `q_heads` heads of `q_len` queries at head dim
    /// `head_dim` on `spec`.
    pub fn new(
        spec: Specialization,
        batch: usize,
        q_heads: usize,
        q_len: usize,
        head_dim: usize,
        stats: StatsLevel,
    ) -> WorkspaceLayout {
        let heads = batch * q_heads;
        WorkspaceLayout {
            partials: if stats.heads() {
                heads * q_len.div_ceil(spec.block_m()) * partial_record(head_dim)
            } else {
                0
            },
            rows: if stats.keys() {
                heads * q_len * ROW_RECORD
            } else {
                0
            },
        }
    }

    /// The workspace `problem` needs on a device of `arch`: what [`LaunchPlan::new`] lays out
    /// for it, and at least what any call with no larger batch, query heads, query length and
    /// head dim, the same dtype and head-dim tile and no higher statistics level needs.
    pub fn for_problem(problem: &Problem, arch: Arch) -> WorkspaceLayout {
        let s = &problem.shape;
        let spec = Specialization::select(problem.dtype, s.head_dim, arch);
        WorkspaceLayout::new(spec, s.batch, s.q_heads, s.q_len, s.head_dim, problem.stats)
    }

    /// Floats the workspace must hold (0 without statistics).
    pub fn len(&self) -> usize {
        self.partials + self.rows
    }

    /// Whether the call needs no workspace.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
    scalars: KernelParams,
    elem_bytes: u64,
}

impl LaunchPlan {
    /// The plan of `checked` on a device of `arch`.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for more than 65535 query heads or 65535 sequences (the grid's y
    /// and z limits), Nq + Nk above 2^30, or a packed tensor or page count above 2^31.
    pub fn new(checked: &Validated, arch: Arch) -> Result<LaunchPlan> {
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
        let m_blocks = s.q_len.div_ceil(spec.block_m());
        let workspace =
            WorkspaceLayout::new(spec, s.batch, s.q_heads, s.q_len, s.head_dim, problem.stats);
        let (heads, batch) = (s.q_heads as u32, s.batch as u32);
        let mut launches = vec![Launch {
            entry: spec.forward_entry(takes_fast_path(problem, spec.block_n())),
            grid: [to_u32(m_blocks)?, heads, batch],
            threads: spec.threads(),
            dynamic_smem: spec.forward_smem_bytes(s.head_dim),
        }];
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
            scalars: kernel_params(checked, m_blocks, spec.block_n()),
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

/// The scalar part of the kernel arguments, from a validated problem; `block_n` is the
/// forward kernel's K/V tile.
fn kernel_params(checked: &Validated, m_blocks: usize, block_n: usize) -> KernelParams {
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
        paged_tiles: (page_size as usize % block_n == 0) as i32,
        ..KernelParams::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cases::{InputSpec, random_inputs};
    use crate::{DType, Problem, Shape, StatsLevel};

    fn plan_of(problem: &Problem) -> LaunchPlan {
        let inputs = random_inputs(problem, &InputSpec::default());
        let checked = inputs.validate(problem).expect("valid");
        LaunchPlan::new(&checked, Arch::SM90).expect("plan")
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
    /// random shapes; and the bound an engine takes from its largest call covers every
    /// smaller call.
    #[test]
    fn workspace_follows_its_documented_formula_and_is_bounded_by_the_largest_call() {
        let mut rng = crate::cases::Rng::new(7);
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
            let mut floats = 0;
            if stats != StatsLevel::Off {
                floats += heads * q_len.div_ceil(block_m) * (15 + 3 * head_dim);
            }
            if stats == StatsLevel::HeadsAndKeys {
                floats += heads * q_len * 3;
            }
            assert_eq!(plan.workspace.len(), floats, "{problem:?}");
            assert_eq!(
                WorkspaceLayout::for_problem(&problem, Arch::SM90),
                plan.workspace
            );
            // Any call with no larger batch, heads or query length fits in the bound.
            let largest = Problem::new(Shape::new(4, 9, 3, 700, 1, head_dim), dtype)
                .with_stats(StatsLevel::HeadsAndKeys);
            assert!(
                plan.workspace.len() <= WorkspaceLayout::for_problem(&largest, Arch::SM90).len()
            );
        }
    }

    /// The sequence layout, window and per-sequence β reach the kernel arguments as
    /// cuda/common.cuh reads them (`QuerySeqsCode`, `KvSeqsCode`, −1 for an unbounded side),
    /// and paged calls take the fast path only with pages a multiple of the K/V tile.
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
            (0, "attention_tc_generic")
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
        let wide = plan_of(&Problem::new(Shape::new(40_000, 2, 1, 1, 1, 8), DType::F16));
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
