//! The command-line tool on the CUDA emulator: `--backend cuda-emu` selects it for `parity`,
//! `run` and `bench`; without being asked for it is listed as missing, never as present.
mod cli_common;
mod common;

use std::process::Command;

use cli_common::{temp, text, tool};

/// Whether g++ is here (else the tests skip, or fail when CI requires `cuda-emu`).
fn emulator_present() -> bool {
    match outlier_attn::cuda_emu::compiler_version() {
        Ok(_) => true,
        Err(e) => {
            common::skip_or_fail("cuda-emu", &e.to_string());
            false
        }
    }
}

#[test]
fn parity_runs_the_cuda_kernels_on_the_emulator() {
    if !emulator_present() {
        return;
    }
    let out = tool(&["parity", "--backend", "cuda-emu", "--filter", "/bf16/"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("cuda-emu"), "{stdout}");
    assert!(stdout.contains("0 failed"), "{stdout}");
}

#[test]
fn run_replays_a_model_layer_on_the_emulator() {
    if !emulator_present() {
        return;
    }
    let out_path = temp("emu-run-out");
    let out = tool(&[
        "run",
        "tests/fixtures/all-MiniLM-L6-v2.safetensors",
        "--prefix",
        "layers.3.",
        "--backend",
        "cuda-emu",
        "--out",
        out_path.to_str().unwrap(),
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    std::fs::remove_file(&out_path).ok();
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("on cuda-emu"), "{stdout}");
}

#[test]
fn bench_times_the_emulator_on_the_host_clock() {
    if !emulator_present() {
        return;
    }
    let json = temp("emu-bench.json");
    let out = tool(&[
        "bench",
        "--backend",
        "cuda-emu",
        "--lens",
        "16",
        "--warmup",
        "0",
        "--reps",
        "1",
        "--json",
        json.to_str().unwrap(),
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    std::fs::remove_file(&json).ok();
    let results = value["results"].as_array().unwrap();
    assert!(!results.is_empty());
    for r in results {
        assert!(
            r["backend"].as_str().unwrap().starts_with("cuda-emu"),
            "{r}"
        );
        assert_eq!(r["clock"], "host", "the emulator has no device timer");
    }
}

#[test]
fn the_emulator_is_listed_only_when_asked_for() {
    let out = Command::new(env!("CARGO_BIN_EXE_outlier-attn"))
        .arg("info")
        .env_remove("OUTLIER_ATTN_REQUIRE")
        .output()
        .expect("the binary runs");
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let present = stdout.split("not available:").next().unwrap_or_default();
    assert!(!present.contains("cuda-emu"), "{stdout}");
    assert!(
        stdout.contains("cuda-emu: listed only when asked for by name"),
        "{stdout}"
    );

    if !emulator_present() {
        return;
    }
    let discovery = outlier_attn::discover_named(&["cuda-emu"]);
    let names: Vec<String> = discovery.backends.iter().map(|b| b.name()).collect();
    let emu = names.iter().position(|n| n.starts_with("cuda-emu"));
    let reference = names.iter().position(|n| n.starts_with("reference"));
    assert!(emu > reference, "after the reference: {names:?}");
    assert!(
        !discovery.best().name().starts_with("cuda-emu"),
        "{names:?}"
    );
}
