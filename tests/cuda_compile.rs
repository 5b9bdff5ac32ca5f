//! Compiles every CUDA specialisation for sm_80 and sm_90 through NVRTC (no GPU needed) and
//! checks what ptxas reports and what the sm_90 SASS contains. CI requires these checks
//! (`OUTLIER_ATTN_REQUIRE` names `nvrtc`); elsewhere they skip when NVRTC or the CUDA binary
//! tools are missing.
#![cfg(feature = "cuda")]
mod common;

use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use outlier_attn::DType;
use outlier_attn::cuda::kernels::{self, Arch, CompiledModule, KernelPath, Specialization};

/// A GPU before sm_80.
const SM75: Arch = Arch { major: 7, minor: 5 };

/// Every specialisation for each target, compiled once per test process (in parallel on the
/// available cores); `None` when NVRTC is missing.
fn compiled() -> Option<&'static Vec<CompiledModule>> {
    static COMPILED: OnceLock<Option<Vec<CompiledModule>>> = OnceLock::new();
    COMPILED
        .get_or_init(|| {
            if !kernels::nvrtc_present() {
                return None;
            }
            // Longest first (the big head-dim tiles), from a shared queue, to balance the threads.
            // sm_80 and sm_90 take every module; sm_75 stands for the GPUs before tensor-core
            // mma.sync bf16, which run the SIMT modules.
            let mut jobs: Vec<(Specialization, Arch)> = [SM75, Arch::SM80, Arch::SM90]
                .into_iter()
                .flat_map(|arch| Specialization::ALL.map(|s| (s, arch)))
                .filter(|(s, arch)| s.runs_on(*arch))
                .collect();
            jobs.sort_by_key(|(s, _)| match s.path {
                KernelPath::TensorCore(t) => std::cmp::Reverse(t.channels()),
                KernelPath::Simt => std::cmp::Reverse(0),
            });
            let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
            let start = Instant::now();
            let next = AtomicUsize::new(0);
            let mut modules: Vec<CompiledModule> = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..threads)
                    .map(|_| {
                        scope.spawn(|| {
                            let mut done = Vec::new();
                            while let Some(&(spec, arch)) =
                                jobs.get(next.fetch_add(1, Ordering::Relaxed))
                            {
                                done.push(
                                    kernels::compile(spec, arch).unwrap_or_else(|e| panic!("{e}")),
                                );
                            }
                            done
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().expect("compile thread"))
                    .collect()
            });
            modules.sort_by_key(|m| (m.arch, m.spec.name()));
            eprintln!(
                "compiled {} modules ({} specialisations for sm_80 and sm_90, the SIMT ones for sm_75) with NVRTC {} in {:.1} s on {threads} threads",
                modules.len(),
                Specialization::ALL.len(),
                kernels::nvrtc_version().map_or("?".to_string(), |v| v.to_string()),
                start.elapsed().as_secs_f64()
            );
            Some(modules)
        })
        .as_ref()
}

#[test]
fn every_specialization_compiles_without_spills_and_fits_shared_memory() {
    let Some(modules) = compiled() else {
        common::skip_or_fail("nvrtc", "libnvrtc not found on LD_LIBRARY_PATH");
        return;
    };
    let mut failures = Vec::new();
    // The table goes to stderr and to a file CI can keep as an artifact.
    let mut table = format!(
        "{:<8} {:<10} {:<16} {:>5} {:>6} {:>7} {:>8} {:>7}\n",
        "arch", "spec", "kernel", "regs", "spill", "smem", "dyn smem", "nvrtc s"
    );
    for m in modules {
        let resources = m.resources();
        assert!(
            resources.len() == 4,
            "{} {}: expected four kernels in ptxas's report:\n{}",
            m.arch,
            m.spec,
            m.log
        );
        for r in resources {
            let forward = r.entry == m.spec.entry();
            let dynamic = match (forward, m.spec.path) {
                (true, KernelPath::TensorCore(t)) => m.spec.forward_smem_bytes(t.channels()),
                (true, KernelPath::Simt) => m.spec.forward_smem_bytes(256),
                _ => 0,
            };
            table.push_str(&format!(
                "{:<8} {:<10} {:<16} {:>5} {:>6} {:>7} {:>8} {:>7.1}\n",
                m.arch.to_string(),
                m.spec.name(),
                r.entry,
                r.registers,
                r.spill_stores + r.spill_loads,
                r.static_smem,
                dynamic,
                m.compile_seconds
            ));
            let tuned = matches!(m.spec.path, KernelPath::TensorCore(t) if t.channels() <= 128);
            if forward && tuned && (r.spill_stores > 0 || r.spill_loads > 0) {
                failures.push(format!(
                    "{} {} {}: {} bytes spilled",
                    m.arch,
                    m.spec,
                    r.entry,
                    r.spill_stores + r.spill_loads
                ));
            }
            let smem = r.static_smem as usize + dynamic;
            if smem > m.arch.max_smem_per_block() {
                failures.push(format!(
                    "{} {} {}: {smem} bytes of shared memory, above {}",
                    m.arch,
                    m.spec,
                    r.entry,
                    m.arch.max_smem_per_block()
                ));
            }
        }
    }
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cuda-resources.txt");
    let _ = std::fs::write(&path, &table);
    eprintln!("{table}(written to {})", path.display());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The SASS of a cubin, by cuobjdump (which calls nvdisasm); `None` if the tools are missing.
fn sass(module: &CompiledModule) -> Option<String> {
    let dir = std::env::temp_dir().join(format!("outlier-attn-sass-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let path = dir.join(format!("{}-{}.cubin", module.spec.name(), module.arch));
    std::fs::write(&path, &module.cubin).ok()?;
    let out = Command::new("cuobjdump")
        .arg("--dump-sass")
        .arg(&path)
        .output()
        .ok()?;
    let _ = std::fs::remove_file(&path);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The SASS of one function of a cuobjdump listing.
fn function_sass<'a>(listing: &'a str, entry: &str) -> &'a str {
    let marker = format!("Function : {entry}");
    let Some(start) = listing.find(&marker) else {
        return "";
    };
    let rest = &listing[start + marker.len()..];
    let end = rest.find("Function : ").unwrap_or(rest.len());
    &rest[..end]
}

#[test]
fn tensor_core_kernels_use_hmma_ldsm_and_ldgsts_on_sm90() {
    let Some(modules) = compiled() else {
        common::skip_or_fail("nvrtc", "libnvrtc not found on LD_LIBRARY_PATH");
        return;
    };
    let mut checked = 0;
    for m in modules
        .iter()
        .filter(|m| m.arch == Arch::SM90 && matches!(m.spec.path, KernelPath::TensorCore(_)))
    {
        let Some(listing) = sass(m) else {
            common::skip_or_fail(
                "nvrtc",
                "cuobjdump/nvdisasm not found on PATH (pip: nvidia-cuda-cuobjdump, nvidia-cuda-nvdisasm)",
            );
            return;
        };
        let body = function_sass(&listing, m.spec.entry());
        let hmma = match m.spec.dtype {
            DType::Bf16 => "HMMA.16816.F32.BF16",
            _ => "HMMA.16816.F32",
        };
        for needle in [hmma, "LDSM", "LDGSTS"] {
            assert!(
                body.contains(needle),
                "{} {}: no {needle} in the SASS of {}",
                m.arch,
                m.spec,
                m.spec.entry()
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 6, "two dtypes x three head-dim tiles");
}

#[test]
fn disk_cache_key_changes_with_nvrtc_version_and_arch() {
    let dir = std::path::Path::new("/cache");
    let spec = Specialization::ALL[0];
    let v12 = kernels::NvrtcVersion {
        major: 12,
        minor: 9,
    };
    let v13 = kernels::NvrtcVersion {
        major: 13,
        minor: 0,
    };
    let a = kernels::cache_path(dir, spec, Arch::SM90, v12);
    assert_eq!(a, kernels::cache_path(dir, spec, Arch::SM90, v12));
    assert_ne!(a, kernels::cache_path(dir, spec, Arch::SM90, v13));
    assert_ne!(a, kernels::cache_path(dir, spec, Arch::SM80, v12));
}

/// Cold compile time of one specialisation (from the sweep above) against a warm start that
/// reads the cubin from the disk cache.
#[test]
fn disk_cache_serves_a_second_start() {
    let Some(modules) = compiled() else {
        common::skip_or_fail("nvrtc", "libnvrtc not found on LD_LIBRARY_PATH");
        return;
    };
    let nvrtc = kernels::nvrtc_version().expect("nvrtc is present");
    let cold = modules
        .iter()
        .find(|m| m.arch == Arch::SM90 && m.spec.name() == "bf16-tc128")
        .expect("bf16-tc128 for sm_90");
    let dir = std::env::temp_dir().join(format!("outlier-attn-cache-{}", std::process::id()));
    kernels::store(
        &kernels::cache_path(&dir, cold.spec, cold.arch, nvrtc),
        &cold.cubin,
    )
    .expect("a fresh temporary directory is writable");
    let start = Instant::now();
    let warm = kernels::compile_cached_in(Some(&dir), cold.spec, cold.arch, nvrtc).expect("cached");
    let warm_seconds = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(warm.cubin, cold.cubin, "the cache returns the stored cubin");
    assert_eq!(warm.compile_seconds, 0.0, "a cache hit does not compile");
    assert!(
        matches!(warm.cache, kernels::CacheOutcome::Hit(_)),
        "{:?}",
        warm.cache
    );
    eprintln!(
        "bf16-tc128 sm_90: cold NVRTC compile {:.1} s, warm start from the disk cache {:.4} s",
        cold.compile_seconds, warm_seconds
    );
}

/// A cache directory that cannot be created (its parent is a file) is reported in the module's
/// `cache`, and the module is still returned; nothing is left behind.
#[test]
fn an_unwritable_disk_cache_is_reported() {
    let Some(nvrtc) = kernels::nvrtc_version() else {
        common::skip_or_fail("nvrtc", "libnvrtc not found on LD_LIBRARY_PATH");
        return;
    };
    let blocker =
        std::env::temp_dir().join(format!("outlier-attn-not-a-dir-{}", std::process::id()));
    std::fs::write(&blocker, b"a file where the cache directory should be").expect("temp file");
    let dir = blocker.join("cache");
    let spec = Specialization::select(DType::F32, 64, SM75);
    let module = kernels::compile_cached_in(Some(&dir), spec, SM75, nvrtc);
    let _ = std::fs::remove_file(&blocker);
    let module = module.expect("compiles without the cache");
    assert!(!module.cubin.is_empty());
    match &module.cache {
        kernels::CacheOutcome::WriteFailed { path, error } => {
            assert!(path.starts_with(&dir), "{path:?}");
            assert!(!error.is_empty());
        }
        other => panic!("expected WriteFailed, got {other:?}"),
    }
    assert!(module.cache.write_error().is_some());
}
