//! The parity rule (DESIGN.md section 5): a backend's output may be off the f64 reference by at
//! most twice what a plain implementation in the same precision is off, plus a floor.
//!
//! Tests, benches and tools all judge backends with [`check_backend`] or [`compare`]; the
//! NaN-poisoning that makes unwritten elements fail lives here too ([`poisoned_outputs`]).

use std::fmt;

use crate::contract::{Backend, DType, HostInputs, HostOutputs, HostTensor, Problem, Result, Stat};
use crate::reference::{self, ExactOutputs};

/// The floor of the rule, relative to max(1, max|R|): f32 1e-5, f16 5e-4, bf16 4e-3.
pub fn floor(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 1e-5,
        DType::F16 => 5e-4,
        DType::Bf16 => 4e-3,
    }
}

/// The limit llama.cpp's test-backend-ops puts on the NMSE of flash attention; reported
/// beside the rule, not part of it.
pub const NMSE_LIMIT: f64 = 5e-4;

/// The outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Within the bound, and NaN/Inf where the reference has them.
    Pass,
    /// Outside the bound, a non-finite mismatch, or a missing output.
    Fail,
    /// The baseline is not finite where the reference is: the case says nothing about the
    /// backend and must not widen any bound.
    Invalid,
}

/// The result of comparing one output (O, LSE, one statistic, the key mass).
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    /// What was compared (`o`, `lse`, `stats.first_key_mass`, `key_mass`).
    pub output: String,
    /// max |X − R| over elements where both are finite (mismatched channels for an argmax).
    pub max_err: f64,
    /// max |B_t − R|.
    pub baseline_err: f64,
    /// 2·baseline_err + floor·max(1, max|R|).
    pub bound: f64,
    /// Σ(X − R)² / ΣR².
    pub nmse: f64,
    /// The verdict.
    pub verdict: Verdict,
    /// Index of the worst element, or of the first non-finite mismatch.
    pub worst: Option<usize>,
    /// Why it failed or is invalid, in words.
    pub detail: Option<String>,
}

impl Check {
    /// A check of `output` that has found nothing wrong yet.
    fn passing(output: &str) -> Check {
        Check {
            output: output.to_string(),
            max_err: 0.0,
            baseline_err: 0.0,
            bound: 0.0,
            nmse: 0.0,
            verdict: Verdict::Pass,
            worst: None,
            detail: None,
        }
    }
}

/// Every check of one case.
#[derive(Clone, Debug, PartialEq)]
pub struct ParityReport {
    /// One check per output.
    pub checks: Vec<Check>,
}

impl ParityReport {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.verdict == Verdict::Pass)
    }

    /// Whether some check is invalid (and none failed): the case should be discarded.
    pub fn invalid(&self) -> bool {
        !self.checks.iter().any(|c| c.verdict == Verdict::Fail)
            && self.checks.iter().any(|c| c.verdict == Verdict::Invalid)
    }

    /// The overall verdict: Fail if any failed, else Invalid if any is invalid, else Pass.
    pub fn verdict(&self) -> Verdict {
        if self.checks.iter().any(|c| c.verdict == Verdict::Fail) {
            Verdict::Fail
        } else if self.invalid() {
            Verdict::Invalid
        } else {
            Verdict::Pass
        }
    }

    /// The check of one output by name.
    pub fn get(&self, output: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.output == output)
    }

    /// The checks that did not pass.
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.verdict != Verdict::Pass)
    }
}

impl fmt::Display for ParityReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<24} {:>11} {:>11} {:>11} {:>11}  verdict",
            "output", "max err", "baseline", "bound", "nmse"
        )?;
        for c in &self.checks {
            write!(
                f,
                "{:<24} {:>11.3e} {:>11.3e} {:>11.3e} {:>11.3e}  {:?}",
                c.output, c.max_err, c.baseline_err, c.bound, c.nmse, c.verdict
            )?;
            if let Some(d) = &c.detail {
                write!(f, " ({d})")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// Fills a buffer with NaN.
pub fn poison(buffer: &mut [f32]) {
    buffer.fill(f32::NAN);
}

/// Outputs of the right sizes for `problem` in its sequence layout (O and LSE in Q's, the key
/// mass in K's), every element NaN. Backends start from these (or fill their device buffers
/// the same way), so that an element a kernel never writes fails.
pub fn poisoned_outputs(problem: &Problem) -> HostOutputs {
    let s = &problem.shape;
    let nan = |len| vec![f32::NAN; len];
    HostOutputs {
        o: HostTensor::filled(
            problem.dtype,
            problem.q_tokens() * s.q_heads * s.head_dim,
            f64::NAN,
        ),
        lse: nan(problem.lse_len()),
        stats: problem
            .stats
            .heads()
            .then(|| nan(s.heads_total() * Stat::COUNT)),
        key_mass: problem.stats.keys().then(|| nan(problem.key_mass_len())),
    }
}

/// Compares one output: `actual` X and `baseline` B_t against `reference` R, elementwise.
pub fn compare_values(
    output: &str,
    dtype: DType,
    actual: &[f64],
    reference: &[f64],
    baseline: &[f64],
) -> Check {
    let mut check = Check::passing(output);
    if actual.len() != reference.len() || baseline.len() != reference.len() {
        check.verdict = Verdict::Fail;
        check.detail = Some(format!(
            "length {} (baseline {}), expected {}",
            actual.len(),
            baseline.len(),
            reference.len()
        ));
        return check;
    }
    let (mut r_max, mut err_sq, mut ref_sq) = (0.0f64, 0.0f64, 0.0f64);
    let mut worst = None;
    let mismatch = |check: &mut Check, verdict: Verdict, i: usize, what: String| {
        // The first failure is the one reported; an invalid baseline never hides a failure.
        if check.verdict == Verdict::Pass
            || (verdict == Verdict::Fail && check.verdict != Verdict::Fail)
        {
            check.verdict = verdict;
            check.worst = Some(i);
            check.detail = Some(what);
        }
    };
    for (i, ((&x, &r), &b)) in actual.iter().zip(reference).zip(baseline).enumerate() {
        // NaN must meet NaN, an infinity the same infinity, and a finite value a finite one.
        let both_finite = r.is_finite() && x.is_finite();
        let same_non_finite = if r.is_nan() { x.is_nan() } else { x == r };
        if !both_finite {
            if !same_non_finite {
                let what = format!("element {i} is {x}, reference {r}");
                mismatch(&mut check, Verdict::Fail, i, what);
            }
            continue;
        }
        if !b.is_finite() {
            mismatch(
                &mut check,
                Verdict::Invalid,
                i,
                format!("baseline element {i} is {b}, reference {r}"),
            );
            continue;
        }
        r_max = r_max.max(r.abs());
        let err = (x - r).abs();
        if worst.is_none() || err > check.max_err {
            check.max_err = err;
            worst = Some(i);
        }
        check.baseline_err = check.baseline_err.max((b - r).abs());
        err_sq += err * err;
        ref_sq += r * r;
    }
    if check.verdict == Verdict::Pass {
        check.worst = worst;
    }
    check.bound = 2.0 * check.baseline_err + floor(dtype) * r_max.max(1.0);
    check.nmse = if ref_sq > 0.0 {
        err_sq / ref_sq
    } else if err_sq > 0.0 {
        f64::INFINITY
    } else {
        0.0
    };
    // An error beyond the bound fails even where some other element made the case invalid.
    if check.verdict != Verdict::Fail && check.max_err > check.bound {
        check.verdict = Verdict::Fail;
        check.detail = Some(format!(
            "max error {:.3e} at element {} exceeds the bound {:.3e}",
            check.max_err,
            check.worst.unwrap_or(0),
            check.bound
        ));
    }
    check
}

fn widen(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

fn missing(output: &str) -> Check {
    Check {
        output: output.to_string(),
        max_err: f64::NAN,
        baseline_err: f64::NAN,
        bound: f64::NAN,
        nmse: f64::NAN,
        verdict: Verdict::Fail,
        worst: None,
        detail: Some("not returned".to_string()),
    }
}

/// Applies the rule to every output of one case: O, LSE, each statistic and the key mass.
///
/// Argmax channels are compared exactly, but only for heads whose maximum stands above every
/// other channel's by more than the tolerance of the matching absmax check.
pub fn compare(
    problem: &Problem,
    actual: &HostOutputs,
    reference: &ExactOutputs,
    baseline: &HostOutputs,
) -> ParityReport {
    let dtype = problem.dtype;
    let mut checks = vec![
        if actual.o.dtype() == dtype {
            compare_values(
                "o",
                dtype,
                &actual.o.to_f64_vec(),
                &reference.o,
                &baseline.o.to_f64_vec(),
            )
        } else {
            let mut c = missing("o");
            c.detail = Some(format!("dtype {}, expected {dtype}", actual.o.dtype()));
            c
        },
        compare_values(
            "lse",
            dtype,
            &widen(&actual.lse),
            &reference.lse,
            &widen(&baseline.lse),
        ),
    ];

    if problem.stats.heads() {
        match (&actual.stats, &baseline.stats) {
            (Some(x), Some(b)) if x.len() == reference.stats.len() => {
                let column = |buf: &[f32], st: Stat| -> Vec<f64> {
                    buf.chunks_exact(Stat::COUNT)
                        .map(|r| r[st.index()] as f64)
                        .collect()
                };
                let column_ref = |st: Stat| -> Vec<f64> {
                    reference
                        .stats
                        .chunks_exact(Stat::COUNT)
                        .map(|r| r[st.index()])
                        .collect()
                };
                for st in Stat::ALL.iter().filter(|s| !s.is_argmax()) {
                    checks.push(compare_values(
                        &format!("stats.{}", st.name()),
                        dtype,
                        &column(x, *st),
                        &column_ref(*st),
                        &column(b, *st),
                    ));
                }
                for (st, of, margin_index) in [
                    (Stat::QArgmaxChannel, Stat::QAbsMax, 0),
                    (Stat::KArgmaxChannel, Stat::KAbsMax, 1),
                ] {
                    let bound = checks
                        .iter()
                        .find(|c| c.output == format!("stats.{}", of.name()))
                        .map_or(0.0, |c| c.bound);
                    checks.push(compare_argmax(
                        st,
                        &column(x, st),
                        &column_ref(st),
                        reference.argmax_margins.iter().map(|m| m[margin_index]),
                        bound,
                    ));
                }
            }
            _ => checks.push(missing("stats")),
        }
    }
    if problem.stats.keys() {
        match (&actual.key_mass, &baseline.key_mass) {
            (Some(x), Some(b)) => checks.push(compare_values(
                "key_mass",
                dtype,
                &widen(x),
                &reference.key_mass,
                &widen(b),
            )),
            _ => checks.push(missing("key_mass")),
        }
    }
    ParityReport { checks }
}

fn compare_argmax(
    st: Stat,
    actual: &[f64],
    reference: &[f64],
    margins: impl Iterator<Item = f64>,
    bound: f64,
) -> Check {
    let mut check = Check::passing(&format!("stats.{}", st.name()));
    let mut mismatches = 0usize;
    for (i, ((&x, &r), margin)) in actual.iter().zip(reference).zip(margins).enumerate() {
        if margin > bound && x != r {
            mismatches += 1;
            if check.worst.is_none() {
                check.worst = Some(i);
                check.detail = Some(format!("head {i}: channel {x}, reference {r}"));
            }
        }
    }
    check.max_err = mismatches as f64;
    if mismatches > 0 {
        check.verdict = Verdict::Fail;
    }
    check
}

/// Runs `backend` on one case and judges it against the reference and baseline.
///
/// # Errors
/// Whatever the backend or the reference returns (a refusal, an unsupported problem).
pub fn check_backend(
    backend: &dyn Backend,
    problem: &Problem,
    inputs: &HostInputs,
) -> Result<ParityReport> {
    let reference = reference::forward(problem, inputs)?;
    let baseline = reference::baseline(problem, inputs)?;
    let actual = backend.forward(problem, inputs)?;
    Ok(compare(problem, &actual, &reference, &baseline))
}
