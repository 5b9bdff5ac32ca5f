//! Finding the backends present on this machine.

use crate::contract::Backend;
use crate::reference::Reference;

/// The backends found, best first, and why the others were not.
pub struct Discovery {
    /// Backends ready to run, best first; the reference is always last.
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

/// Looks for every backend this build has. Never panics: a missing driver, device or
/// compiler is a line in [`Discovery::missing`].
pub fn discover() -> Discovery {
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
    Discovery { backends, missing }
}

/// Why a backend is missing, without repeating its name.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
fn reason(e: crate::Error) -> String {
    match e {
        crate::Error::Backend { message, .. } => message,
        other => other.to_string(),
    }
}
