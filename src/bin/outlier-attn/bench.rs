//! `outlier-attn bench`: forward time, TFLOP/s and bandwidth of every backend present, and the
//! overhead of each variant and statistics level over plain Softmax.
//!
//! Timing is device-side where the backend has a device timer ([`Backend::device_times`]),
//! and otherwise host wall-clock time around [`Backend::forward`], uploads and read-back
//! included; every row says which.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use outlier_attn::cases::{self, InputSpec};
use outlier_attn::suites::{self, BENCH_LENS, Clock};
use outlier_attn::{Backend, DType, Problem, Stat, StatsLevel};
use serde_json::json;

use crate::common::{self, CliError, CliResult, num};
use crate::svg::{self, Series};

/// Element types, as flags name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DTypeArg {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16.
    Bf16,
}

impl From<DTypeArg> for DType {
    fn from(d: DTypeArg) -> DType {
        match d {
            DTypeArg::F32 => DType::F32,
            DTypeArg::F16 => DType::F16,
            DTypeArg::Bf16 => DType::Bf16,
        }
    }
}

/// Flags of `outlier-attn bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Backends to time (first word of the name); all present when not given. Repeatable.
    #[arg(long)]
    pub backend: Vec<String>,
    /// Sequence lengths Nq = Nk, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = BENCH_LENS)]
    pub lens: Vec<usize>,
    /// Element type of Q, K, V, O.
    #[arg(long, value_enum, default_value = "f16")]
    pub dtype: DTypeArg,
    /// Untimed runs before timing.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Timed runs; the median is reported.
    #[arg(long, default_value_t = 10)]
    pub reps: usize,
    /// Stop lengthening a backend's sequences once one forward pass takes longer than this
    /// (milliseconds), so that the CPU reference finishes.
    #[arg(long, default_value_t = 2000)]
    pub budget_ms: u64,
    /// Write every measurement as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw TFLOP/s against length per backend and variant as SVG.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

struct Measurement {
    backend: String,
    clock: Clock,
    label: String,
    variant: &'static str,
    stats: StatsLevel,
    len: usize,
    median: Duration,
    tflops: f64,
    gbps: f64,
    /// Time over plain Softmax at the same length, minus one.
    overhead: Option<f64>,
}

/// Bytes a forward pass must move at least: Q, K, V read, O written, LSE and statistics written.
fn bytes_moved(problem: &Problem) -> f64 {
    let s = &problem.shape;
    let e = problem.dtype.size_bytes();
    let q = s.batch * s.q_len * s.q_heads * s.head_dim * e;
    let kv = 2 * s.batch * s.kv_len * s.kv_heads * s.head_dim * e;
    let f32s = s.lse_len()
        + if problem.stats.heads() {
            s.heads_total() * Stat::COUNT
        } else {
            0
        }
        + if problem.stats.keys() {
            s.key_mass_len()
        } else {
            0
        };
    (2 * q + kv + 4 * f32s) as f64
}

fn time(
    backend: &dyn Backend,
    problem: &Problem,
    args: &BenchArgs,
) -> CliResult<(Duration, Clock)> {
    let inputs = cases::random_inputs(problem, &InputSpec::default());
    let fail = |e: outlier_attn::Error| {
        CliError::Failed(format!(
            "{} on {}: {e}",
            backend.name(),
            cases::label(problem)
        ))
    };
    let (mut times, clock) =
        suites::time_passes(backend, problem, &inputs, args.warmup, args.reps.max(1))
            .map_err(fail)?;
    times.sort();
    Ok((times[times.len() / 2], clock))
}

/// Times every benchmark problem on every selected backend.
pub fn bench(args: &BenchArgs) -> CliResult {
    let discovery = outlier_attn::discover_named(&args.backend);
    let backends = common::select(&discovery, &args.backend)?;
    if args.lens.contains(&0) {
        return Err(CliError::Input(
            "--lens: a length must be at least 1".to_string(),
        ));
    }
    let mut lens = args.lens.clone();
    lens.sort_unstable();
    lens.dedup();
    let dtype: DType = args.dtype.into();
    let per_len = suites::bench_problems(1, dtype).len();
    let bar = common::progress(backends.len() * lens.len() * per_len, "bench");
    let mut rows: Vec<Measurement> = Vec::new();
    for &backend in &backends {
        for &len in &lens {
            let mut softmax: Option<Duration> = None;
            let mut slowest = Duration::ZERO;
            for problem in suites::bench_problems(len, dtype) {
                bar.set_message(format!(
                    "{} {}",
                    common::short_name(backend),
                    cases::label(&problem)
                ));
                let (median, clock) = time(backend, &problem, args)?;
                slowest = slowest.max(median);
                let plain = problem.variant == outlier_attn::Variant::Softmax
                    && problem.stats == StatsLevel::Off;
                if plain {
                    softmax = Some(median);
                }
                let secs = median.as_secs_f64();
                rows.push(Measurement {
                    backend: backend.name(),
                    clock,
                    label: cases::label(&problem),
                    variant: problem.variant.name(),
                    stats: problem.stats,
                    len,
                    median,
                    tflops: problem.flops() / secs / 1e12,
                    gbps: bytes_moved(&problem) / secs / 1e9,
                    overhead: softmax
                        .filter(|_| !plain)
                        .map(|t| secs / t.as_secs_f64() - 1.0),
                });
                bar.inc(1);
            }
            if slowest > Duration::from_millis(args.budget_ms) {
                bar.println(format!(
                    "{}: stopping at length {len}: a forward pass took {} ms (--budget-ms {})",
                    backend.name(),
                    slowest.as_millis(),
                    args.budget_ms
                ));
                bar.inc((per_len * lens.iter().filter(|&&l| l > len).count()) as u64);
                break;
            }
        }
    }
    bar.finish_and_clear();

    println!(
        "median of {} runs after {} warm-up; clock: device (the backend's timer around the kernels) \
         or host (wall time of Backend::forward, uploads and read-back included)",
        args.reps.max(1),
        args.warmup
    );
    let label_w = rows.iter().map(|r| r.label.len()).max().unwrap_or(4);
    let backend_w = rows.iter().map(|r| r.backend.len()).max().unwrap_or(7);
    println!(
        "{:<backend_w$}  {:<label_w$}  {:<6} {:>10} {:>10} {:>9}  vs Softmax",
        "backend", "case", "clock", "ms", "TFLOP/s", "GB/s"
    );
    for r in &rows {
        println!(
            "{:<backend_w$}  {:<label_w$}  {:<6} {:>10.3} {:>10} {:>9}  {}",
            r.backend,
            r.label,
            r.clock.name(),
            r.median.as_secs_f64() * 1e3,
            num(r.tflops),
            num(r.gbps),
            r.overhead
                .map_or_else(String::new, |o| format!("{:+.1}%", o * 100.0))
        );
    }

    if let Some(path) = &args.json {
        let value = json!({
            "timing": "median; clock device: the backend's timer around the kernels; clock host: wall time of Backend::forward, uploads and read-back included",
            "warmup": args.warmup,
            "reps": args.reps.max(1),
            "dtype": dtype.name(),
            "results": rows.iter().map(|r| json!({
                "backend": r.backend,
                "clock": r.clock.name(),
                "case": r.label,
                "variant": r.variant,
                "stats": r.stats.name(),
                "len": r.len,
                "median_ms": r.median.as_secs_f64() * 1e3,
                "tflops": r.tflops,
                "gbps": r.gbps,
                "overhead_vs_softmax": r.overhead,
            })).collect::<Vec<_>>(),
        });
        common::write_json(path, &value)?;
    }
    if let Some(path) = &args.plot {
        let mut series: Vec<Series> = Vec::new();
        for r in rows.iter().filter(|r| r.stats == StatsLevel::Off) {
            let name = format!("{} {}", common::short_name_of(&r.backend), r.variant);
            match series.iter_mut().find(|s| s.name == name) {
                Some(s) => s.points.push((r.len as f64, r.tflops)),
                None => series.push(Series {
                    name,
                    points: vec![(r.len as f64, r.tflops)],
                }),
            }
        }
        let title = format!(
            "forward TFLOP/s, {dtype}, Hq={} Hkv={} d={}",
            suites::BENCH_Q_HEADS,
            suites::BENCH_KV_HEADS,
            suites::BENCH_HEAD_DIM
        );
        common::write_text(
            path,
            &svg::line_plot(&title, "sequence length (Nq = Nk)", "TFLOP/s", &series),
        )?;
    }
    Ok(())
}
