//! The kernels' specialisation: which WGSL text a pipeline is built from, the tile sizes chosen
//! from the device's limits, and the uniform block the kernels read.
//!
//! Specialisation is textual and happens in one place, [`Kernel::source`]: a header of WGSL
//! `const` declarations (head dim, tile sizes, dtype, variant, gate, mask, statistics level),
//! then `shaders/common.wgsl`, one reduction file (with or without subgroup operations) and one
//! kernel file. Constants rather than override constants because the head dim sizes private
//! arrays, which WGSL only allows with a `const`.
//!
//! One directive is expanded on the way: a line `//unroll c < N: statement` runs the
//! statement for c = 0..N, written out whole when N is at most [`UNROLL_CHUNK`] and in a loop
//! over chunks of that many copies otherwise (N is `HEAD_DIM`, `LOAD_UNROLL` or a literal).
//! WGSL has no unroll attribute, and lavapipe needs one: gallivm ends a shader invocation
//! after 65535 loop iterations in all (`LP_MAX_TGSI_LOOP_ITERATIONS`, shared by every loop of
//! the shader), silently. A loop over the channels inside the loop over keys spent that budget
//! after ~450 keys at d = 64; in chunks of 32 a key costs about 8 iterations there. Longer
//! chunks, or vec4 rows, would cost fewer, but LLVM then takes several times longer to build
//! each pipeline (a minute at d = 256 written out whole), which CI pays for every
//! specialisation it sweeps. GPU compilers unroll such loops themselves; nothing is lost there.

use crate::contract::{DType, Gate, GateGranularity, Mask, Stat, StatsLevel, Variant};

const COMMON: &str = include_str!("../../shaders/common.wgsl");
const REDUCE_WORKGROUP: &str = include_str!("../../shaders/reduce_workgroup.wgsl");
const REDUCE_SUBGROUP: &str = include_str!("../../shaders/reduce_subgroup.wgsl");
const FORWARD: &str = include_str!("../../shaders/forward.wgsl");
const COMBINE: &str = include_str!("../../shaders/combine.wgsl");
const KEY_MASS: &str = include_str!("../../shaders/key_mass.wgsl");

/// f32 values in one partial statistics record (`PARTIAL_LEN` in `shaders/common.wgsl`).
pub(crate) const PARTIAL_LEN: usize = 20;
/// f32 values of per-row state kept for the key-mass pass (`ROW_STATE_LEN`).
pub(crate) const ROW_STATE_LEN: usize = 3;

/// Query rows per forward workgroup (one invocation each), and keys per key-mass workgroup.
/// 64 keeps lavapipe's 8-wide SIMD busy and is a common GPU wavefront multiple.
pub(crate) const BLOCK_M: u32 = 64;
/// The forward workgroup for short queries (decode): fewer idle invocations.
pub(crate) const BLOCK_M_SHORT: u32 = 16;
/// Invocations per combine workgroup (one (batch, head) each).
pub(crate) const COMBINE_THREADS: u32 = 64;
/// Largest K/V tile, in keys.
const MAX_TILE: u32 = 64;
/// Elements each invocation loads per iteration of a tile-loading loop (written out).
pub(crate) const LOAD_UNROLL: u32 = 8;
/// The most copies of a statement one `//unroll` writes out per loop iteration.
pub(crate) const UNROLL_CHUNK: u32 = 32;

/// Copies of the statement per iteration for an `//unroll` over `count`: all of them up to
/// [`UNROLL_CHUNK`], else the largest of 32, 16, 8, 4, 2 that divides `count`.
fn unroll_chunk(count: u32) -> u32 {
    if count <= UNROLL_CHUNK {
        return count.max(1);
    }
    [32, 16, 8, 4, 2]
        .into_iter()
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

/// The three kernels of a forward call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum KernelKind {
    /// The fused forward pass (O, LSE, partial statistics, row state).
    Forward,
    /// Partial statistics to the per-head record.
    Combine,
    /// The second pass of `HeadsAndKeys`.
    KeyMass,
}

impl KernelKind {
    /// The entry point's name, which is also the name of the kernel's function in its file.
    pub(crate) fn entry_point(self) -> &'static str {
        match self {
            KernelKind::Forward => "forward",
            KernelKind::Combine => "combine",
            KernelKind::KeyMass => "key_mass",
        }
    }
}

/// Everything a pipeline is specialised on; the key of the pipeline cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Kernel {
    pub kind: KernelKind,
    pub head_dim: u32,
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
    pub causal: bool,
    pub stats: StatsLevel,
    /// Subgroup reductions (else workgroup-memory trees).
    pub subgroups: bool,
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
        mask: Mask,
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
            workgroup,
            tile,
            dtype,
            variant: variant_code(variant),
            gate,
            per_channel_gate,
            causal: mask == Mask::Causal,
            stats,
            subgroups,
        };
        // The smaller kernels read only part of the specialisation; the rest is set to one
        // value so that they are built once for all the forward kernels that share them
        // (pipeline builds dominate a first call, above all on lavapipe).
        let neutral = Kernel {
            dtype: DType::F32,
            variant: variant_code(&Variant::Softmax),
            gate: Gate::TwoSigmoid,
            per_channel_gate: false,
            causal: false,
            stats: StatsLevel::HeadsAndKeys,
            subgroups: false,
            ..full
        };
        match kind {
            // Without statistics nothing is reduced: both paths are the same kernel.
            KernelKind::Forward if !stats.heads() => Kernel {
                subgroups: false,
                ..full
            },
            KernelKind::Forward => full,
            // Reads the partial records: depends on the head dim alone.
            KernelKind::Combine => neutral,
            // Scores, mask and the variant's probability (softmax family, Sigmoid, Clipped).
            KernelKind::KeyMass => {
                let family = match variant {
                    Variant::Sigmoid { .. } | Variant::ClippedSoftmax { .. } => variant,
                    _ => &Variant::Softmax,
                };
                Kernel {
                    dtype,
                    variant: variant_code(family),
                    causal: full.causal,
                    ..neutral
                }
            }
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
             const WORKGROUP_SIZE: u32 = {workgroup}u;\n\
             const TILE_LEN: u32 = {tile}u;\n\
             const ELEM: u32 = {elem};\n\
             const VARIANT: u32 = {variant}u;\n\
             const GATE_FN: u32 = {gate};\n\
             const GATE_PER_CHANNEL: bool = {per_channel};\n\
             const CAUSAL: bool = {causal};\n\
             const STATS: bool = {stats};\n\
             const KEY_MASS: bool = {keys};\n\
             const LOAD_UNROLL: u32 = {LOAD_UNROLL}u;\n",
            entry = self.kind.entry_point(),
            head_dim = self.head_dim,
            workgroup = self.workgroup,
            tile = self.tile,
            variant = self.variant,
            per_channel = self.per_channel_gate,
            causal = self.causal,
            stats = self.stats.heads(),
            keys = self.stats.keys(),
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
                text.push_str(if self.subgroups {
                    REDUCE_SUBGROUP
                } else {
                    REDUCE_WORKGROUP
                });
                text.push_str(FORWARD);
            }
            KernelKind::Combine => text.push_str(COMBINE),
            KernelKind::KeyMass => text.push_str(KEY_MASS),
        }
        expand_unrolls(&text, self.head_dim)
    }
}

/// Expands every `//unroll c < N: statement` line (see the module docs).
fn expand_unrolls(source: &str, head_dim: u32) -> String {
    let mut out = String::with_capacity(source.len() * 2);
    for line in source.lines() {
        let trimmed = line.trim_start();
        let Some(directive) = trimmed.strip_prefix("//unroll ") else {
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
            "LOAD_UNROLL" => LOAD_UNROLL,
            n => n
                .parse()
                .expect("an unroll count is HEAD_DIM, LOAD_UNROLL or a literal"),
        };
        let (var, statement) = (var.trim(), statement.trim());
        let chunk = unroll_chunk(count);
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

/// An upper bound on the loop iterations one invocation of each kernel of a call runs, all
/// loops together: what lavapipe's budget ([`LAVAPIPE_LOOP_ITERATIONS`]) is checked against.
/// It mirrors the loops of the shaders, each counted with one extra trip for its exit:
///
/// - forward: per K/V tile, the tile loop, the tile load (`LOAD_UNROLL` elements a trip), the
///   K/V measurement and the two loops over the tile's keys (scores, then weights); the
///   ClippedSoftmax second pass again without the measurement; per row, six loops over the
///   channels (Q, the sink, the sink value, the epilogue, the store) and the reduction.
/// - key mass: per tile of query rows, the tile loop, the Q and row-state loads and the loop
///   over the rows; one loop over the channels of K.
/// - combine: one trip per query block.
pub(crate) struct LoopTrips {
    pub forward: u64,
    pub key_mass: u64,
    pub combine: u64,
}

impl LoopTrips {
    /// The bound for one call: `workgroup` rows per forward workgroup with K/V tiles of
    /// `tile` keys, key-mass Q tiles of `key_mass_tile` rows.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn of(
        q_len: u64,
        kv_len: u64,
        head_dim: u64,
        workgroup: u64,
        tile: u64,
        key_mass_tile: u64,
        q_blocks: u64,
        clipped: bool,
    ) -> LoopTrips {
        let unroll = u64::from(LOAD_UNROLL);
        let loads = |elements: u64, threads: u64| elements.div_ceil(threads * unroll) + 1;
        let channels = unrolled_trips(head_dim);
        let kv_tiles = kv_len.div_ceil(tile);
        let tile_load = loads(tile * head_dim, workgroup);
        // Keys of the tile this invocation measures, each a loop over its channels.
        let measure = tile.div_ceil(workgroup) * (1 + channels) + 1;
        // The score loop and the weight loop over the tile's keys, each key a loop over the
        // channels in each; the rescale of the accumulator.
        let keys = 2 * (tile * (1 + channels) + 1) + channels;
        let first_pass = 1 + tile_load + measure + keys;
        let second_pass = if clipped {
            1 + tile_load + tile * (1 + 2 * channels) + 1
        } else {
            0
        };
        let per_row = 6 * (head_dim + 1) + workgroup + 1;
        let keys_block = u64::from(BLOCK_M);
        let row_tiles = q_len.div_ceil(key_mass_tile);
        let row_state = (key_mass_tile * ROW_STATE_LEN as u64).div_ceil(keys_block) + 1;
        LoopTrips {
            forward: kv_tiles * (first_pass + second_pass) + per_row,
            key_mass: row_tiles
                * (1 + loads(key_mass_tile * head_dim, keys_block)
                    + row_state
                    + key_mass_tile * (1 + channels)
                    + 1)
                + head_dim
                + 1,
            combine: q_blocks + 1,
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
    pub rows_offset: u32,
    pub nan_bits: u32,
    pub neg_inf_bits: u32,
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
        assert!(COMMON.contains(&format!("const ROW_STATE_LEN: u32 = {ROW_STATE_LEN}u;")));
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
        let short = expand_unrolls(text, 4);
        assert_eq!(
            short,
            "a\n    x += q[0u] * k[base + 0u];\n    x += q[1u] * k[base + 1u];\n    \
             x += q[2u] * k[base + 2u];\n    x += q[3u] * k[base + 3u];\nb\n"
        );
        let long = expand_unrolls(text, 64);
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
            ] {
                let kernel = Kernel::new(
                    kind,
                    head_dim,
                    BLOCK_M,
                    8,
                    DType::F16,
                    &Variant::Softmax,
                    Mask::None,
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
