//! The kernels' specialisation: which WGSL text a pipeline is built from, the tile sizes chosen
//! from the device's limits, and the uniform block the kernels read.
//!
//! Specialisation is textual and happens in one place, [`Kernel::source`]: a header of WGSL
//! `const` declarations (head dim, tile sizes, dtype, variant, gate, statistics level; the
//! mask's window bounds are uniforms), then `shaders/common.wgsl`, `shaders/qk_loads.wgsl` for
//! the two kernels that read Q and K, for the forward pass one of the two key files (subgroup
//! shuffles or workgroup memory), and the kernel file. Constants
//! rather than override constants because the head dim sizes private arrays, which WGSL only
//! allows with a `const`.
//!
//! Two directives are expanded on the way:
//! - `//unroll_all c < N: statement` writes the statement out for c = 0..N, always. It is what
//!   keeps the forward kernel's private arrays (a row of Q, the output accumulator, the held
//!   key) in registers: they are indexed only by the constants it writes.
//! - `//unroll c < N: statement` does the same when N is at most [`UNROLL_CHUNK`] and loops
//!   over chunks of that many copies otherwise (for statements that index only memory).
//!
//! N is `HEAD_DIM`, `D4` (channel quads), `LANE_QUADS` (quads per lane of a forward row),
//! `ROW_LANES`, `ROW_BLOCK` (rows per forward lane group), `LOAD_UNROLL`, `KEYS_PER_LANE`
//! (keys per key-mass lane), `ROW_QUADS_HELD` (quads of a Q row per key-mass lane on the
//! shuffle path) or a literal. WGSL has no unroll attribute, and lavapipe needs
//! one: gallivm ends a shader invocation after 65535 loop iterations in all
//! (`LP_MAX_TGSI_LOOP_ITERATIONS`, shared by every loop of the shader), silently. The forward
//! kernel's loops over keys cost a trip and a half per key; a lane's channel work is written
//! out in quads, LANE_QUADS statements per key and phase: at most [`MAX_LANE_QUADS`] at every
//! head dim ([`CPU_MAX_LANE_QUADS`] on a CPU adapter), since larger rows are split over
//! [`row_lanes`] lanes. LLVM's build time grows faster than linearly with the written-out
//! length, so this is what keeps pipeline builds short.
use crate::contract::{DType, Gate, GateGranularity, Mask, Stat, StatsLevel, Variant};

const COMMON: &str = include_str!("../../shaders/common.wgsl");
const KEYS_WORKGROUP: &str = include_str!("../../shaders/keys_workgroup.wgsl");
const KEYS_SUBGROUP: &str = include_str!("../../shaders/keys_subgroup.wgsl");
const QK_LOADS: &str = include_str!("../../shaders/qk_loads.wgsl");
const FORWARD: &str = include_str!("../../shaders/forward.wgsl");
const COMBINE: &str = include_str!("../../shaders/combine.wgsl");
const KEY_MASS: &str = include_str!("../../shaders/key_mass.wgsl");
const KEY_MASS_SUBGROUP: &str = include_str!("../../shaders/key_mass_subgroup.wgsl");
const KEY_MASS_WORKGROUP: &str = include_str!("../../shaders/key_mass_workgroup.wgsl");
const SEQS: &str = include_str!("../../shaders/seqs.wgsl");
const SPLIT_COMBINE: &str = include_str!("../../shaders/split_combine.wgsl");

/// f32 values in one row's partial statistics record (`PARTIAL_LEN` in `shaders/common.wgsl`).
pub(crate) const PARTIAL_LEN: usize = 13;
/// f32 values in one (batch, kv head) K/V statistics record (`KV_PARTIAL_LEN`).
pub(crate) const KV_PARTIAL_LEN: usize = 7;
/// f32 values of per-row state kept for the key-mass pass (`ROW_STATE_LEN`).
pub(crate) const ROW_STATE_LEN: usize = 3;
/// 32-bit words of one sequence record (`SEQ_LEN`).
pub(crate) const SEQ_LEN: usize = 5;
/// Words of a split-KV partial before its head-dim output: the online softmax's state, the
/// statistics' sums and the row's q statistics (`SPLIT_HEAD` of forward.wgsl); a partial is
/// `SPLIT_HEAD_LEN + d` words.
pub(crate) const SPLIT_HEAD_LEN: usize = 12;
/// `kv_mode` of the uniforms (`KV_*` in common.wgsl): how K and V hold the sequences.
pub(crate) const KV_DENSE: u32 = 0;
pub(crate) const KV_LENS: u32 = 1;
pub(crate) const KV_PACKED: u32 = 2;
pub(crate) const KV_PAGED: u32 = 3;
/// Invocations per workgroup of the sequence pass (one sequence each).
pub(crate) const SEQS_THREADS: u32 = 64;

/// Invocations per forward workgroup (`ROW_LANES` per folded query row), and keys per key-mass
/// workgroup. 64 keeps lavapipe's 8-wide SIMD busy and is a common GPU wavefront multiple.
pub(crate) const BLOCK_M: u32 = 64;
/// Invocations per forward workgroup on a CPU adapter: twice [`BLOCK_M`], so that each K/V
/// tile a workgroup stages serves twice the rows (on lavapipe the staging is a loop over the
/// SIMD lanes per word it loads and stores): 1.06x faster at d = 128 (BENCHMARKS.md).
pub(crate) const CPU_BLOCK_M: u32 = 128;
/// The forward workgroup for few folded rows (decode): fewer idle invocations. On the shuffle
/// path the fewest whole subgroups (of the adapter's largest size) that hold the rows instead.
pub(crate) const BLOCK_M_SHORT: u32 = 16;
/// The most channel quads one lane of a forward row owns (`LANE_QUADS`) on a GPU: the length of
/// the code written out per key, whatever the head dim, and the registers a row's q and
/// accumulator take. 16 quads (64 channels) keep d <= 64 at one lane per row; larger head dims
/// split a row over 2 or 4 lanes.
pub(crate) const MAX_LANE_QUADS: u32 = 16;
/// The same on a CPU adapter: 32 quads, so d <= 128 keeps one lane per row. There registers
/// spill anyway, while a row split over lanes adds a shuffle per score and halves the rows
/// each fetched key serves: d = 128 ran 1.3x faster at one lane per row on lavapipe, for
/// pipeline builds 1.6x to 3x longer (BENCHMARKS.md).
pub(crate) const CPU_MAX_LANE_QUADS: u32 = 32;
/// The most lanes a forward row is split over (`sum_parts` in common.wgsl adds up to 8).
const MAX_ROW_LANES: u32 = 8;

/// Lanes per forward row at head dim `head_dim` (`ROW_LANES`): the fewest, a power of two
/// dividing d / 4, that leave each lane at most `max_quads` quads ([`MAX_LANE_QUADS`] or
/// [`CPU_MAX_LANE_QUADS`]; more when d / 4 has no such divisor: d = 136 splits over 2 lanes of
/// 17 quads on a GPU). It depends on the adapter and the head dim alone, so that a row's bits
/// do not depend on the call it is part of.
pub(crate) fn row_lanes(head_dim: usize, max_quads: u32) -> u32 {
    let quads = (head_dim / 4).max(1) as u32;
    let mut lanes = 1;
    while quads / lanes > max_quads && quads % (2 * lanes) == 0 && lanes < MAX_ROW_LANES {
        lanes *= 2;
    }
    lanes
}
/// The most quads of K one key-mass lane holds (`KEYS_PER_LANE` keys of `HEAD_DIM / 4`
/// quads): the length of the code written out per row of Q, as [`MAX_LANE_QUADS`] is the
/// forward kernel's per key.
const MAX_KEY_MASS_QUADS: u32 = 64;
/// The most keys one key-mass lane owns.
const MAX_KEYS_PER_LANE: u32 = 4;

/// Keys per lane of the key-mass pass at head dim `head_dim` (`KEYS_PER_LANE`): each quad of a
/// Q row it reads from workgroup memory feeds 4 FMAs per key (register blocking), as many as
/// keep the lane within [`MAX_KEY_MASS_QUADS`] quads of K: 4 at d <= 64, 2 at d = 128, 1
/// beyond.
pub(crate) fn key_mass_keys_per_lane(head_dim: usize) -> u32 {
    let quads = (head_dim / 4).max(1) as u32;
    (MAX_KEY_MASS_QUADS / quads).clamp(1, MAX_KEYS_PER_LANE)
}

/// Invocations per combine workgroup (one (batch, head) each).
pub(crate) const COMBINE_THREADS: u32 = 64;
/// Largest K/V tile of the forward kernel's shuffle path, in keys (whole chunks of the
/// subgroup; smaller where workgroup memory or the workgroup is smaller). Larger tiles mean
/// fewer barriers and staging rounds per key: on lavapipe 32 keys ran about 12 % faster than
/// one chunk of 8 at d = 64.
pub(crate) const SHUFFLE_TILE: u32 = 32;
/// Largest K/V tile, in keys.
const MAX_TILE: u32 = 64;
/// Keys per round of the forward kernel's workgroup-memory path (at most a tile): a round's
/// logits wait in private arrays of this length between its two loops (forward.wgsl). The
/// shuffle path's round is the keys a chunk holds in registers.
pub(crate) const WORKGROUP_ROUND: u32 = 8;
/// Elements (key mass) or channel quads of K and V (forward) each invocation loads per trip of
/// a tile-loading loop (written out).
pub(crate) const LOAD_UNROLL: u32 = 8;
/// The most copies of a statement one `//unroll` writes out per loop iteration.
pub(crate) const UNROLL_CHUNK: u32 = 32;
/// Channel quads of K and of V each invocation stages per trip of the forward kernel's
/// tile-staging loop (written out).
pub(crate) const STAGE_UNROLL: u32 = 4;
/// Quads per trip of the K/V measurement loop (`//unroll(8)`): it runs on a few lanes of one
/// block only, so it is kept short to build.
pub(crate) const MEASURE_CHUNK: u32 = 8;

/// Copies of the statement per iteration for an `//unroll` over `count`: all of them up to
/// [`UNROLL_CHUNK`], else the largest of 32, 16, 8, 4, 2 that divides `count`.
fn unroll_chunk(count: u32) -> u32 {
    unroll_chunk_at_most(count, UNROLL_CHUNK)
}

/// Copies per iteration when at most `max` may be written out: all of them up to `max`, else
/// the largest power of two up to `max` that divides `count`.
fn unroll_chunk_at_most(count: u32, max: u32) -> u32 {
    if count <= max {
        return count.max(1);
    }
    [32, 16, 8, 4, 2]
        .into_iter()
        .filter(|&c| c <= max)
        .find(|c| count % c == 0)
        .unwrap_or(1)
}

/// Loop iterations an `//unroll` over `count` runs (with one for the loop's exit).
pub(crate) fn unrolled_trips(count: u64) -> u64 {
    let chunk = u64::from(unroll_chunk(count as u32));
    if chunk >= count { 0 } else { count / chunk + 1 }
}
/// Loop iterations lavapipe lets one shader invocation run, all loops together
/// (`LP_MAX_TGSI_LOOP_ITERATIONS` in Mesa's gallivm); past it the invocation stops silently.
pub(crate) const LAVAPIPE_LOOP_ITERATIONS: u64 = 65_535;

/// The kernels of a forward call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum KernelKind {
    /// The fused forward pass (O, LSE, partial statistics, row state; with split-KV, one
    /// split's partial results).
    Forward,
    /// Partial statistics to the per-head record.
    Combine,
    /// The second pass of `HeadsAndKeys`.
    KeyMass,
    /// The engine's index tensors to sequence records, ahead of the others (packed and
    /// paged calls).
    Seqs,
    /// Split-KV: the splits' partial results of each row to its O and LSE.
    SplitCombine,
}

impl KernelKind {
    /// The entry point's name, which is also the name of the kernel's function in its file.
    pub(crate) fn entry_point(self) -> &'static str {
        match self {
            KernelKind::Forward => "forward",
            KernelKind::Combine => "combine",
            KernelKind::KeyMass => "key_mass",
            KernelKind::Seqs => "seqs",
            KernelKind::SplitCombine => "split_combine",
        }
    }
}

/// Everything a pipeline is specialised on; the key of the pipeline cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Kernel {
    pub kind: KernelKind,
    pub head_dim: u32,
    /// Lanes per forward row ([`row_lanes`]); the key-mass pass adds its scores' parts as
    /// those lanes do.
    pub row_lanes: u32,
    /// Rows each forward lane group serves (`ROW_BLOCK`, register blocking; see
    /// [`Kernel::with_row_block`]).
    pub row_block: u32,
    /// Invocations per workgroup.
    pub workgroup: u32,
    /// Rows of the tile held in workgroup memory (keys for the forward pass, query rows for
    /// the key-mass pass).
    pub tile: u32,
    pub dtype: DType,
    /// `VARIANT_*` of common.wgsl.
    pub variant: u32,
    pub gate: Gate,
    pub per_channel_gate: bool,
    pub stats: StatsLevel,
    /// Keys reach the forward kernel's lanes by subgroup shuffles (else from workgroup memory).
    pub subgroups: bool,
    /// Lanes of one shuffle chunk (`CHUNK_LEN`, the adapter's smallest subgroup size) on the
    /// shuffle path, whose K/V tile is a whole number of chunks; the tile otherwise (unused).
    pub chunk: u32,
    /// The call may have sequence records (`SEQ_RECORDS`): false only for the forward and
    /// key-mass kernels of dense calls (see [`Kernel::with_sequences`]).
    pub seq_records: bool,
    /// Split-KV (`SPLIT`): the forward kernel runs one split of each row's keys and leaves a
    /// partial result for the split combine (see [`Kernel::with_split`]).
    pub split: bool,
    /// The scores are softcapped (`SOFTCAP`; see [`Kernel::with_softcap`]).
    pub softcap: bool,
}

/// `UNBOUNDED` of common.wgsl: a side of the window without a bound.
pub(crate) const UNBOUNDED: u32 = u32::MAX;

/// The uniforms `window_left` and `window_right` of `mask` for a call of `q_len` queries and
/// `kv_len` keys: the bound, or `UNBOUNDED` for none and for one of at least Nq + Nk (which
/// reaches past every key anyway), so that the shaders' sums stay below 2·(Nq + Nk) + 1.
pub(crate) fn window_uniforms(mask: Mask, q_len: u32, kv_len: u32) -> (u32, u32) {
    let reach = u64::from(q_len) + u64::from(kv_len);
    let bound = |side: Option<usize>| match side {
        Some(n) if (n as u64) < reach => n as u32,
        _ => UNBOUNDED,
    };
    let (left, right) = mask.bounds();
    (bound(left), bound(right))
}

/// The `VARIANT_*` value of a variant (its scalar settings travel in the uniforms).
pub(crate) fn variant_code(variant: &Variant) -> u32 {
    match variant {
        Variant::Softmax => 0,
        Variant::ValueBias => 1,
        Variant::ContextBias => 2,
        Variant::KvSink => 3,
        Variant::ContextScale { .. } => 4,
        Variant::Sigmoid { .. } => 5,
        Variant::LogitSink => 6,
        Variant::Softmax1 => 7,
        Variant::ClippedSoftmax { .. } => 8,
    }
}

impl Kernel {
    /// The kernel of `kind` for one problem's specialisation.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        kind: KernelKind,
        head_dim: usize,
        workgroup: u32,
        tile: u32,
        dtype: DType,
        variant: &Variant,
        stats: StatsLevel,
        subgroups: bool,
    ) -> Kernel {
        let (gate, per_channel_gate) = match variant {
            Variant::ContextScale { gate, granularity } => {
                (*gate, *granularity == GateGranularity::PerChannel)
            }
            _ => (Gate::TwoSigmoid, false),
        };
        let full = Kernel {
            kind,
            head_dim: head_dim as u32,
            row_lanes: row_lanes(head_dim, MAX_LANE_QUADS),
            row_block: 1,
            workgroup,
            tile,
            dtype,
            variant: variant_code(variant),
            gate,
            per_channel_gate,
            stats,
            subgroups,
            chunk: tile,
            seq_records: true,
            split: false,
            softcap: false,
        };
        // The smaller kernels read only part of the specialisation; the rest is set to one
        // value so that they are built once for all the forward kernels that share them
        // (pipeline builds dominate a first call, above all on lavapipe).
        let neutral = Kernel {
            dtype: DType::F32,
            variant: variant_code(&Variant::Softmax),
            gate: Gate::TwoSigmoid,
            per_channel_gate: false,
            stats: StatsLevel::HeadsAndKeys,
            subgroups: false,
            chunk: 1,
            ..full
        };
        match kind {
            KernelKind::Forward => full,
            // Merges the forward kernel's partials and writes O and the statistics records as
            // it does: the dtype, the variant's per-row terms (the gate's too), the statistics
            // level, the sequence layout.
            KernelKind::SplitCombine => Kernel {
                dtype,
                variant: variant_code(variant),
                gate,
                per_channel_gate,
                stats,
                split: true,
                ..neutral
            },
            // Reads the partial records: depends on the head dim alone.
            KernelKind::Combine => neutral,
            // Reads index tensors only: one pipeline for every call.
            KernelKind::Seqs => Kernel {
                head_dim: 8,
                row_lanes: 1,
                tile: 1,
                ..neutral
            },
            // Scores, mask and the variant's probability (softmax family, Sigmoid, Clipped).
            KernelKind::KeyMass => {
                let family = match variant {
                    Variant::Sigmoid { .. } | Variant::ClippedSoftmax { .. } => variant,
                    _ => &Variant::Softmax,
                };
                Kernel {
                    dtype,
                    variant: variant_code(family),
                    subgroups,
                    ..neutral
                }
            }
        }
    }

    /// The kernel for a call whose sequences are `dense` ([`Sequences::is_dense`]): the
    /// forward and key-mass kernels of a dense call read the shape's lengths as constants of
    /// the uniforms rather than sequence records, which keeps their loops uniform to the
    /// compiler; the combine and sequence passes serve both.
    ///
    /// [`Sequences::is_dense`]: crate::Sequences::is_dense
    pub(crate) fn with_sequences(self, dense: bool) -> Kernel {
        let seq_records = match self.kind {
            KernelKind::Forward | KernelKind::KeyMass | KernelKind::SplitCombine => !dense,
            KernelKind::Combine | KernelKind::Seqs => true,
        };
        Kernel {
            seq_records,
            ..self
        }
    }

    /// The forward kernel (a divisor of its tile) or the key-mass pass on the shuffle path
    /// with chunks of `chunk` lanes; the other kernels are left as they are.
    pub(crate) fn with_chunk(self, chunk: u32) -> Kernel {
        match self.kind {
            KernelKind::Forward | KernelKind::KeyMass => Kernel { chunk, ..self },
            _ => self,
        }
    }

    /// The forward kernel with `row_block` rows per lane group (`ROW_BLOCK`): each key a lane
    /// group fetches serves that many rows, and the workgroup that many times more rows; the
    /// other kernels are left as they are.
    pub(crate) fn with_row_block(self, row_block: u32) -> Kernel {
        match self.kind {
            KernelKind::Forward => Kernel { row_block, ..self },
            _ => self,
        }
    }

    /// The forward kernel as one split of split-KV (`split`), leaving partials for the split
    /// combine; the other kernels are left as they are.
    pub(crate) fn with_split(self, split: bool) -> Kernel {
        match self.kind {
            KernelKind::Forward => Kernel { split, ..self },
            _ => self,
        }
    }

    /// The forward and key-mass kernels with rows of `row_lanes` lanes ([`row_lanes`]; the
    /// key-mass pass adds its scores' parts as those lanes do); the other kernels are left as
    /// they are.
    pub(crate) fn with_row_lanes(self, row_lanes: u32) -> Kernel {
        match self.kind {
            KernelKind::Forward | KernelKind::KeyMass => Kernel { row_lanes, ..self },
            _ => self,
        }
    }

    /// The forward or key-mass kernel of a call with a softcap (`SOFTCAP`), the only kernels
    /// that form scores; the other kernels are left as they are. A constant rather than a
    /// test of the uniform `softcap`: lavapipe (Mesa 22.3) runs both sides of every branch,
    /// uniform or not, so a test would still cost a division and a tanh per score.
    pub(crate) fn with_softcap(self, softcap: bool) -> Kernel {
        match self.kind {
            KernelKind::Forward | KernelKind::KeyMass => Kernel { softcap, ..self },
            _ => self,
        }
    }

    /// The WGSL module of this kernel: the specialisation header, then the shared files and
    /// the kernel.
    pub(crate) fn source(&self) -> String {
        let elem = match self.dtype {
            DType::F32 => "ELEM_F32",
            DType::F16 => "ELEM_F16",
            DType::Bf16 => "ELEM_BF16",
        };
        let gate = match self.gate {
            Gate::TwoSigmoid => "GATE_TWO_SIGMOID",
            Gate::Sigmoid => "GATE_SIGMOID",
            Gate::Identity => "GATE_IDENTITY",
        };
        let mut text = format!(
            "// Specialisation of `{entry}` (generated by src/wgsl/kernel.rs).\n\
             const HEAD_DIM: u32 = {head_dim}u;\n\
             const ROW_LANES: u32 = {row_lanes}u;\n\
             const ROW_BLOCK: u32 = {row_block}u;\n\
             const WORKGROUP_SIZE: u32 = {workgroup}u;\n\
             const TILE_LEN: u32 = {tile}u;\n\
             const CHUNK_LEN: u32 = {chunk}u;\n\
             const ELEM: u32 = {elem};\n\
             const VARIANT: u32 = {variant}u;\n\
             const GATE_FN: u32 = {gate};\n\
             const GATE_PER_CHANNEL: bool = {per_channel};\n\
             const STATS: bool = {stats};\n\
             const KEY_MASS: bool = {keys};\n\
             const SEQ_RECORDS: bool = {seq_records};\n\
             const SPLIT: bool = {split};\n\
             const SOFTCAP: bool = {softcap};\n\
             const LOAD_UNROLL: u32 = {LOAD_UNROLL}u;\n\
             const STAGE_UNROLL: u32 = {STAGE_UNROLL}u;\n\
             const KEYS_PER_LANE: u32 = {keys_per_lane}u;\n\
             const WORKGROUP_ROUND: u32 = {WORKGROUP_ROUND}u;\n",
            entry = self.kind.entry_point(),
            head_dim = self.head_dim,
            row_lanes = self.row_lanes,
            row_block = self.row_block,
            workgroup = self.workgroup,
            tile = self.tile,
            chunk = self.chunk,
            variant = self.variant,
            per_channel = self.per_channel_gate,
            stats = self.stats.heads(),
            keys = self.stats.keys(),
            seq_records = self.seq_records,
            split = self.split,
            softcap = self.softcap,
            keys_per_lane = key_mass_keys_per_lane(self.head_dim as usize),
        );
        // The statistics record's layout comes from the contract, not from a second copy.
        text.push_str(&format!("const STAT_COUNT: u32 = {}u;\n", Stat::COUNT));
        for stat in Stat::ALL {
            text.push_str(&format!(
                "const STAT_{}: u32 = {}u;\n",
                stat.name().to_uppercase(),
                stat.index()
            ));
        }
        text.push_str(COMMON);
        match self.kind {
            KernelKind::Forward => {
                text.push_str(QK_LOADS);
                text.push_str(FORWARD);
                text.push_str(if self.subgroups {
                    KEYS_SUBGROUP
                } else {
                    KEYS_WORKGROUP
                });
            }
            KernelKind::Combine => text.push_str(COMBINE),
            KernelKind::KeyMass => {
                text.push_str(QK_LOADS);
                text.push_str(KEY_MASS);
                text.push_str(if self.subgroups {
                    KEY_MASS_SUBGROUP
                } else {
                    KEY_MASS_WORKGROUP
                });
            }
            KernelKind::Seqs => text.push_str(SEQS),
            // The forward file's bindings, loads and O stores, then the merge's entry point.
            KernelKind::SplitCombine => {
                text.push_str(QK_LOADS);
                text.push_str(FORWARD);
                text.push_str(KEYS_WORKGROUP);
                text.push_str(SPLIT_COMBINE);
            }
        }
        // `//unroll_all` writes whole counts of D4 or fewer (and the key-mass lane's keys).
        let all_chunk = (self.head_dim / 4).max(key_mass_keys_per_lane(self.head_dim as usize));
        let all_chunk = all_chunk.max(self.row_block);
        expand_unrolls(
            &text,
            self.head_dim,
            self.row_lanes,
            self.row_block,
            self.chunk,
            all_chunk,
        )
    }
}

/// Expands every `//unroll` and `//unroll_all` line (see the module docs); `//unroll_all`
/// writes at most `all_chunk` copies per loop trip. `chunk` is the kernel's `CHUNK_LEN`.
fn expand_unrolls(
    source: &str,
    head_dim: u32,
    row_lanes: u32,
    row_block: u32,
    chunk: u32,
    all_chunk: u32,
) -> String {
    let mut out = String::with_capacity(source.len() * 2);
    for line in source.lines() {
        let trimmed = line.trim_start();
        // `//unroll_all`, `//unroll` or `//unroll(K)` (at most K copies per trip).
        let (directive, max) = if let Some(d) = trimmed.strip_prefix("//unroll_all ") {
            (d, all_chunk)
        } else if let Some(d) = trimmed.strip_prefix("//unroll ") {
            (d, UNROLL_CHUNK)
        } else if let Some((k, d)) = trimmed
            .strip_prefix("//unroll(")
            .and_then(|rest| rest.split_once(") "))
        {
            let k = k
                .parse()
                .expect("an unroll chunk is a literal: `//unroll(8) c < N: ...`");
            (d, k)
        } else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let indent = &line[..line.len() - trimmed.len()];
        let (head, statement) = directive
            .split_once(':')
            .expect("an unroll directive reads `//unroll c < N: statement`");
        let (var, count) = head
            .split_once('<')
            .expect("an unroll directive reads `//unroll c < N: statement`");
        let count = match count.trim() {
            "HEAD_DIM" => head_dim,
            "D4" => head_dim / 4,
            "LANE_QUADS" => head_dim / 4 / row_lanes,
            "ROW_LANES" => row_lanes,
            "ROW_BLOCK" => row_block,
            "LOAD_UNROLL" => LOAD_UNROLL,
            "STAGE_UNROLL" => STAGE_UNROLL,
            "KEYS_PER_LANE" => key_mass_keys_per_lane(head_dim as usize),
            "ROW_QUADS_HELD" => (head_dim / 4).div_ceil(chunk.max(1)),
            n => n
                .parse()
                .expect("an unroll count is HEAD_DIM, D4, LANE_QUADS, ROW_LANES, ROW_BLOCK, LOAD_UNROLL, STAGE_UNROLL, KEYS_PER_LANE, ROW_QUADS_HELD or a literal"),
        };
        let (var, statement) = (var.trim(), statement.trim());
        let chunk = unroll_chunk_at_most(count, max);
        if chunk >= count {
            for i in 0..count {
                let copy = replace_identifier(statement, var, &format!("{i}u"));
                out.push_str(&format!("{indent}{copy}\n"));
            }
            continue;
        }
        let base = format!("{var}_chunk");
        out.push_str(&format!(
            "{indent}for (var {base} = 0u; {base} < {count}u; {base} += {chunk}u) {{\n"
        ));
        for i in 0..chunk {
            let copy = replace_identifier(statement, var, &format!("({base} + {i}u)"));
            out.push_str(&format!("{indent}    {copy}\n"));
        }
        out.push_str(&format!("{indent}}}\n"));
    }
    out
}

/// `text` with every whole identifier `name` replaced by `with`.
fn replace_identifier(text: &str, name: &str, with: &str) -> String {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(|c: char| is_ident(c)) {
        out.push_str(&rest[..start]);
        let token = &rest[start..];
        let end = token.find(|c: char| !is_ident(c)).unwrap_or(token.len());
        out.push_str(if &token[..end] == name {
            with
        } else {
            &token[..end]
        });
        rest = &token[end..];
    }
    out.push_str(rest);
    out
}

/// Loop trips of one settling loop of the shaders (common.wgsl): its one trip and its exit.
const SETTLE_TRIPS: u64 = 2;

/// An upper bound on the loop iterations one invocation of each kernel of a call runs, all
/// loops together: what lavapipe's budget ([`LAVAPIPE_LOOP_ITERATIONS`]) is checked against.
/// It mirrors the loops of the shaders, each counted with one extra trip for its exit. On its
/// exit trip gallivm runs a loop's body once more with every lane masked off (it never skips
/// code), so each loop nested in it runs one (exit) trip there too: in the forward kernel a
/// decode at d = 128 lost its last keys to a count without them.
///
/// - forward: per K/V tile, the tile loop, the staging loop (`STAGE_UNROLL` quads of K and of
///   V a trip), the K/V measurement (`MEASURE_CHUNK` quads a trip), the loop over the rounds
///   of `keys_held` keys and in each its two loops over its keys (the scores one trip per key,
///   the weights two keys a trip; the work on the lane's quads is written out); the
///   ClippedSoftmax second pass again without the measurement; the fold of the K/V records
///   (one trip per key of a tile).
/// - key mass: per tile of query rows, the tile loop, the Q and row-state loads and the loop
///   over the rows; one loop over the channels of K.
/// - combine: one trip per query row, and one per statistic (a bad sequence's NaN record).
///
/// Each settling loop (common.wgsl: two in the forward kernel, one in the key mass) adds
/// [`SETTLE_TRIPS`].
pub(crate) struct LoopTrips {
    pub forward: u64,
    pub key_mass: u64,
    pub combine: u64,
}

impl LoopTrips {
    /// The bound for one call: `workgroup` invocations per forward workgroup with K/V tiles of
    /// `tile` keys held `keys_held` at a time, key-mass Q tiles of `key_mass_tile` rows.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn of(
        q_len: u64,
        kv_len: u64,
        head_dim: u64,
        workgroup: u64,
        tile: u64,
        keys_held: u64,
        key_mass_tile: u64,
        clipped: bool,
    ) -> LoopTrips {
        let unroll = u64::from(LOAD_UNROLL);
        let loads = |elements: u64, threads: u64| elements.div_ceil(threads * unroll) + 1;
        let quads = head_dim / 4;
        let kv_tiles = kv_len.div_ceil(tile);
        let stage = (tile * quads).div_ceil(workgroup * u64::from(STAGE_UNROLL)) + 1;
        let chunked = |count: u64, max: u32| {
            let chunk = u64::from(unroll_chunk_at_most(count as u32, max));
            if chunk >= count { 0 } else { count / chunk + 1 }
        };
        let measure = chunked(quads, MEASURE_CHUNK);
        let measure_exit = u64::from(measure > 0);
        let rounds = tile.div_ceil(keys_held.max(1));
        // The loops over each round's keys, with their exits: the scores one trip per key, the
        // weights two keys a trip. The rounds loop's own exit trip runs one trip of each.
        let scores = tile + rounds;
        let weights = (tile + rounds).div_ceil(2) + rounds;
        let first_rounds = rounds + scores + weights + 1 + 2;
        let second_rounds = rounds + scores + 1 + 1;
        // The tile loop's exit trip: one of its own, of the staging loop, of the measurement
        // loop, and the rounds loop's exit trip.
        let first_pass = kv_tiles * (1 + stage + measure + first_rounds) + 1 + 1 + measure_exit + 3;
        // The loop over a window's tiles before the first that rows see (measured only): its
        // tiles are among kv_tiles above, its exit trip is its own.
        let measured_only = 1 + 1 + measure_exit;
        let second_pass = if clipped {
            kv_tiles * (1 + stage + second_rounds) + 1 + 1 + 2
        } else {
            0
        };
        let channels = unrolled_trips(head_dim);
        let keys_block = u64::from(BLOCK_M);
        let row_tiles = q_len.div_ceil(key_mass_tile);
        let row_state = (key_mass_tile * ROW_STATE_LEN as u64).div_ceil(keys_block) + 1;
        LoopTrips {
            forward: first_pass + measured_only + second_pass + tile + 1 + 2 * SETTLE_TRIPS,
            key_mass: row_tiles
                * (1 + loads(key_mass_tile * head_dim, keys_block)
                    + row_state
                    + key_mass_tile * (1 + channels)
                    + 1)
                + head_dim
                + 1
                + SETTLE_TRIPS,
            combine: q_len + 1 + Stat::COUNT as u64 + 1,
        }
    }
}

/// The largest power-of-two tile (in rows of `head_dim` f32) such that `tiles_per_group` tiles
/// plus `extra_bytes` fit in the workgroup memory the device allows, at most 64 rows.
pub(crate) fn tile_rows(
    head_dim: usize,
    tiles_per_group: u32,
    extra_bytes: u32,
    workgroup_storage: u32,
) -> Option<u32> {
    let row_bytes = head_dim as u32 * 4 * tiles_per_group;
    let mut tile = MAX_TILE;
    while tile >= 1 {
        if tile * row_bytes + extra_bytes <= workgroup_storage {
            return Some(tile);
        }
        tile /= 2;
    }
    None
}

/// The uniform block of every kernel. Mirrors `struct Params` in `shaders/common.wgsl`, field
/// for field (all 4 bytes, so WGSL's uniform layout adds no padding).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Params {
    pub batch: u32,
    pub q_heads: u32,
    pub group: u32,
    pub q_len: u32,
    pub kv_len: u32,
    pub q_blocks: u32,
    pub scale: f32,
    pub softcap: f32,
    pub sigmoid_bias: f32,
    pub zeta: f32,
    pub gamma: f32,
    pub q_offset: u32,
    pub q_stride_b: u32,
    pub q_stride_n: u32,
    pub q_stride_h: u32,
    pub k_offset: u32,
    pub k_stride_b: u32,
    pub k_stride_n: u32,
    pub k_stride_h: u32,
    pub v_offset: u32,
    pub v_stride_b: u32,
    pub v_stride_n: u32,
    pub v_stride_h: u32,
    pub o_offset: u32,
    pub o_stride_b: u32,
    pub o_stride_n: u32,
    pub o_stride_h: u32,
    pub lse_offset: u32,
    pub stats_offset: u32,
    pub key_mass_offset: u32,
    pub param_a_offset: u32,
    pub param_b_offset: u32,
    pub partials_offset: u32,
    pub kv_partials_offset: u32,
    pub rows_offset: u32,
    pub nan_bits: u32,
    pub neg_inf_bits: u32,
    pub window_left: u32,
    pub window_right: u32,
    pub q_packed: u32,
    pub kv_mode: u32,
    pub q_total: u32,
    pub kv_total: u32,
    pub pages: u32,
    pub page_size: u32,
    pub max_pages: u32,
    pub seqs_offset: u32,
    pub table_offset: u32,
    pub cu_q_offset: u32,
    pub cu_k_offset: u32,
    pub lens_offset: u32,
    pub block_table_offset: u32,
    pub bias_per_seq: u32,
    pub splits: u32,
    pub split_keys: u32,
    pub split_offset: u32,
    /// 1: the trip count of the shaders' settling loops (common.wgsl).
    pub one: u32,
    pub reserved0: u32,
    pub reserved1: u32,
    pub reserved2: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields of `struct Params` in common.wgsl, in order.
    fn wgsl_params_fields() -> Vec<String> {
        let start = COMMON
            .find("struct Params {")
            .expect("struct Params in common.wgsl");
        let body = &COMMON[start..];
        let body = &body[body.find('{').unwrap() + 1..body.find('}').unwrap()];
        body.lines()
            .filter_map(|line| line.trim().split_once(':').map(|(name, _)| name.trim()))
            .filter(|name| !name.starts_with("//") && !name.is_empty())
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn params_mirror_the_wgsl_struct() {
        let fields = wgsl_params_fields();
        assert_eq!(std::mem::size_of::<Params>(), fields.len() * 4);
        assert_eq!(std::mem::size_of::<Params>() % 16, 0, "uniform size");
        let dbg = format!("{:?}", Params::default());
        let mut at = 0;
        for f in &fields {
            let pos = dbg[at..]
                .find(&format!("{f}: "))
                .unwrap_or_else(|| panic!("field {f} missing or out of order"));
            at += pos;
        }
    }

    #[test]
    fn record_lengths_match_the_shaders() {
        assert!(COMMON.contains(&format!("const PARTIAL_LEN: u32 = {PARTIAL_LEN}u;")));
        assert!(COMMON.contains(&format!("const KV_PARTIAL_LEN: u32 = {KV_PARTIAL_LEN}u;")));
        assert!(COMMON.contains(&format!("const ROW_STATE_LEN: u32 = {ROW_STATE_LEN}u;")));
        assert!(COMMON.contains(&format!("const SEQ_LEN: u32 = {SEQ_LEN}u;")));
        assert!(FORWARD.contains(&format!("const SPLIT_HEAD: u32 = {SPLIT_HEAD_LEN}u;")));
        for (name, value) in [
            ("KV_DENSE", KV_DENSE),
            ("KV_LENS", KV_LENS),
            ("KV_PACKED", KV_PACKED),
            ("KV_PAGED", KV_PAGED),
        ] {
            assert!(
                COMMON.contains(&format!("const {name}: u32 = {value}u;")),
                "{name}"
            );
        }
    }

    #[test]
    fn tiles_follow_the_workgroup_memory_limit() {
        // WebGPU's default 16 KiB with d = 256: 4 keys of K and V (8 KiB) plus 64 partial records (5 KiB).
        assert_eq!(tile_rows(256, 2, 5120, 16384), Some(4));
        // lavapipe's 32 KiB with d = 64.
        assert_eq!(tile_rows(64, 2, 5120, 32768), Some(32));
        assert_eq!(tile_rows(8, 2, 0, 1 << 20), Some(64));
        assert_eq!(tile_rows(256, 2, 512, 1024), None);
    }

    #[test]
    fn unroll_writes_short_counts_out_and_chunks_long_ones() {
        let text = "a\n    //unroll c < HEAD_DIM: x += q[c] * k[base + c];\nb\n";
        let short = expand_unrolls(text, 4, 1, 1, 1, 64);
        assert_eq!(
            short,
            "a\n    x += q[0u] * k[base + 0u];\n    x += q[1u] * k[base + 1u];\n    \
             x += q[2u] * k[base + 2u];\n    x += q[3u] * k[base + 3u];\nb\n"
        );
        let long = expand_unrolls(text, 64, 1, 1, 1, 64);
        assert!(long.contains("for (var c_chunk = 0u; c_chunk < 64u; c_chunk += 32u) {"));
        assert!(long.contains("x += q[(c_chunk + 31u)] * k[base + (c_chunk + 31u)];"));
        assert!(!long.contains("(c_chunk + 32u)"));
        // Identifiers that merely contain the variable's name are left alone.
        assert_eq!(
            replace_identifier("cc + c + c_1 + ac", "c", "7u"),
            "cc + 7u + c_1 + ac"
        );
        assert_eq!(unrolled_trips(32), 0);
        assert_eq!(unrolled_trips(64), 3);
        assert_eq!(unrolled_trips(40), 6); // chunks of 8
    }

    #[test]
    fn every_source_is_expanded() {
        for head_dim in (8..=256).step_by(8) {
            for kind in [
                KernelKind::Forward,
                KernelKind::Combine,
                KernelKind::KeyMass,
                KernelKind::Seqs,
                KernelKind::SplitCombine,
            ] {
                let kernel = Kernel::new(
                    kind,
                    head_dim,
                    BLOCK_M,
                    8,
                    DType::F16,
                    &Variant::Softmax,
                    StatsLevel::HeadsAndKeys,
                    true,
                );
                let source = kernel.source();
                let left = source
                    .lines()
                    .any(|l| l.trim_start().starts_with("//unroll "));
                assert!(!left, "{kind:?} at d = {head_dim}");
            }
        }
    }
}
