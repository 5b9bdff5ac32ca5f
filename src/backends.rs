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
    let backends: Vec<Box<dyn Backend>> = vec![Box::new(Reference)];
    let mut missing = Vec::new();
    if !cfg!(feature = "cuda") {
        missing.push((
            "cuda".to_string(),
            "not built (cargo feature `cuda`)".to_string(),
        ));
    }
    if !cfg!(feature = "wgpu") {
        missing.push((
            "wgsl".to_string(),
            "not built (cargo feature `wgpu`)".to_string(),
        ));
    }
    Discovery { backends, missing }
}
