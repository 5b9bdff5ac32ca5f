//! `outlier-attn bench`: the table, the JSON and the plot, at lengths the reference runs fast.

use std::process::Command;

#[cfg(feature = "wgpu")]
mod common;

/// Runs `outlier-attn bench` with `args` plus `--json FILE`, requires success, and returns
/// standard output and the JSON it wrote.
fn bench_json(name: &str, args: &[&str]) -> (String, serde_json::Value) {
    let json =
        std::env::temp_dir().join(format!("outlier-attn-{name}-{}.json", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_outlier-attn"))
        .arg("bench")
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    std::fs::remove_file(&json).ok();
    (stdout, value)
}

#[test]
fn bench_times_every_case_and_writes_json_and_a_plot() {
    let plot = std::env::temp_dir().join(format!("outlier-attn-bench-{}.svg", std::process::id()));
    let plot_arg = plot.to_str().expect("a UTF-8 temporary path");
    let (stdout, value) = bench_json(
        "bench",
        &[
            "--backend",
            "reference",
            "--lens",
            "8,16",
            "--warmup",
            "0",
            "--reps",
            "1",
            "--plot",
            plot_arg,
        ],
    );
    assert!(stdout.contains("TFLOP/s"), "{stdout}");

    let results = value["results"].as_array().unwrap();
    let per_len = outlier_attn::suites::bench_problems(8, outlier_attn::DType::F16).len();
    assert_eq!(results.len(), 2 * per_len);
    for r in results {
        assert!(r["median_ms"].as_f64().unwrap() > 0.0);
        assert!(r["tflops"].as_f64().unwrap() > 0.0);
        // The reference has no device timer.
        assert_eq!(r["clock"], "host");
        // Plain Softmax is the base of the overheads; every other case has one.
        let plain = r["variant"] == "Softmax" && r["stats"] == "Off";
        assert_eq!(r["overhead_vs_softmax"].is_null(), plain, "{r}");
    }
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert_eq!(svg.matches("<polyline").count(), 9, "one line per variant");
    std::fs::remove_file(&plot).ok();
}

#[test]
fn bench_refuses_a_zero_length() {
    let out = Command::new(env!("CARGO_BIN_EXE_outlier-attn"))
        .args(["bench", "--lens", "0"])
        .output()
        .expect("the binary runs");
    assert_eq!(out.status.code(), Some(2));
}

/// On a backend with a device timer (WGSL: timestamp queries), every row is timed by it.
#[cfg(feature = "wgpu")]
#[test]
fn bench_uses_the_device_clock_where_the_backend_has_one() {
    if let Err(e) = outlier_attn::wgsl::WgslBackend::new() {
        return common::skip_or_fail("wgsl", &e.to_string());
    }
    let (_, value) = bench_json(
        "bench-wgsl",
        &[
            "--backend",
            "wgsl",
            "--lens",
            "16",
            "--warmup",
            "0",
            "--reps",
            "2",
        ],
    );
    let results = value["results"].as_array().unwrap();
    assert_eq!(
        results.len(),
        outlier_attn::suites::bench_problems(16, outlier_attn::DType::F16).len()
    );
    for r in results {
        assert_eq!(r["clock"], "device", "{r}");
        assert!(r["median_ms"].as_f64().unwrap() > 0.0, "{r}");
    }
}
