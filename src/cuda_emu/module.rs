//! Building CUDA sources for the host with the C++ compiler against the emulator (cuda/emu),
//! caching the shared objects on disk, and launching their kernels.

use std::collections::HashMap;
use std::ffi::{CString, c_char, c_void};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

use crate::cuda::spec::{cache_dir, fnv1a};

const RUNTIME_H: &str = include_str!("../../cuda/emu/runtime.h");
const PTX_H: &str = include_str!("../../cuda/emu/ptx.h");
const MODULE_H: &str = include_str!("../../cuda/emu/module.h");

/// The compiler's flags: C++20, optimised (the kernels run millions of emulated
/// instructions), position-independent shared objects. Type punning of shared memory goes
/// through `memcpy`, but `-fno-strict-aliasing` keeps the kernels' own casts defined.
pub const COMPILER_FLAGS: &[&str] = &[
    "-std=c++20",
    "-O2",
    "-fPIC",
    "-shared",
    "-fno-strict-aliasing",
    "-Wall",
    "-Wno-unknown-pragmas",
    "-Wno-unused-variable",
    "-Wno-unused-function",
];

/// Why the emulator could not build or run a module.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EmuError {
    /// The C++ compiler could not be run.
    #[error(
        "no C++ compiler: `{compiler}` could not be run ({reason}); install g++ (apt-get install g++) or name one in OUTLIER_ATTN_CXX"
    )]
    CompilerMissing {
        /// The command tried.
        compiler: String,
        /// Why it failed.
        reason: String,
    },
    /// The compiler rejected the module; its output is kept.
    #[error("{compiler} failed on module {module} ({source_path}):\n{log}")]
    CompileFailed {
        /// The module.
        module: String,
        /// The compiler.
        compiler: String,
        /// The generated source, left on disk.
        source_path: String,
        /// The compiler's output.
        log: String,
    },
    /// The shared object could not be loaded or lacks the launch entry.
    #[error("cannot load {path}: {reason}")]
    Load {
        /// The shared object.
        path: String,
        /// The loader's message.
        reason: String,
    },
    /// A kernel did what a GPU would fault on or silently get wrong; the message names the
    /// kernel, the block and the thread.
    #[error("emulated kernel fault: {0}")]
    Fault(String),
    /// A launch the module refused: an unknown entry or an argument block of the wrong size.
    #[error("launch refused: {0}")]
    Refused(String),
}

/// The C++ compiler: `OUTLIER_ATTN_CXX`, else `CXX`, else `g++`.
pub fn compiler() -> String {
    ["OUTLIER_ATTN_CXX", "CXX"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "g++".to_string())
}

/// The first line of `compiler --version` (part of every cache key).
///
/// # Errors
/// [`EmuError::CompilerMissing`] when the compiler cannot be run.
pub fn compiler_version() -> Result<String, EmuError> {
    static VERSION: OnceLock<Result<String, EmuError>> = OnceLock::new();
    VERSION
        .get_or_init(|| {
            let cxx = compiler();
            let missing = |reason: String| EmuError::CompilerMissing {
                compiler: cxx.clone(),
                reason,
            };
            let out = Command::new(&cxx)
                .arg("--version")
                .output()
                .map_err(|e| missing(e.to_string()))?;
            if !out.status.success() {
                return Err(missing(format!("--version exited with {}", out.status)));
            }
            Ok(String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .unwrap_or_default()
                .to_string())
        })
        .clone()
}

/// The emulator's headers, inlined in front of a module's source (each part with a `#line`
/// directive, so that messages and source locations name the real files).
fn emulator_prelude() -> String {
    let strip = |text: &str| -> String {
        text.lines()
            .map(|l| {
                if l.starts_with("#pragma once") || l.starts_with("#include \"") {
                    ""
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut s = String::from("#define OUTLIER_ATTN_EMU 1\n");
    for (name, text) in [
        ("runtime.h", RUNTIME_H),
        ("ptx.h", PTX_H),
        ("module.h", MODULE_H),
    ] {
        s.push_str(&format!("#line 1 \"cuda/emu/{name}\"\n"));
        s.push_str(&strip(text));
        s.push('\n');
    }
    s
}

/// The whole translation unit of a module: the emulator, the kernel source, the entry table.
fn translation_unit(source: &str, entries: &[&str]) -> String {
    let table: String = entries
        .iter()
        .map(|e| format!("EMU_KERNEL({e}) "))
        .collect();
    format!(
        "{}{source}\nOUTLIER_ATTN_EMU_MODULE({table})\n",
        emulator_prelude()
    )
}

/// `extern "C" int outlier_attn_emu_launch(const LaunchDesc*)` of cuda/emu/module.h.
type LaunchFn = unsafe extern "C" fn(*const LaunchDesc) -> i32;

/// `emu::BufferDesc` of cuda/emu/runtime.h.
#[repr(C)]
struct BufferDesc {
    name: *const c_char,
    addr: u64,
    bytes: u64,
    writable: i32,
    _pad: i32,
}

/// `emu::LaunchDesc` of cuda/emu/runtime.h.
#[repr(C)]
struct LaunchDesc {
    entry: *const c_char,
    grid: [u32; 3],
    block: [u32; 3],
    dynamic_smem: u64,
    args: *const c_void,
    args_len: u64,
    buffers: *const BufferDesc,
    n_buffers: u64,
    error: *mut c_char,
    error_len: u64,
}

/// One buffer a launch may touch: the emulator faults on any global access outside the
/// buffers it is given, and on a write to an input.
pub struct EmuBuffer<'a> {
    name: CString,
    addr: u64,
    bytes: u64,
    writable: bool,
    _borrow: PhantomData<&'a mut [u8]>,
}

impl<'a> EmuBuffer<'a> {
    /// A buffer the kernels only read.
    pub fn input<T: bytemuck::Pod>(name: &str, data: &'a [T]) -> EmuBuffer<'a> {
        EmuBuffer {
            name: CString::new(name).unwrap_or_default(),
            addr: data.as_ptr() as u64,
            bytes: std::mem::size_of_val(data) as u64,
            writable: false,
            _borrow: PhantomData,
        }
    }

    /// A buffer the kernels may write.
    pub fn output<T: bytemuck::Pod>(name: &str, data: &'a mut [T]) -> EmuBuffer<'a> {
        EmuBuffer {
            name: CString::new(name).unwrap_or_default(),
            addr: data.as_mut_ptr() as u64,
            bytes: std::mem::size_of_val(data) as u64,
            writable: true,
            _borrow: PhantomData,
        }
    }

    /// The address to put in a kernel's argument block.
    pub fn addr(&self) -> u64 {
        self.addr
    }
}

/// A module built for the host: its kernels run on the emulator.
pub struct EmuModule {
    name: String,
    path: PathBuf,
    launch: LaunchFn,
    _library: libloading::Library,
}

/// Modules built or loaded by this process, by cache key; each is built once even when
/// several threads ask for it at the same time.
type ModuleCell = Arc<OnceLock<Result<Arc<EmuModule>, EmuError>>>;
static MODULES: OnceLock<Mutex<HashMap<u64, ModuleCell>>> = OnceLock::new();

impl EmuModule {
    /// Builds `source` (kernels in the dialect of cuda/*.cu) with the kernels named in
    /// `entries` as launchable, or loads the shared object an earlier build left in the cache
    /// ([`cache_dir`]`/emu`, keyed by the emulator, the source, the entries, the flags and the
    /// compiler's version).
    ///
    /// # Errors
    /// [`EmuError::CompilerMissing`], [`EmuError::CompileFailed`] with the compiler's output,
    /// [`EmuError::Load`].
    pub fn build(name: &str, source: &str, entries: &[&str]) -> Result<Arc<EmuModule>, EmuError> {
        let version = compiler_version()?;
        let unit = translation_unit(source, entries);
        let flags = COMPILER_FLAGS.join(" ");
        let key = fnv1a(&[unit.as_bytes(), flags.as_bytes(), version.as_bytes()]);
        let cell = {
            let map = MODULES.get_or_init(|| Mutex::new(HashMap::new()));
            let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(key).or_default().clone()
        };
        cell.get_or_init(|| build_uncached(name, &unit, key).map(Arc::new))
            .clone()
    }

    /// The module's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The shared object.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs kernel `entry` over `grid` blocks of `block` threads with `dynamic_smem` bytes of
    /// dynamic shared memory; `args` is its argument struct, byte for byte as a GPU gets it.
    /// Returns when every block has run.
    ///
    /// # Errors
    /// [`EmuError::Fault`] naming the kernel, block and thread of the first fault (an access
    /// outside `buffers` or outside shared memory, a cp.async destination read early, a
    /// barrier or warp collective some thread never reaches); [`EmuError::Refused`].
    ///
    /// # Safety
    /// The kernels must reach memory only through the emulator's checked pointers (`gmem_ptr`,
    /// `smem_ptr`), as those of cuda/*.cu do, and index their local arrays in range: those
    /// accesses are checked, arbitrary C++ in a kernel is not.
    pub unsafe fn launch(
        &self,
        entry: &str,
        grid: [u32; 3],
        block: [u32; 3],
        dynamic_smem: usize,
        args: &[u8],
        buffers: &[EmuBuffer<'_>],
    ) -> Result<(), EmuError> {
        let entry_c = CString::new(entry).map_err(|e| EmuError::Refused(e.to_string()))?;
        let descs: Vec<BufferDesc> = buffers
            .iter()
            .map(|b| BufferDesc {
                name: b.name.as_ptr(),
                addr: b.addr,
                bytes: b.bytes,
                writable: b.writable as i32,
                _pad: 0,
            })
            .collect();
        let mut error = vec![0u8; 4096];
        let desc = LaunchDesc {
            entry: entry_c.as_ptr(),
            grid,
            block,
            dynamic_smem: dynamic_smem as u64,
            args: args.as_ptr() as *const c_void,
            args_len: args.len() as u64,
            buffers: descs.as_ptr(),
            n_buffers: descs.len() as u64,
            error: error.as_mut_ptr() as *mut c_char,
            error_len: error.len() as u64,
        };
        // SAFETY: `desc` and everything it points to (names, buffer table, argument bytes,
        // error buffer) live until the call returns; the module checks every global access
        // against the buffer table, whose entries are borrowed slices (the caller's contract
        // covers the rest), and catches every C++ exception before returning.
        let status = unsafe { (self.launch)(&desc) };
        let message = || {
            let end = error.iter().position(|&b| b == 0).unwrap_or(error.len());
            String::from_utf8_lossy(&error[..end]).into_owned()
        };
        match status {
            0 => Ok(()),
            1 => Err(EmuError::Fault(message())),
            _ => Err(EmuError::Refused(message())),
        }
    }
}

/// Compiles the translation unit into the cache (or a temporary directory) and loads it.
fn build_uncached(name: &str, unit: &str, key: u64) -> Result<EmuModule, EmuError> {
    let dir = cache_dir()
        .map(|d| d.join("emu"))
        .unwrap_or_else(|| std::env::temp_dir().join("outlier-attn-emu"));
    let stem = format!("{name}-{key:016x}");
    let so = dir.join(format!("{stem}.so"));
    if !so.exists() {
        let load_error = |e: std::io::Error| EmuError::Load {
            path: dir.display().to_string(),
            reason: e.to_string(),
        };
        std::fs::create_dir_all(&dir).map_err(load_error)?;
        // Private names: another process may be building the same module at the same time.
        let pid = std::process::id();
        let cpp = dir.join(format!("{stem}.{pid}.cpp"));
        std::fs::write(&cpp, unit).map_err(load_error)?;
        let tmp = dir.join(format!("{stem}.so.tmp{pid}"));
        let cxx = compiler();
        let out = Command::new(&cxx)
            .args(COMPILER_FLAGS)
            .arg("-o")
            .arg(&tmp)
            .arg(&cpp)
            .output()
            .map_err(|e| EmuError::CompilerMissing {
                compiler: cxx.clone(),
                reason: e.to_string(),
            })?;
        if !out.status.success() {
            let _ = std::fs::remove_file(&tmp);
            return Err(EmuError::CompileFailed {
                module: name.to_string(),
                compiler: cxx,
                source_path: cpp.display().to_string(),
                log: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        // A concurrent process may have renamed its own copy first: either is the same build.
        std::fs::rename(&tmp, &so).map_err(load_error)?;
        let _ = std::fs::remove_file(&cpp);
    }
    let load_error = |reason: String| EmuError::Load {
        path: so.display().to_string(),
        reason,
    };
    // SAFETY: the shared object was built from the emulator and kernel sources above; its
    // initialisers only set up thread-local state.
    let library =
        unsafe { libloading::Library::new(&so) }.map_err(|e| load_error(e.to_string()))?;
    // SAFETY: `outlier_attn_emu_launch` is defined by OUTLIER_ATTN_EMU_MODULE with exactly
    // this signature; the function pointer stays valid while `library` is held (it is stored
    // next to it and never outlives it).
    let launch: LaunchFn = unsafe {
        *library
            .get::<LaunchFn>(b"outlier_attn_emu_launch\0")
            .map_err(|e| load_error(e.to_string()))?
    };
    Ok(EmuModule {
        name: name.to_string(),
        path: so,
        launch,
        _library: library,
    })
}
