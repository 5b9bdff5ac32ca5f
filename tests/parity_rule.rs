//! The parity rule must be able to fail: each way a kernel can be wrong is planted in a correct
//! output and must be caught, while errors within the bound pass.
mod common;

use common::{Case, check_case};
use outlier_attn::cases::{InputSpec, random_inputs};
use outlier_attn::parity::{self, Verdict, compare_values, poisoned_outputs};
use outlier_attn::reference::{self, Reference};
use outlier_attn::{
    Backend, DType, HostInputs, HostOutputs, HostTensor, Mask, Problem, Result, Shape, Stat,
    StatsLevel, Variant,
};

/// The reference with a fault planted in its outputs.
struct Faulty<F: Fn(&Problem, &mut HostOutputs)>(F);

impl<F: Fn(&Problem, &mut HostOutputs)> Backend for Faulty<F> {
    fn name(&self) -> String {
        "faulty reference".to_string()
    }
    fn forward(&self, problem: &Problem, inputs: &HostInputs) -> Result<HostOutputs> {
        let mut out = Reference.forward(problem, inputs)?;
        (self.0)(problem, &mut out);
        Ok(out)
    }
}

fn problem(dtype: DType, variant: Variant) -> Problem {
    Problem::new(Shape::new(2, 4, 2, 19, 23, 32), dtype)
        .with_variant(variant)
        .with_mask(Mask::Causal)
        .with_stats(StatsLevel::HeadsAndKeys)
}

fn verdict(backend: &dyn Backend, problem: &Problem) -> parity::ParityReport {
    let inputs = random_inputs(
        problem,
        &InputSpec {
            seed: 7,
            ..InputSpec::default()
        },
    );
    parity::check_backend(backend, problem, &inputs).expect("valid problem")
}

/// Adds `delta` times the bound of the unperturbed case to O element `at`.
fn perturb_o(dtype: DType, at: usize, factor: f64) -> parity::ParityReport {
    let p = problem(dtype, Variant::KvSink);
    let clean = verdict(&Reference, &p);
    let bound = clean.get("o").unwrap().bound;
    let faulty = Faulty(move |_: &Problem, out: &mut HostOutputs| {
        let x = out.o.get(at).unwrap();
        out.o.set(at, x + factor * bound);
    });
    verdict(&faulty, &p)
}

#[test]
fn a_correct_output_passes() {
    for dtype in DType::ALL {
        let report = verdict(&Reference, &problem(dtype, Variant::KvSink));
        assert!(report.passed(), "{dtype}:\n{report}");
    }
}

#[test]
fn an_error_beyond_the_bound_fails_and_one_within_passes() {
    for dtype in DType::ALL {
        let over = perturb_o(dtype, 5, 3.0);
        assert_eq!(
            over.get("o").unwrap().verdict,
            Verdict::Fail,
            "{dtype}:\n{over}"
        );
        assert_eq!(over.get("o").unwrap().worst, Some(5));
        // A quarter of the bound, on top of the output's own rounding (at most half the
        // bound's baseline part), stays inside.
        let within = perturb_o(dtype, 5, 0.25);
        assert_eq!(
            within.get("o").unwrap().verdict,
            Verdict::Pass,
            "{dtype}:\n{within}"
        );
    }
}

#[test]
fn a_nan_in_any_output_fails() {
    let p = problem(DType::F16, Variant::LogitSink);
    let nan_o = Faulty(|_: &Problem, out: &mut HostOutputs| {
        out.o.set(3, f64::NAN);
    });
    assert_eq!(verdict(&nan_o, &p).get("o").unwrap().verdict, Verdict::Fail);
    let nan_lse = Faulty(|_: &Problem, out: &mut HostOutputs| out.lse[1] = f32::NAN);
    assert_eq!(
        verdict(&nan_lse, &p).get("lse").unwrap().verdict,
        Verdict::Fail
    );
    let inf_stat = Faulty(|_: &Problem, out: &mut HostOutputs| {
        out.stats.as_mut().unwrap()[Stat::MeanEntropy.index()] = f32::INFINITY
    });
    assert_eq!(
        verdict(&inf_stat, &p)
            .get("stats.mean_entropy")
            .unwrap()
            .verdict,
        Verdict::Fail
    );
    let nan_key =
        Faulty(|_: &Problem, out: &mut HostOutputs| out.key_mass.as_mut().unwrap()[7] = f32::NAN);
    assert_eq!(
        verdict(&nan_key, &p).get("key_mass").unwrap().verdict,
        Verdict::Fail
    );
}

#[test]
fn an_element_left_unwritten_fails() {
    // A kernel that writes every element but one into the NaN-poisoned buffers.
    let p = problem(DType::Bf16, Variant::Softmax);
    let skips_one = Faulty(|problem: &Problem, out: &mut HostOutputs| {
        let mut poisoned = poisoned_outputs(problem);
        let last = out.o.len() - 1;
        for i in 0..last {
            poisoned.o.set(i, out.o.get(i).unwrap());
        }
        poisoned.lse.copy_from_slice(&out.lse);
        poisoned.stats = out.stats.clone();
        poisoned.key_mass = out.key_mass.clone();
        *out = poisoned;
    });
    let report = verdict(&skips_one, &p);
    let o = report.get("o").unwrap();
    assert_eq!(o.verdict, Verdict::Fail, "{report}");
    assert!(o.detail.as_deref().unwrap().contains("NaN"), "{report}");
}

#[test]
fn missing_statistics_fail() {
    let p = problem(DType::F32, Variant::Softmax);
    let no_keys = Faulty(|_: &Problem, out: &mut HostOutputs| out.key_mass = None);
    assert_eq!(
        verdict(&no_keys, &p).get("key_mass").unwrap().verdict,
        Verdict::Fail
    );
    let no_stats = Faulty(|_: &Problem, out: &mut HostOutputs| out.stats = None);
    assert_eq!(
        verdict(&no_stats, &p).get("stats").unwrap().verdict,
        Verdict::Fail
    );
}

#[test]
fn a_wrong_argmax_channel_fails() {
    let p = problem(DType::F32, Variant::Softmax);
    let wrong = Faulty(|_: &Problem, out: &mut HostOutputs| {
        let r = &mut out.stats.as_mut().unwrap()[Stat::KArgmaxChannel.index()];
        *r = (*r + 1.0) % 32.0;
    });
    let report = verdict(&wrong, &p);
    assert_eq!(
        report.get("stats.k_argmax_channel").unwrap().verdict,
        Verdict::Fail,
        "{report}"
    );
}

#[test]
fn an_ignored_sink_fails_loudly() {
    // A kernel that takes LogitSink for plain softmax: sinks drawn in ±10 expose it.
    let p = problem(DType::Bf16, Variant::LogitSink);
    let ignores_sink = Faulty(|problem: &Problem, out: &mut HostOutputs| {
        let inputs = random_inputs(
            problem,
            &InputSpec {
                seed: 7,
                ..InputSpec::default()
            },
        );
        let softmax = problem.with_variant(Variant::Softmax);
        let plain = HostInputs {
            params: Default::default(),
            ..inputs
        };
        *out = Reference.forward(&softmax, &plain).unwrap();
    });
    let report = verdict(&ignores_sink, &p);
    for output in ["o", "lse", "stats.sink_mass"] {
        assert_eq!(
            report.get(output).unwrap().verdict,
            Verdict::Fail,
            "{output}:\n{report}"
        );
    }
}

#[test]
fn non_finite_values_must_match_the_reference() {
    let r = [1.0, f64::NAN, f64::NEG_INFINITY];
    let ok = compare_values("x", DType::F32, &[1.0, f64::NAN, f64::NEG_INFINITY], &r, &r);
    assert_eq!(ok.verdict, Verdict::Pass);
    let finite_for_nan = compare_values("x", DType::F32, &[1.0, 0.0, f64::NEG_INFINITY], &r, &r);
    assert_eq!(finite_for_nan.verdict, Verdict::Fail);
    let wrong_sign = compare_values("x", DType::F32, &[1.0, f64::NAN, f64::INFINITY], &r, &r);
    assert_eq!(wrong_sign.verdict, Verdict::Fail);
    let nan_for_finite = compare_values(
        "x",
        DType::F32,
        &[f64::NAN, f64::NAN, f64::NEG_INFINITY],
        &r,
        &r,
    );
    assert_eq!(nan_for_finite.verdict, Verdict::Fail);
}

#[test]
fn a_non_finite_baseline_makes_the_case_invalid_without_widening_the_bound() {
    let reference = [1.0, 2.0, 3.0];
    let baseline = [1.0, f64::INFINITY, 3.0];
    let check = compare_values("x", DType::F16, &[1.0, 2.0, 3.0], &reference, &baseline);
    assert_eq!(check.verdict, Verdict::Invalid);
    assert_eq!(check.baseline_err, 0.0);
    // An invalid baseline never hides a real failure.
    let check = compare_values("x", DType::F16, &[1.5, 2.0, 3.0], &reference, &baseline);
    assert_eq!(check.verdict, Verdict::Fail);
}

#[test]
fn nmse_is_reported() {
    let check = compare_values("x", DType::F32, &[1.0, 2.0], &[1.0, 1.0], &[1.0, 1.0]);
    assert!((check.nmse - 0.5).abs() < 1e-12);
    assert_eq!(check.verdict, Verdict::Fail);
}

/// B_t is really lower precision: on inputs every dtype holds exactly, its error against the
/// f64 reference grows from f32 to f16 to bf16.
#[test]
fn the_baseline_loses_precision_with_the_dtype() {
    for variant in [
        Variant::Softmax,
        Variant::KvSink,
        Variant::Sigmoid { bias: None },
    ] {
        let mut errors = Vec::new();
        for dtype in DType::ALL {
            let p = Problem::new(Shape::new(1, 4, 4, 64, 64, 64), dtype).with_variant(variant);
            // Multiples of 1/64 in [-1, 1] are exact in bf16, f16 and f32 alike.
            let dense = random_inputs(
                &p,
                &InputSpec {
                    seed: 11,
                    ..InputSpec::default()
                },
            );
            let exact_in_bf16 = |t: &HostTensor| {
                let v: Vec<f64> = t
                    .to_f64_vec()
                    .iter()
                    .map(|x| (x * 64.0).round() / 64.0)
                    .collect();
                HostTensor::from_f64(dtype, &v)
            };
            let inputs = HostInputs {
                q: exact_in_bf16(&dense.q),
                k: exact_in_bf16(&dense.k),
                v: exact_in_bf16(&dense.v),
                ..dense
            };
            let r = reference::forward(&p, &inputs).unwrap();
            let b = reference::baseline(&p, &inputs).unwrap();
            let o = compare_values("o", dtype, &b.o.to_f64_vec(), &r.o, &r.o);
            errors.push(o.max_err);
        }
        assert!(
            errors[0] < errors[1] && errors[1] < errors[2],
            "{variant}: baseline errors f32 {:.2e}, f16 {:.2e}, bf16 {:.2e}",
            errors[0],
            errors[1],
            errors[2]
        );
    }
}

#[test]
fn the_harness_rejects_a_failing_backend() {
    let p = problem(DType::F16, Variant::Softmax1);
    let case = Case {
        problem: p,
        spec: InputSpec::default(),
        views: true,
    };
    assert!(check_case(&Reference, &case).is_ok());
    let off = Faulty(|_: &Problem, out: &mut HostOutputs| out.lse[0] += 1.0);
    assert!(check_case(&off, &case).is_err());
}
