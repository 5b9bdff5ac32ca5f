//! The engine's layer, run on the default adapter (lavapipe in CI), against the f64 reference.

use outlier_attn::{parity, reference};

#[test]
fn attention_inside_the_engines_encoder_matches_the_reference() {
    let Some(run) = wgpu_engine::run_layer().expect("the layer runs") else {
        // The crate's rule: a backend CI provides is required there (OUTLIER_ATTN_REQUIRE).
        let required = std::env::var("OUTLIER_ATTN_REQUIRE")
            .is_ok_and(|r| r.split(',').any(|b| b.trim() == "wgsl"));
        assert!(
            !required,
            "backend wgsl is required but no wgpu adapter was found"
        );
        eprintln!("skipped: backend wgsl is not available here: no wgpu adapter");
        return;
    };
    let exact = reference::forward(&run.problem, &run.inputs).expect("reference");
    let baseline = reference::baseline(&run.problem, &run.inputs).expect("baseline");
    let report = parity::compare(&run.problem, &run.outputs, &exact, &baseline);
    eprintln!("wgpu-engine on {}:\n{report}", run.adapter);
    assert!(report.passed(), "{report}");
}
