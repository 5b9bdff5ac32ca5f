//! The harness every GPU backend goes through, run on the reference backend itself: its
//! rounding of the f64 result to the dtype must pass the rule on every kind of case, and the
//! baseline must never make a case invalid except through a real f32 underflow.
mod common;

use outlier_attn::reference::Reference;

#[test]
fn reference_backend_passes_the_parity_sweep() {
    common::parity_sweep(&Reference, &common::Limits::default());
}

#[test]
fn reference_backend_is_deterministic_and_reads_views() {
    let limits = common::Limits::default();
    let mut runner = proptest::test_runner::TestRunner::new(common::config());
    runner
        .run(&common::arb_case(&limits), |case| {
            common::assert_deterministic(&Reference, &case);
            common::assert_views_match(&Reference, &case.problem, case.spec.seed);
            Ok(())
        })
        .unwrap();
}

/// The harness's non-finite sweep on the reference itself: its dtype rounding keeps NaN and
/// Inf where the f64 result has them, so every GPU backend is held to a rule it can meet.
#[test]
fn reference_backend_propagates_nonfinite_inputs() {
    common::assert_nonfinite_propagate(&Reference);
}
