//! What is fixed when a module is built, for every executor of the kernels (NVRTC and the GPU,
//! or the host compiler and the emulator): the sources, the specialisation space and the
//! launch geometry the kernels are written for.
//!
//! A [`Specialization`] is what changes the shape of the code: the element type and, for the
//! tensor-core path, the head-dim tile. Everything else (variant, mask, softcap, scale, gate,
//! statistics level) is a kernel argument, so the whole space is nine modules per
//! architecture ([`Specialization::ALL`]). Each module holds the forward kernel, the kernel
//! that finishes the statistics record and the key-mass kernel, and on tensor cores the
//! split-KV combine.

use std::fmt;
use std::path::PathBuf;

use crate::contract::{DType, KvSeqs, Problem, Variant};

const COMMON_SRC: &str = include_str!("../../cuda/common.cuh");
const TC_SRC: &str = include_str!("../../cuda/attention_tc.cu");
const SIMT_SRC: &str = include_str!("../../cuda/attention_simt.cu");
const STATS_SRC: &str = include_str!("../../cuda/stats.cu");
const COMBINE_SRC: &str = include_str!("../../cuda/combine.cu");

/// Entry point of the tensor-core forward kernel's fast path on evenly strided K/V tiles.
pub const TC_FAST_ENTRY: &str = "attention_tc";
/// Entry point of the tensor-core forward kernel's fast path on a paged cache whose pages are
/// not a multiple of the K/V tile (each key's page looked up as the tile is loaded).
pub const TC_PAGED_ENTRY: &str = "attention_tc_paged";
/// Entry point of the tensor-core forward kernel's generic path (softcap, Sigmoid,
/// ClippedSoftmax).
pub const TC_GENERIC_ENTRY: &str = "attention_tc_generic";
/// Entry point of the SIMT forward kernel.
pub const SIMT_ENTRY: &str = "attention_simt";
/// Entry point of the statistics kernel that combines the forward kernel's per-block partial
/// records into the record.
pub const FINALIZE_ENTRY: &str = "finalize_stats";
/// Entry point of the split-KV combine (tensor-core modules): merges each row's splits in split
/// order and finishes the row.
pub const COMBINE_ENTRY: &str = "combine_splits";
/// Entry point of the second pass that computes `key_mass` (keys outside, one block per key
/// tile; on tensor cores in the tensor-core modules).
pub const KEY_MASS_ENTRY: &str = "key_mass";

/// The head-dim tile of the tensor-core kernel: the smallest that holds d. Channels between d
/// and the tile are zero-filled in shared memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HeadDimTile {
    /// d ≤ 64 (tuned for 64): 128 query rows (8 warps), 64-key tiles, 48 KiB of shared memory.
    D64,
    /// 64 < d ≤ 128 (tuned for 128): 128 query rows (8 warps), 64-key tiles, 96 KiB.
    D128,
    /// 128 < d ≤ 256: 64 query rows (4 warps), 32-key tiles, 96 KiB.
    D256,
}

impl HeadDimTile {
    /// Every tile.
    pub const ALL: [HeadDimTile; 3] = [HeadDimTile::D64, HeadDimTile::D128, HeadDimTile::D256];

    /// The tile for head dim `d` (validated: a multiple of 8 up to 256).
    pub fn for_head_dim(d: usize) -> HeadDimTile {
        match d {
            0..=64 => HeadDimTile::D64,
            65..=128 => HeadDimTile::D128,
            _ => HeadDimTile::D256,
        }
    }

    /// Channels in the tile.
    pub fn channels(self) -> usize {
        match self {
            HeadDimTile::D64 => 64,
            HeadDimTile::D128 => 128,
            HeadDimTile::D256 => 256,
        }
    }

    /// Keys per K/V tile (`kBlockN` of attention_tc.cu): 64 keeps S at 32 registers per
    /// thread; at d = 256 the O accumulator alone is 128 registers, so the tile halves to stay
    /// within the register file.
    pub fn block_n(self) -> usize {
        if self.channels() <= 128 { 64 } else { 32 }
    }

    /// Warps per block of the tensor-core kernels; each owns 16 query rows (the m of
    /// m16n8k16) and keeps their Q fragments in registers. FlashAttention-2's 128-row block
    /// as 8 warps x 16 rows, not 4 x 32: with 16 rows a warp holds Q (32 registers at d = 128)
    /// and S and O for one m16 slab, where 32 rows would need Q re-read from shared memory per
    /// k-step and 64 more accumulator registers, past the 255 a thread may have with the
    /// statistics' state. At d = 256 the O accumulator alone is 128 registers and the 99 KiB
    /// of shared memory an sm_86/sm_89 block may have hold only 64 rows: 4 warps.
    pub fn warps(self) -> usize {
        if self.channels() <= 128 { 8 } else { 4 }
    }

    /// Query rows per block of the tensor-core kernel (`kBlockM`).
    pub fn block_m(self) -> usize {
        self.warps() * TC_ROWS_PER_WARP
    }

    /// Dynamic shared memory of the forward kernel: a Q tile and double-buffered K and V
    /// tiles, unpadded (their 16-byte chunks are swizzled instead), 2-byte elements.
    fn forward_smem_bytes(self) -> usize {
        (self.block_m() + 4 * self.block_n()) * self.channels() * 2
    }

    /// Dynamic shared memory of the key-mass kernel: a K tile and double-buffered Q tiles.
    fn key_mass_smem_bytes(self) -> usize {
        (self.block_n() + 2 * self.block_m()) * self.channels() * 2
    }
}

/// Which forward kernel a module holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelPath {
    /// mma.sync m16n8k16 with ldmatrix and cp.async (f16, bf16; sm_80 and newer).
    TensorCore(HeadDimTile),
    /// Scalar f32 arithmetic: f32 inputs, and 16-bit inputs before sm_80.
    Simt,
}

/// One compiled module: what is fixed at compile time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Specialization {
    /// Element type of Q, K, V, O.
    pub dtype: DType,
    /// Forward kernel.
    pub path: KernelPath,
}

/// Whether `problem` takes the tensor-core kernel's fast path: the softmax family (Softmax,
/// ValueBias, ContextBias, KvSink, ContextScale, LogitSink, Softmax1) without softcap, whose
/// scores need one FFMA and one exp2 each, in every sequence layout. `takes_fast_path` in
/// cuda/common.cuh decides the same for the key-mass and combine kernels.
pub fn takes_fast_path(problem: &Problem) -> bool {
    problem.softcap.is_none()
        && !matches!(
            problem.variant,
            Variant::Sigmoid { .. } | Variant::ClippedSoftmax { .. }
        )
}

/// Whether the K/V tiles of `block_n` keys of `problem` are evenly strided (one lookup per
/// tile): in every layout but a paged cache whose page size is not a multiple of the tile,
/// whose keys are looked up one by one.
pub fn strided_tiles(problem: &Problem, block_n: usize) -> bool {
    match problem.seqs.kv {
        KvSeqs::Paged { page_size, .. } => page_size % block_n == 0,
        _ => true,
    }
}

/// The first compute capability with the tensor-core path (mma.sync bf16, ldmatrix, cp.async).
pub const TENSOR_CORE_MIN_ARCH: Arch = Arch { major: 8, minor: 0 };

impl Specialization {
    /// Every specialisation: 2 dtypes × 3 tiles on tensor cores, 3 dtypes on SIMT.
    pub const ALL: [Specialization; 9] = {
        use HeadDimTile::*;
        use KernelPath::*;
        const fn s(dtype: DType, path: KernelPath) -> Specialization {
            Specialization { dtype, path }
        }
        [
            s(DType::F16, TensorCore(D64)),
            s(DType::F16, TensorCore(D128)),
            s(DType::F16, TensorCore(D256)),
            s(DType::Bf16, TensorCore(D64)),
            s(DType::Bf16, TensorCore(D128)),
            s(DType::Bf16, TensorCore(D256)),
            s(DType::F32, Simt),
            s(DType::F16, Simt),
            s(DType::Bf16, Simt),
        ]
    };

    /// The specialisation that runs `dtype` at head dim `d` on a device of `arch`.
    pub fn select(dtype: DType, head_dim: usize, arch: Arch) -> Specialization {
        let path = match dtype {
            DType::F16 | DType::Bf16 if arch >= TENSOR_CORE_MIN_ARCH => {
                KernelPath::TensorCore(HeadDimTile::for_head_dim(head_dim))
            }
            _ => KernelPath::Simt,
        };
        Specialization { dtype, path }
    }

    /// Whether it runs on a device of `arch`.
    pub fn runs_on(&self, arch: Arch) -> bool {
        match self.path {
            KernelPath::TensorCore(_) => arch >= TENSOR_CORE_MIN_ARCH,
            KernelPath::Simt => true,
        }
    }

    /// A short name (`bf16-tc128`, `f32-simt`), used in cache file names and reports.
    pub fn name(&self) -> String {
        match self.path {
            KernelPath::TensorCore(t) => format!("{}-tc{}", self.dtype, t.channels()),
            KernelPath::Simt => format!("{}-simt", self.dtype),
        }
    }

    /// The forward kernels' entry points in the module: on tensor cores the fast path (the
    /// softmax family without softcap) on strided tiles and on key-by-key paged ones, and the
    /// generic path; on SIMT one kernel.
    pub fn forward_entries(&self) -> &'static [&'static str] {
        match self.path {
            KernelPath::TensorCore(_) => &[TC_FAST_ENTRY, TC_PAGED_ENTRY, TC_GENERIC_ENTRY],
            KernelPath::Simt => &[SIMT_ENTRY],
        }
    }

    /// The forward kernel that runs `problem` ([`takes_fast_path`], [`strided_tiles`]).
    pub fn forward_entry(&self, problem: &Problem) -> &'static str {
        match self.path {
            KernelPath::TensorCore(t) if takes_fast_path(problem) => {
                if strided_tiles(problem, t.block_n()) {
                    TC_FAST_ENTRY
                } else {
                    TC_PAGED_ENTRY
                }
            }
            KernelPath::TensorCore(_) => TC_GENERIC_ENTRY,
            KernelPath::Simt => SIMT_ENTRY,
        }
    }

    /// Every entry point of the module: the forward kernels, then the statistics record's and
    /// the key mass's, then (tensor-core modules) the split-KV combine.
    pub fn entries(&self) -> Vec<&'static str> {
        let mut all = self.forward_entries().to_vec();
        all.extend([FINALIZE_ENTRY, KEY_MASS_ENTRY]);
        if self.splits_kv() {
            all.push(COMBINE_ENTRY);
        }
        all
    }

    /// Whether the module can split the keys of a row (split-KV decode): the tensor-core
    /// modules. The SIMT kernel gives every query row a warp of its own already.
    pub fn splits_kv(&self) -> bool {
        matches!(self.path, KernelPath::TensorCore(_))
    }

    /// The full source NVRTC compiles: the defines, then the shared header and the kernels.
    pub fn source(&self) -> String {
        let elem = match self.dtype {
            DType::F32 => "ELEM_F32",
            DType::F16 => "ELEM_F16",
            DType::Bf16 => "ELEM_BF16",
        };
        let mut src = format!("#define {elem} 1\n");
        if let KernelPath::TensorCore(t) = self.path {
            src.push_str(&format!("#define HEAD_DIM_TILE {}\n", t.channels()));
        }
        src.push_str(&self.geometry_header());
        // `#line` keeps compiler messages (NVRTC's, g++'s) and the emulator's source locations
        // in the real files.
        let (kernel_name, kernel) = match self.path {
            KernelPath::TensorCore(_) => ("attention_tc.cu", TC_SRC),
            KernelPath::Simt => ("attention_simt.cu", SIMT_SRC),
        };
        let mut files = vec![
            ("common.cuh", COMMON_SRC),
            (kernel_name, kernel),
            ("stats.cu", STATS_SRC),
        ];
        if self.splits_kv() {
            files.push(("combine.cu", COMBINE_SRC));
        }
        for (name, text) in files {
            src.push_str(&format!("#line 1 \"cuda/{name}\"\n"));
            src.push_str(text);
        }
        src
    }

    /// The launch geometry as C++ constants, the first part of [`source`](Self::source): the
    /// kernels size their tiles from these, and check what they derive from them (shared
    /// memory, record sizes) against the host's values with `static_assert`s.
    pub fn geometry_header(&self) -> String {
        let mut constants = vec![
            ("kHostSimtWarps", SIMT_WARPS),
            ("kHostSimtBlockN", SIMT_BLOCK_N),
            ("kHostStatsThreads", STATS_THREADS as usize),
            ("kHostPartialCount", PARTIAL_COUNT),
            ("kHostChannelTensors", CHANNEL_TENSORS),
            ("kHostRowRecord", ROW_RECORD),
            ("kHostSplitScalars", SPLIT_SCALARS),
        ];
        if let KernelPath::TensorCore(t) = self.path {
            constants.push(("kHostTcWarps", t.warps()));
            constants.push(("kHostTcBlockM", t.block_m()));
            constants.push(("kHostTcBlockN", t.block_n()));
            constants.push(("kHostTcSmemBytes", t.forward_smem_bytes()));
            constants.push(("kHostTcKeyMassSmemBytes", t.key_mass_smem_bytes()));
            constants.push(("kHostCombineWarps", COMBINE_WARPS));
        }
        let mut s = String::from(
            "// Launch geometry, written by src/cuda/spec.rs: the host computes grids, shared memory\n\
             // and the workspace from the same numbers.\n",
        );
        for (name, value) in constants {
            s.push_str(&format!("constexpr int {name} = {value};\n"));
        }
        s
    }

    /// Dynamic shared memory of the forward kernel at head dim `d`, in bytes: the layouts of
    /// attention_tc.cu (which checks this number with a `static_assert`) and attention_simt.cu
    /// (whose accesses the emulator checks against exactly this much).
    pub fn forward_smem_bytes(&self, head_dim: usize) -> usize {
        match self.path {
            KernelPath::TensorCore(t) => t.forward_smem_bytes(),
            KernelPath::Simt => {
                (2 * SIMT_BLOCK_N * (head_dim + 1)
                    + SIMT_WARPS * head_dim
                    + SIMT_WARPS * PARTIAL_COUNT)
                    * 4
            }
        }
    }

    /// Query rows per block of the forward kernel.
    pub fn block_m(&self) -> usize {
        match self.path {
            KernelPath::TensorCore(t) => t.block_m(),
            KernelPath::Simt => SIMT_WARPS,
        }
    }

    /// Keys per K/V tile of the forward kernel (`kBlockN`).
    pub fn block_n(&self) -> usize {
        match self.path {
            KernelPath::TensorCore(t) => t.block_n(),
            KernelPath::Simt => SIMT_BLOCK_N,
        }
    }

    /// Threads per block of the forward kernel and of the key-mass kernel.
    pub fn threads(&self) -> u32 {
        match self.path {
            KernelPath::TensorCore(t) => (t.warps() * 32) as u32,
            KernelPath::Simt => (SIMT_WARPS * 32) as u32,
        }
    }

    /// Keys per block of the key-mass kernel: a K tile on tensor cores, one key per thread
    /// on SIMT.
    pub fn key_mass_block_keys(&self) -> usize {
        match self.path {
            KernelPath::TensorCore(t) => t.block_n(),
            KernelPath::Simt => SIMT_WARPS * 32,
        }
    }

    /// Dynamic shared memory of the key-mass kernel, in bytes.
    pub fn key_mass_smem_bytes(&self) -> usize {
        match self.path {
            KernelPath::TensorCore(t) => t.key_mass_smem_bytes(),
            KernelPath::Simt => 0,
        }
    }
}

impl fmt::Display for Specialization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

// Launch geometry, defined here once: `Specialization::source` writes it into every module as
// C++ constants (`geometry_header`), the kernels take their tiles from those, and their
// static_asserts hold what they derive (shared memory, record sizes) to the numbers below.
/// Query rows per warp of the tensor-core kernel (`kRowsPerWarp`: the m of m16n8k16); the
/// warps per block follow the head-dim tile ([`HeadDimTile`]).
const TC_ROWS_PER_WARP: usize = 16;
/// Warps (= query rows) per block of the SIMT kernel.
const SIMT_WARPS: usize = 8;
/// Keys per tile of the SIMT kernel: two lanes score each key.
const SIMT_BLOCK_N: usize = 16;
/// Sums and extrema in one query block's partial statistics record (`kPartialCount`: ten
/// of the rows, five of the channels).
pub(crate) const PARTIAL_COUNT: usize = 15;
/// Tensors whose per-channel maxima follow the sums in a partial record (Q, K, V:
/// `kChannelTensors`).
pub(crate) const CHANNEL_TENSORS: usize = 3;

/// Floats of one query block's whole partial record at head dim `d` (`part_record` of the
/// kernel arguments): the sums, then the largest |x| of each channel of Q, K and V.
pub(crate) fn partial_record(head_dim: usize) -> usize {
    PARTIAL_COUNT + CHANNEL_TENSORS * head_dim
}
/// Floats per query row that the key-mass kernel reads (`kRowRecord`: the row's max, 1/l
/// and ClippedSoftmax's weight sum).
pub(crate) const ROW_RECORD: usize = 3;
/// Threads per block of the statistics kernel.
pub(crate) const STATS_THREADS: u32 = 256;
/// Floats of one row's split partial before its d channels of O (`kSplitScalars`: the max, l,
/// t, key 0's and the sink's terms, the largest score, the sink's logit, Sigmoid's weight sum).
pub(crate) const SPLIT_SCALARS: usize = 8;
/// Warps (= query rows) per block of the split-KV combine.
pub(crate) const COMBINE_WARPS: usize = 4;

/// A compute capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Arch {
    /// Major version (9 for Hopper).
    pub major: u32,
    /// Minor version.
    pub minor: u32,
}

impl Arch {
    /// sm_80 (A100).
    pub const SM80: Arch = Arch { major: 8, minor: 0 };
    /// sm_90 (H100, H200).
    pub const SM90: Arch = Arch { major: 9, minor: 0 };

    /// Multiprocessors of the usual part of this architecture, for plans made without a device
    /// (the emulator, [`WorkspaceLayout::for_problem`](super::WorkspaceLayout::for_problem)):
    /// H100/H200 SXM 132, A100 108, RTX 3090 82, RTX 4090 128; 80 otherwise. A GPU executor
    /// reads the device's own count.
    pub fn typical_multiprocessors(&self) -> u32 {
        match (self.major, self.minor) {
            (9, 0) => 132,
            (8, 0) => 108,
            (8, 6) => 82,
            (8, 9) => 128,
            _ => 80,
        }
    }

    /// The most shared memory one block may have, in bytes (opt-in limit).
    pub fn max_smem_per_block(self) -> usize {
        match (self.major, self.minor) {
            (9, _) => 227 * 1024,
            (8, 0) | (8, 7) => 163 * 1024,
            (8, _) => 99 * 1024,
            (7, 5) => 64 * 1024,
            (7, _) => 96 * 1024,
            _ => 48 * 1024,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sm_{}{}", self.major, self.minor)
    }
}

/// 64-bit FNV-1a: a cache key that stays the same across Rust releases (unlike `DefaultHasher`).
pub(crate) fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The directory of the on-disk module cache: `OUTLIER_ATTN_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/outlier-attn`, else `$HOME/.cache/outlier-attn`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("OUTLIER_ATTN_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(dir).join("outlier-attn"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("outlier-attn"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_and_paths_are_selected_by_head_dim_and_arch() {
        let s = Specialization::select(DType::Bf16, 72, Arch::SM90);
        assert_eq!(s.path, KernelPath::TensorCore(HeadDimTile::D128));
        assert_eq!(
            Specialization::select(DType::F16, 128, Arch { major: 7, minor: 5 }).path,
            KernelPath::Simt
        );
        assert_eq!(
            Specialization::select(DType::F32, 64, Arch::SM90).path,
            KernelPath::Simt
        );
        for spec in Specialization::ALL {
            let d = match spec.path {
                KernelPath::TensorCore(t) => t.channels(),
                KernelPath::Simt => 256,
            };
            assert!(spec.forward_smem_bytes(d) <= 99 * 1024, "{spec}");
        }
    }
}
