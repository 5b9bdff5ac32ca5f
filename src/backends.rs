//! Finding the backends present on this machine.

use crate::contract::Backend;
use crate::reference::Reference;

/// The backends found, best first, and why the others were not.
pub struct Discovery {
    /// Backends ready to run, best first, then the reference; after it only the backends
    /// that are listed when asked for by name ([`ON_REQUEST`]), which are never the best.
    pub backends: Vec<Box<dyn Backend>>,
    /// `(backend, reason)` for each backend compiled in but not usable here, and for each one
    /// left out of this build.
    pub missing: Vec<(String, String)>,
}

impl Discovery {
    /// The best backend present (the reference when no GPU backend is).
    pub fn best(&self) -> &dyn Backend {
        self.backends
            .first()
            .map(|b| b.as_ref())
            .unwrap_or(&Reference)
    }
}

/// Backends that [`discover`] lists only when they are asked for by name: `cuda-emu`, the CUDA
/// kernels on the CPU emulator (feature `cuda-emulator`), which checks kernels and is far too
/// slow to be anyone's choice.
pub const ON_REQUEST: &[&str] = &["cuda-emu"];

/// The environment variable whose comma-separated backend names count as asked for (CI sets
/// it to the backends it requires).
pub const REQUIRE_ENV: &str = "OUTLIER_ATTN_REQUIRE";

/// Looks for every backend this build has, plus those of [`ON_REQUEST`] that
/// `OUTLIER_ATTN_REQUIRE` names. Never panics: a missing driver, device or compiler is a line
/// in [`Discovery::missing`].
pub fn discover() -> Discovery {
    discover_named::<&str>(&[])
}

/// [`discover`], with the backends of [`ON_REQUEST`] that `names` (or `OUTLIER_ATTN_REQUIRE`)
/// names: the command-line tool passes its `--backend` values.
pub fn discover_named<S: AsRef<str>>(names: &[S]) -> Discovery {
    let required = std::env::var(REQUIRE_ENV).unwrap_or_default();
    let asked = |backend: &str| {
        names
            .iter()
            .map(|n| n.as_ref().trim().to_lowercase())
            .chain(required.split(',').map(|n| n.trim().to_lowercase()))
            .any(|n| n == backend)
    };
    let mut backends: Vec<Box<dyn Backend>> = Vec::new();
    let mut missing = Vec::new();
    let mut found = |name: &str, backend: Result<Box<dyn Backend>, String>| match backend {
        Ok(b) => backends.push(b),
        Err(why) => missing.push((name.to_string(), why)),
    };

    #[cfg(feature = "cuda")]
    found(
        "cuda",
        crate::cuda::CudaBackend::new()
            .map(|b| Box::new(b) as Box<dyn Backend>)
            .map_err(reason),
    );
    #[cfg(not(feature = "cuda"))]
    found("cuda", Err("not built (cargo feature `cuda`)".to_string()));

    #[cfg(feature = "wgpu")]
    found(
        "wgsl",
        crate::wgsl::WgslBackend::new()
            .map(|b| Box::new(b) as Box<dyn Backend>)
            .map_err(reason),
    );
    #[cfg(not(feature = "wgpu"))]
    found("wgsl", Err("not built (cargo feature `wgpu`)".to_string()));

    backends.push(Box::new(Reference));

    // After the reference: never the best.
    let emu = ON_REQUEST[0];
    #[cfg(feature = "cuda-emulator")]
    {
        if asked(emu) {
            match crate::cuda_emu::EmuBackend::new() {
                Ok(b) => backends.push(Box::new(b)),
                Err(e) => missing.push((emu.to_string(), reason(e))),
            }
        } else {
            missing.push((
                emu.to_string(),
                format!("listed only when asked for by name (--backend {emu}, {REQUIRE_ENV})"),
            ));
        }
    }
    #[cfg(not(feature = "cuda-emulator"))]
    {
        let _ = asked;
        missing.push((
            emu.to_string(),
            "not built (cargo feature `cuda-emulator`)".to_string(),
        ));
    }
    Discovery { backends, missing }
}

/// Why a backend is missing, without repeating its name.
#[cfg(any(feature = "cuda", feature = "wgpu", feature = "cuda-emulator"))]
fn reason(e: crate::Error) -> String {
    match e {
        crate::Error::Backend { message, .. } => message,
        other => other.to_string(),
    }
}
