//! NVRTC compilation of the specialisations ([`Specialization`]) to cubins, cached on disk.
//! Usable without a GPU: CI compiles every specialisation.

use std::ffi::{CString, c_char, c_int};
use std::fmt;
use std::path::PathBuf;

use cudarc::nvrtc::{result as nvrtc_result, sys as nvrtc_sys};

use super::spec::fnv1a;
pub use super::spec::{
    Arch, FINALIZE_ENTRY, HeadDimTile, KEY_MASS_ENTRY, KernelPath, Specialization,
    TENSOR_CORE_MIN_ARCH, cache_dir,
};

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
}
