//! What the criterion benches share: the cases of `outlier-attn bench`
//! ([`suites::bench_problems`]) and one way to time them, so that a criterion figure and a
//! row of the tool's table measure the same thing.
//!
//! A pass is timed by the backend's device timer ([`Backend::device_times`]: WebGPU
//! timestamps, CUDA events) with its inputs resident on the device, and by host wall time
//! around [`Backend::forward`] where the backend has none (the CPU reference). Throughput is
//! counted in FLOPs ([`Problem::flops`]), so criterion's "elem/s" reads as FLOP/s.
//!
//! Environment: `OUTLIER_ATTN_BENCH_LENS` (comma list) replaces the lengths,
//! `OUTLIER_ATTN_BENCH_DTYPE` (`f32`, `f16`, `bf16`; default `f16`, as the tool's) the dtype.
#![allow(dead_code)]

use std::time::Duration;

use criterion::{BenchmarkGroup, Criterion, Throughput, measurement::WallTime};
use outlier_attn::cases::{self, InputSpec};
use outlier_attn::{Backend, DType, Problem, suites};

/// The lengths to time: `OUTLIER_ATTN_BENCH_LENS` when set, else `default`.
pub fn lens(default: &[usize]) -> Vec<usize> {
    std::env::var("OUTLIER_ATTN_BENCH_LENS")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

/// The dtype of the suite: `OUTLIER_ATTN_BENCH_DTYPE` when set, else f16.
pub fn dtype() -> DType {
    match std::env::var("OUTLIER_ATTN_BENCH_DTYPE").as_deref() {
        Ok("f32") => DType::F32,
        Ok("bf16") => DType::Bf16,
        _ => DType::F16,
    }
}

/// Reports a backend that is not there: a panic when `OUTLIER_ATTN_REQUIRE` names it (as in
/// the tests), else a message; either way nothing is measured.
pub fn absent(name: &str, why: &dyn std::fmt::Display) {
    let required =
        std::env::var("OUTLIER_ATTN_REQUIRE").is_ok_and(|v| v.split(',').any(|n| n.trim() == name));
    assert!(
        !required,
        "backend {name} is required (OUTLIER_ATTN_REQUIRE): {why}"
    );
    eprintln!("skipped: backend {name} is not available here: {why}");
}

/// `reps` passes of `problem` after `warmup` untimed ones, timed as `outlier-attn bench`
/// times them ([`suites::time_passes`]).
pub fn pass_times(
    backend: &dyn Backend,
    problem: &Problem,
    warmup: usize,
    reps: usize,
) -> Vec<Duration> {
    let inputs = cases::random_inputs(problem, &InputSpec::default());
    match suites::time_passes(backend, problem, &inputs, warmup, reps) {
        Ok((times, _)) => times,
        Err(e) => panic!("{} on {}: {e}", backend.name(), cases::label(problem)),
    }
}

/// Adds one problem to `group` under `id`. Pipelines or modules are built by an untimed
/// first pass, and only for the problems the command line's filter selects.
pub fn bench_problem(
    group: &mut BenchmarkGroup<'_, WallTime>,
    id: String,
    backend: &dyn Backend,
    problem: &Problem,
) {
    group.throughput(Throughput::Elements(problem.flops() as u64));
    let mut built = false;
    group.bench_function(id, |bencher| {
        if !built {
            pass_times(backend, problem, 1, 0);
            built = true;
        }
        bencher.iter_custom(|iters| pass_times(backend, problem, 0, iters as usize).iter().sum())
    });
}

/// The cases of `outlier-attn bench` at each of `lens`, in a group named `group`, with ids
/// `cases::label` gives them (the tool's `case` column).
pub fn suite(c: &mut Criterion, group: &str, backend: &dyn Backend, lens: &[usize]) {
    eprintln!("{}", backend.describe().join("\n  "));
    let mut group = c.benchmark_group(group);
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    for &len in lens {
        for problem in suites::bench_problems(len, dtype()) {
            bench_problem(&mut group, cases::label(&problem), backend, &problem);
        }
    }
    group.finish();
}

/// Appends one JSON line to the file `OUTLIER_ATTN_BENCH_OUT` names, if any (the results the
/// scripts/h200 comparisons read); a file that cannot be opened is skipped.
pub fn append_json(line: &str) {
    use std::io::Write;
    if let Some(path) = std::env::var_os("OUTLIER_ATTN_BENCH_OUT")
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}

/// Values in [-1, 1) from a fixed LCG: cheap for the millions of elements a GPU benchmark
/// uploads.
pub fn lcg_fill(len: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}
