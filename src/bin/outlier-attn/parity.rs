//! `outlier-attn parity`: every backend present against the reference on a sweep of problems.

use std::path::PathBuf;

use clap::Args;
use outlier_attn::parity::{self, Check, ParityReport, Verdict};
use outlier_attn::suites::{self, Coverage, ParityCase};
use outlier_attn::{Backend, Error, HostInputs, Problem, cases, reference};
use serde_json::json;

use crate::common::{self, CliError, CliResult};

/// Flags of `outlier-attn parity`.
#[derive(Args, Debug)]
pub struct ParityArgs {
    /// Backends to check (first word of the name: `reference`, `wgsl`, `cuda`); all present
    /// when not given. Repeatable.
    #[arg(long)]
    pub backend: Vec<String>,
    /// Run the full product of variants, dtypes, masks, shapes and statistics levels instead
    /// of the quick rotation.
    #[arg(long)]
    pub full: bool,
    /// Only cases whose label contains this text (`KvSink/bf16`, `/causal/`).
    #[arg(long)]
    pub filter: Option<String>,
    /// Also run every case with Q/K/V as views into larger NaN-padded buffers.
    #[arg(long)]
    pub views: bool,
    /// Added to every case's input seed: another draw of the same problems.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write every case and check as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Add this multiple of max(1, max|O|) to the first element of each backend's O before
    /// judging it: shows that the sweep and its exit status catch a wrong kernel.
    #[arg(long, hide = true)]
    pub inject_error: Option<f64>,
}

/// What happened to one (case, backend).
enum Outcome {
    Judged(ParityReport),
    /// The backend cannot run this valid problem (a dtype its device lacks).
    Unsupported(String),
    /// The backend or the reference failed.
    Error(String),
}

struct Row {
    label: String,
    backend: String,
    seed: u64,
    massive: bool,
    views: bool,
    outcome: Outcome,
}

impl Row {
    fn verdict(&self) -> &'static str {
        match &self.outcome {
            Outcome::Judged(r) => match r.verdict() {
                Verdict::Pass => "pass",
                Verdict::Fail => "FAIL",
                Verdict::Invalid => "invalid",
            },
            Outcome::Unsupported(_) => "unsupported",
            Outcome::Error(_) => "ERROR",
        }
    }

    fn failed(&self) -> bool {
        matches!(self.verdict(), "FAIL" | "ERROR")
    }
}

/// The check that came closest to (or furthest past) its bound.
fn worst(report: &ParityReport) -> Option<&Check> {
    let ratio = |c: &Check| {
        if c.verdict != Verdict::Pass {
            f64::INFINITY
        } else if c.bound > 0.0 {
            c.max_err / c.bound
        } else {
            0.0
        }
    };
    report
        .checks
        .iter()
        .max_by(|a, b| ratio(a).total_cmp(&ratio(b)))
}

fn judge(
    backend: &dyn Backend,
    problem: &Problem,
    inputs: &HostInputs,
    inject: Option<f64>,
) -> Outcome {
    let exact = match reference::forward(problem, inputs) {
        Ok(r) => r,
        Err(e) => return Outcome::Error(format!("reference: {e}")),
    };
    let baseline = match reference::baseline(problem, inputs) {
        Ok(b) => b,
        Err(e) => return Outcome::Error(format!("baseline: {e}")),
    };
    let mut actual = match backend.forward(problem, inputs) {
        Ok(a) => a,
        Err(Error::Unsupported { reason, .. }) => return Outcome::Unsupported(reason),
        Err(e) => return Outcome::Error(e.to_string()),
    };
    if let Some(rel) = inject {
        let values = actual.o.to_f64_vec();
        let scale = values.iter().fold(1.0f64, |m, x| m.max(x.abs()));
        actual.o.set(0, values[0] + rel * scale);
    }
    Outcome::Judged(parity::compare(problem, &actual, &exact, &baseline))
}

fn check_json(c: &Check) -> serde_json::Value {
    json!({
        "output": c.output,
        "max_err": c.max_err,
        "baseline_err": c.baseline_err,
        "bound": c.bound,
        "nmse": c.nmse,
        "verdict": format!("{:?}", c.verdict).to_lowercase(),
        "detail": c.detail,
    })
}

/// Runs the sweep, prints the table, writes the JSON; fails when any case failed.
pub fn parity(args: &ParityArgs) -> CliResult {
    let discovery = outlier_attn::discover_named(&args.backend);
    let backends = common::select(&discovery, &args.backend)?;
    let coverage = if args.full {
        Coverage::Full
    } else {
        Coverage::Quick
    };
    let mut cases: Vec<ParityCase> = suites::parity_cases(coverage)
        .into_iter()
        .filter(|c| {
            args.filter
                .as_ref()
                .is_none_or(|f| c.label().contains(f.as_str()))
        })
        .collect();
    if cases.is_empty() {
        return Err(CliError::Input(format!(
            "no case matches --filter {:?}",
            args.filter.as_deref().unwrap_or_default()
        )));
    }
    let layouts: &[bool] = if args.views { &[false, true] } else { &[false] };
    let total = cases.len() * backends.len() * layouts.len();
    let bar = common::progress(total, "parity");
    let mut rows = Vec::with_capacity(total);
    for case in &mut cases {
        case.spec.seed = case.spec.seed.wrapping_add(args.seed);
    }
    for case in &cases {
        let label = case.label();
        let dense = case.inputs();
        for &views in layouts {
            let inputs = if views {
                cases::as_views(&case.problem, &dense, case.spec.seed ^ 0x71E5)
            } else {
                dense.clone()
            };
            for &backend in &backends {
                bar.set_message(label.clone());
                rows.push(Row {
                    label: label.clone(),
                    backend: backend.name(),
                    seed: case.spec.seed,
                    massive: case.spec.massive,
                    views,
                    outcome: judge(backend, &case.problem, &inputs, args.inject_error),
                });
                bar.inc(1);
            }
        }
    }
    bar.finish_and_clear();

    print_table(&rows);
    let count = |v: &str| rows.iter().filter(|r| r.verdict() == v).count();
    let failed = rows.iter().filter(|r| r.failed()).count();
    println!(
        "\n{} checks: {} passed, {failed} failed, {} invalid, {} unsupported",
        rows.len(),
        count("pass"),
        count("invalid"),
        count("unsupported")
    );

    if let Some(path) = &args.json {
        let cases: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                let (checks, message) = match &r.outcome {
                    Outcome::Judged(rep) => (rep.checks.iter().map(check_json).collect(), None),
                    Outcome::Unsupported(m) | Outcome::Error(m) => (Vec::new(), Some(m.clone())),
                };
                json!({
                    "label": r.label,
                    "backend": r.backend,
                    "seed": r.seed,
                    "massive": r.massive,
                    "views": r.views,
                    "verdict": r.verdict(),
                    "message": message,
                    "checks": checks,
                })
            })
            .collect();
        let value = json!({
            "coverage": if args.full { "full" } else { "quick" },
            "floor": {"f32": parity::floor(outlier_attn::DType::F32),
                      "f16": parity::floor(outlier_attn::DType::F16),
                      "bf16": parity::floor(outlier_attn::DType::Bf16)},
            "summary": {"total": rows.len(), "passed": count("pass"), "failed": failed,
                        "invalid": count("invalid"), "unsupported": count("unsupported")},
            "cases": cases,
        });
        common::write_json(path, &value)?;
    }

    if failed > 0 {
        return Err(CliError::Failed(format!(
            "{failed} of {} checks failed the parity rule",
            rows.len()
        )));
    }
    Ok(())
}

fn print_table(rows: &[Row]) {
    let label_w = rows.iter().map(|r| r.label.len()).max().unwrap_or(4).max(4);
    let backend_w = rows
        .iter()
        .map(|r| r.backend.len())
        .max()
        .unwrap_or(7)
        .max(7);
    println!(
        "{:<label_w$}  {:<backend_w$}  {:<5}  {:<22} {:>10} {:>10} {:>10} {:>10}  verdict",
        "case", "backend", "views", "worst output", "max err", "baseline", "bound", "nmse"
    );
    for r in rows {
        let views = if r.views { "yes" } else { "no" };
        match &r.outcome {
            Outcome::Judged(rep) => {
                if let Some(c) = worst(rep) {
                    println!(
                        "{:<label_w$}  {:<backend_w$}  {views:<5}  {:<22} {:>10.2e} {:>10.2e} {:>10.2e} {:>10.2e}  {}",
                        r.label,
                        r.backend,
                        c.output,
                        c.max_err,
                        c.baseline_err,
                        c.bound,
                        c.nmse,
                        r.verdict()
                    );
                }
            }
            Outcome::Unsupported(m) | Outcome::Error(m) => println!(
                "{:<label_w$}  {:<backend_w$}  {views:<5}  {m}  {}",
                r.label,
                r.backend,
                r.verdict()
            ),
        }
    }
    for r in rows.iter().filter(|r| r.failed()) {
        println!(
            "\n{} on {} (seed {}, massive {}, views {}):",
            r.backend, r.label, r.seed, r.massive, r.views
        );
        match &r.outcome {
            Outcome::Judged(rep) => print!("{rep}"),
            Outcome::Unsupported(m) | Outcome::Error(m) => println!("{m}"),
        }
    }
}
