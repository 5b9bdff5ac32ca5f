//! Every backend present on engine-shaped calls (DESIGN.md section 6): each case passes the
//! parity rule or is refused with `Error::Unsupported` naming a feature it lacks (a window, a
//! packed or paged layout, per-sequence key lengths), never a wrong answer. The reference runs
//! every case.
mod common;

use outlier_attn::reference::Reference;

#[test]
fn reference_runs_every_engine_shaped_case() {
    let ran = common::engine_parity_sweep(&Reference, &common::Limits::default());
    assert_eq!(ran as u32, common::config().cases);
}

/// A quarter of the cases on each backend, none refused: the reference runs them all above,
/// and each backend's own tests sweep its other paths (`tests/wgsl_parity.rs`,
/// `tests/cuda_emu_parity.rs`); on lavapipe every case the WGSL backend runs builds its
/// pipelines cold in CI.
#[test]
fn every_backend_passes_or_refuses_engine_shaped_calls_by_name() {
    let found = outlier_attn::discover();
    let cases = common::config().cases / 4;
    for backend in &found.backends {
        let ran =
            common::engine_parity_sweep_cases(backend.as_ref(), &common::Limits::default(), cases);
        eprintln!(
            "{}: {ran} of {cases} engine-shaped cases ran, the rest were refused by name",
            backend.name(),
        );
        // Every backend implements every layout, window and index tensor the sweep draws.
        assert_eq!(
            ran as u32,
            cases,
            "{}: engine-shaped cases refused",
            backend.name()
        );
    }
    for (name, why) in &found.missing {
        common::skip_or_fail(name, why);
    }
}
