//! The kernel sources, the specialisation space, and their compilation by NVRTC.
//!
//! A [`Specialization`] is what changes the shape of the code: the element type and, for the
//! tensor-core path, the head-dim tile. Everything else (variant, mask, softcap, scale, gate,
//! statistics level) is a kernel argument, so the whole space is nine modules per
//! architecture ([`Specialization::ALL`]). Each module holds the forward kernel and the three
//! statistics kernels.

use std::ffi::{CString, c_char, c_int};
use std::fmt;
use std::path::PathBuf;

use cudarc::nvrtc::{result as nvrtc_result, sys as nvrtc_sys};

use crate::contract::DType;

const COMMON_SRC: &str = include_str!("../../cuda/common.cuh");
const TC_SRC: &str = include_str!("../../cuda/attention_tc.cu");
const SIMT_SRC: &str = include_str!("../../cuda/attention_simt.cu");
const STATS_SRC: &str = include_str!("../../cuda/stats.cu");

/// Entry point of the statistics kernel that scans Q/K/V channels, one chunk of rows per block.
pub const CHANNEL_ENTRY: &str = "channel_partials";
/// Entry point of the statistics kernel that combines the partial records into the record.
pub const FINALIZE_ENTRY: &str = "finalize_stats";
/// Entry point of the second pass that computes `key_mass`.
pub const KEY_MASS_ENTRY: &str = "key_mass";

/// The head-dim tile of the tensor-core kernel: the smallest that holds d. Channels between d
/// and the tile are zero-filled in shared memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HeadDimTile {
    /// d ≤ 64 (tuned for 64): 64-key tiles, 45 KiB of shared memory.
    D64,
    /// 64 < d ≤ 128 (tuned for 128): 64-key tiles, 85 KiB.
    D128,
    /// 128 < d ≤ 256: 32-key tiles, 99 KiB.
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

    /// Keys per K/V tile (`kBlockN` of attention_tc.cu).
    fn block_n(self) -> usize {
        if self.channels() <= 128 { 64 } else { 32 }
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

    /// The forward kernel's entry point.
    pub fn entry(&self) -> &'static str {
        match self.path {
            KernelPath::TensorCore(_) => "attention_tc",
            KernelPath::Simt => "attention_simt",
        }
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
        src.push_str(COMMON_SRC);
        src.push_str(match self.path {
            KernelPath::TensorCore(_) => TC_SRC,
            KernelPath::Simt => SIMT_SRC,
        });
        src.push_str(STATS_SRC);
        src
    }

    /// Dynamic shared memory of the forward kernel at head dim `d`, in bytes; mirrors the
    /// sizes in attention_tc.cu and attention_simt.cu.
    pub fn forward_smem_bytes(&self, head_dim: usize) -> usize {
        match self.path {
            KernelPath::TensorCore(t) => {
                let stride = t.channels() + TC_SMEM_PAD;
                (TC_BLOCK_M * stride + 4 * t.block_n() * stride) * 2
            }
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
            KernelPath::TensorCore(_) => TC_BLOCK_M,
            KernelPath::Simt => SIMT_WARPS,
        }
    }

    /// Threads per block of the forward kernel.
    pub fn threads(&self) -> u32 {
        match self.path {
            KernelPath::TensorCore(_) => TC_THREADS,
            KernelPath::Simt => (SIMT_WARPS * 32) as u32,
        }
    }
}

impl fmt::Display for Specialization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

// Launch geometry, mirrored from the kernels (tc::, simt::, stats:: namespaces).
const TC_BLOCK_M: usize = 64;
const TC_THREADS: u32 = 128;
const TC_SMEM_PAD: usize = 8;
const SIMT_WARPS: usize = 8;
const SIMT_BLOCK_N: usize = 16;
/// Floats in one query block's partial statistics record (`kPartialCount`).
pub(crate) const PARTIAL_COUNT: usize = 10;
/// Threads per block of the statistics kernels.
pub(crate) const STATS_THREADS: u32 = 256;
/// Keys per block of the key-mass kernel.
pub(crate) const KEY_MASS_KEYS: usize = 32;
/// Rows of each tensor per block of the channel scan (`kScanRows` in stats.cu).
pub(crate) const SCAN_ROWS: usize = 128;
/// Floats per tensor in one chunk record of the channel scan (`kChanRecord`), three tensors.
pub(crate) const CHANNEL_RECORD: usize = 3 * 260;

/// Dynamic shared memory of the key-mass kernel at head dim `d`, in bytes.
pub fn key_mass_smem_bytes(head_dim: usize) -> usize {
    (KEY_MASS_KEYS * (head_dim + 1) + 8 * KEY_MASS_KEYS) * 4
}

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

/// The version of the NVRTC library loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NvrtcVersion {
    /// Major.
    pub major: i32,
    /// Minor.
    pub minor: i32,
}

impl fmt::Display for NvrtcVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Why NVRTC could not produce a module.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    /// libnvrtc could not be loaded.
    #[error(
        "libnvrtc not found: cudarc loads libnvrtc.so.12 (or libnvrtc.so) by name; put the directory holding it on LD_LIBRARY_PATH (pip: nvidia-cuda-nvrtc-cu12, lib in nvidia/cuda_nvrtc/lib)"
    )]
    NvrtcMissing,
    /// NVRTC failed; the log and options are kept.
    #[error("nvrtc failed on {spec} for {arch} ({status}) with options {options:?}:\n{log}")]
    Failed {
        /// The specialisation.
        spec: String,
        /// The target.
        arch: String,
        /// NVRTC's status.
        status: String,
        /// The options passed.
        options: Vec<String>,
        /// The program log.
        log: String,
    },
}

/// Whether libnvrtc can be reached: looked for by name with the feature
/// `cuda-dynamic-loading`; `true` without it, as [`driver_present`](super::driver_present)
/// explains.
pub fn nvrtc_present() -> bool {
    #[cfg(feature = "cuda-dynamic-loading")]
    // SAFETY: only dlopens the library by name and reports whether it was found.
    return unsafe { nvrtc_sys::is_culib_present() };
    #[cfg(not(feature = "cuda-dynamic-loading"))]
    true
}

/// The NVRTC version, or `None` when libnvrtc is missing.
pub fn nvrtc_version() -> Option<NvrtcVersion> {
    if !nvrtc_present() {
        return None;
    }
    let (mut major, mut minor): (c_int, c_int) = (0, 0);
    // SAFETY: the library is loaded (checked above); both pointers are to live locals.
    let status = unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) };
    (status == nvrtc_sys::nvrtcResult::NVRTC_SUCCESS).then_some(NvrtcVersion { major, minor })
}

/// One kernel's resources, as ptxas reports them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelResources {
    /// Entry point.
    pub entry: String,
    /// Registers per thread.
    pub registers: u32,
    /// Bytes spilled to local memory (stores).
    pub spill_stores: u32,
    /// Bytes reloaded from spills.
    pub spill_loads: u32,
    /// Static shared memory in bytes.
    pub static_smem: u32,
}

/// A module compiled to a cubin for one architecture.
#[derive(Clone, Debug)]
pub struct CompiledModule {
    /// What was compiled.
    pub spec: Specialization,
    /// For which architecture.
    pub arch: Arch,
    /// The cubin (SASS for `arch`; no PTX, so the driver's PTX version never matters).
    pub cubin: Vec<u8>,
    /// NVRTC's log, with ptxas's resource report.
    pub log: String,
    /// Seconds NVRTC took (0 when read from the disk cache).
    pub compile_seconds: f64,
    /// What the disk cache did ([`CacheOutcome::Disabled`] from [`compile`], which has none).
    pub cache: CacheOutcome,
}

impl CompiledModule {
    /// Per-kernel resources parsed from ptxas's report.
    pub fn resources(&self) -> Vec<KernelResources> {
        parse_ptxas_report(&self.log)
    }
}

/// The NVRTC options for `arch`.
pub fn compile_options(arch: Arch) -> Vec<String> {
    vec![
        format!("--gpu-architecture=sm_{}{}", arch.major, arch.minor),
        "--std=c++17".to_string(),
        "--ptxas-options=-v".to_string(),
    ]
}

/// Frees an NVRTC program on every path.
struct Program(nvrtc_sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: the program was created by nvrtcCreateProgram and is destroyed once; an
        // error here cannot be acted on (Drop never panics), so it is ignored.
        let _ = unsafe { nvrtc_result::destroy_program(self.0) };
    }
}

/// Compiles `spec` for `arch` to a cubin.
///
/// # Errors
/// [`CompileError::NvrtcMissing`] without libnvrtc, [`CompileError::Failed`] with NVRTC's log.
pub fn compile(spec: Specialization, arch: Arch) -> Result<CompiledModule, CompileError> {
    if !nvrtc_present() {
        return Err(CompileError::NvrtcMissing);
    }
    let options = compile_options(arch);
    let failed = |status: String, log: String| CompileError::Failed {
        spec: spec.name(),
        arch: arch.to_string(),
        status,
        options: options.clone(),
        log,
    };
    let src = CString::new(spec.source()).map_err(|e| failed(e.to_string(), String::new()))?;
    let name = CString::new(format!("{}.cu", spec.name())).expect("no NUL in a spec name");
    let program = Program(
        nvrtc_result::create_program(&src, Some(&name))
            .map_err(|e| failed(format!("{e:?}"), String::new()))?,
    );
    let start = std::time::Instant::now();
    // SAFETY: `program` is a live program; the options are valid C strings for the call.
    let status = unsafe { nvrtc_result::compile_program(program.0, &options) };
    let compile_seconds = start.elapsed().as_secs_f64();
    // SAFETY: the program is live; the log is copied out before it is destroyed.
    let log = unsafe { nvrtc_result::get_program_log(program.0) }
        .map(|raw| c_chars_to_string(&raw))
        .unwrap_or_default();
    status.map_err(|e| failed(format!("{e:?}"), log.clone()))?;

    let mut size = 0usize;
    // SAFETY: the program compiled; `size` is a live local.
    let st = unsafe { nvrtc_sys::nvrtcGetCUBINSize(program.0, &mut size) };
    if st != nvrtc_sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(failed(format!("nvrtcGetCUBINSize: {st:?}"), log));
    }
    let mut cubin = vec![0u8; size];
    // SAFETY: `cubin` holds exactly the size NVRTC reported for this program.
    let st = unsafe { nvrtc_sys::nvrtcGetCUBIN(program.0, cubin.as_mut_ptr() as *mut c_char) };
    if st != nvrtc_sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(failed(format!("nvrtcGetCUBIN: {st:?}"), log));
    }
    Ok(CompiledModule {
        spec,
        arch,
        cubin,
        log,
        compile_seconds,
        cache: CacheOutcome::Disabled,
    })
}

fn c_chars_to_string(raw: &[c_char]) -> String {
    let bytes: Vec<u8> = raw
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Reads ptxas's `-v` report: one record per "Compiling entry function" line.
pub fn parse_ptxas_report(log: &str) -> Vec<KernelResources> {
    let mut out: Vec<KernelResources> = Vec::new();
    let number_before = |line: &str, unit: &str| -> Option<u32> {
        let end = line.find(unit)?;
        line[..end].split_whitespace().last()?.parse().ok()
    };
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let entry = rest.split('\'').next().unwrap_or_default().to_string();
            out.push(KernelResources {
                entry,
                registers: 0,
                spill_stores: 0,
                spill_loads: 0,
                static_smem: 0,
            });
        } else if let Some(cur) = out.last_mut() {
            if line.contains("spill stores") {
                cur.spill_stores = number_before(line, "bytes spill stores").unwrap_or(0);
                cur.spill_loads = number_before(line, "bytes spill loads").unwrap_or(0);
            }
            if line.contains("registers") {
                cur.registers = number_before(line, "registers").unwrap_or(0);
                cur.static_smem = number_before(line, "bytes smem").unwrap_or(0);
            }
        }
    }
    out
}

/// 64-bit FNV-1a: a cache key that stays the same across Rust releases (unlike `DefaultHasher`).
fn fnv1a(parts: &[&[u8]]) -> u64 {
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

/// The cache file of `spec` for `arch`: keyed by the source, the options and the NVRTC version.
pub fn cache_path(
    dir: &std::path::Path,
    spec: Specialization,
    arch: Arch,
    nvrtc: NvrtcVersion,
) -> PathBuf {
    let options = compile_options(arch).join(" ");
    let version = nvrtc.to_string();
    let key = fnv1a(&[
        spec.source().as_bytes(),
        options.as_bytes(),
        version.as_bytes(),
    ]);
    dir.join(format!("{}-{arch}-{key:016x}.cubin", spec.name()))
}

/// What the disk cache did for one module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    /// The cubin was read from this file; nothing was compiled.
    Hit(PathBuf),
    /// Compiled, and written to this file for the next process.
    Stored(PathBuf),
    /// Compiled, but the cache file could not be written (a read-only or full disk, a
    /// directory without permission): the next process compiles again.
    WriteFailed {
        /// The file that was to be written.
        path: PathBuf,
        /// The operating system's reason.
        error: String,
    },
    /// Compiled; no cache directory (neither `OUTLIER_ATTN_CACHE_DIR`, `XDG_CACHE_HOME` nor
    /// `HOME` is set).
    Disabled,
}

impl CacheOutcome {
    /// Why the cache could not be written, if it could not.
    pub fn write_error(&self) -> Option<String> {
        match self {
            CacheOutcome::WriteFailed { path, error } => Some(format!(
                "the module cache {} could not be written: {error}",
                path.display()
            )),
            _ => None,
        }
    }
}

/// Compiles `spec` for `arch`, or reads it from the disk cache ([`cache_dir`]) when a previous
/// process did. A cache file that cannot be read is compiled again; one that cannot be written
/// is reported in [`CompiledModule::cache`], never an error: the module itself is good.
///
/// # Errors
/// Those of [`compile`].
pub fn compile_cached(
    spec: Specialization,
    arch: Arch,
    nvrtc: NvrtcVersion,
) -> Result<CompiledModule, CompileError> {
    compile_cached_in(cache_dir().as_deref(), spec, arch, nvrtc)
}

/// [`compile_cached`] with the cache in `dir` (`None`: no disk cache).
///
/// # Errors
/// Those of [`compile`].
pub fn compile_cached_in(
    dir: Option<&std::path::Path>,
    spec: Specialization,
    arch: Arch,
    nvrtc: NvrtcVersion,
) -> Result<CompiledModule, CompileError> {
    let path = dir.map(|dir| cache_path(dir, spec, arch, nvrtc));
    if let Some(p) = &path
        && let Ok(cubin) = std::fs::read(p)
    {
        return Ok(CompiledModule {
            spec,
            arch,
            cubin,
            log: String::new(),
            compile_seconds: 0.0,
            cache: CacheOutcome::Hit(p.clone()),
        });
    }
    let mut module = compile(spec, arch)?;
    module.cache = match path {
        Some(path) => match store(&path, &module.cubin) {
            Ok(()) => CacheOutcome::Stored(path),
            Err(e) => CacheOutcome::WriteFailed {
                path,
                error: e.to_string(),
            },
        },
        None => CacheOutcome::Disabled,
    };
    Ok(module)
}

/// Writes a cache file under a private name, then renames it: a concurrent reader never sees
/// half a file. A failure leaves no file behind.
///
/// # Errors
/// The I/O error of creating the directory, writing or renaming.
pub fn store(path: &std::path::Path, cubin: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let written = std::fs::write(&tmp, cubin).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ptxas_report_is_parsed() {
        let log = "ptxas info    : Compiling entry function 'attention_tc' for 'sm_90'\n\
                   ptxas info    : Function properties for attention_tc\n\
                   ptxas         .     24 bytes stack frame, 36 bytes spill stores, 40 bytes spill loads\n\
                   ptxas info    : Used 168 registers, used 1 barriers, 11264 bytes smem\n";
        let r = parse_ptxas_report(log);
        assert_eq!(
            r,
            vec![KernelResources {
                entry: "attention_tc".into(),
                registers: 168,
                spill_stores: 36,
                spill_loads: 40,
                static_smem: 11264,
            }]
        );
    }

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
