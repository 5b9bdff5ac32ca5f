//! What every test of this crate shares: proptest settings, strategies for random problems,
//! and the harness that holds a backend to the reference under the parity rule (in the manner
//! of ggml's test-backend-ops: one sweep, every backend).
#![allow(dead_code)]

use outlier_attn::cases::{self, InputSpec};
use outlier_attn::parity::{self, ParityReport};
use outlier_attn::reference;
use outlier_attn::{
    Backend, DType, Gate, GateGranularity, HostInputs, Mask, Problem, Shape, StatsLevel, Variant,
};
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};

/// Cases per property unless PROPTEST_CASES says otherwise.
pub const DEFAULT_CASES: u32 = 64;

/// The variable that turns a skipped backend into a failure: a comma-separated list of backend
/// names (`wgsl`, `cuda`, `nvrtc`) that must be present. CI sets it for what it provides.
pub const REQUIRE_ENV: &str = "OUTLIER_ATTN_REQUIRE";

/// Proptest settings: PROPTEST_CASES and PROPTEST_RNG_SEED from the environment are honoured
/// (`ProptestConfig::with_cases` would ignore the former).
pub fn config() -> ProptestConfig {
    let env_cases = std::env::var("PROPTEST_CASES").is_ok();
    let base = ProptestConfig::default();
    ProptestConfig {
        cases: if env_cases { base.cases } else { DEFAULT_CASES },
        max_global_rejects: 100_000,
        ..base
    }
}

/// Whether CI requires backend `name` to be present.
pub fn required(name: &str) -> bool {
    std::env::var(REQUIRE_ENV)
        .map(|v| v.split(',').any(|n| n.trim() == name))
        .unwrap_or(false)
}

/// Reports a missing backend: a failure if CI requires it, a skip message otherwise.
pub fn skip_or_fail(name: &str, why: &str) {
    if required(name) {
        panic!("backend {name} is required ({REQUIRE_ENV}) but not available: {why}");
    }
    eprintln!("skipped: backend {name} is not available here: {why}");
}

/// The WGSL backend with `options` on this machine's adapter (its description printed), or
/// `None` after reporting why: a failure where CI requires it.
#[cfg(feature = "wgpu")]
pub fn wgsl_backend(
    options: outlier_attn::wgsl::WgslOptions,
) -> Option<outlier_attn::wgsl::WgslBackend> {
    match outlier_attn::wgsl::WgslBackend::with_options(options) {
        Ok(b) => {
            eprintln!("{}", b.describe().join("\n  "));
            Some(b)
        }
        Err(e) => {
            skip_or_fail("wgsl", &e.to_string());
            None
        }
    }
}

/// The sizes a strategy may draw.
#[derive(Clone, Debug)]
pub struct Limits {
    /// dtypes to draw from.
    pub dtypes: Vec<DType>,
    /// Largest Nq and Nk.
    pub max_len: usize,
    /// Largest head dim (a multiple of 8).
    pub max_head_dim: usize,
    /// Largest batch.
    pub max_batch: usize,
    /// Largest Hkv.
    pub max_kv_heads: usize,
    /// Largest Hq / Hkv.
    pub max_group: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            dtypes: DType::ALL.to_vec(),
            max_len: 24,
            max_head_dim: 64,
            max_batch: 2,
            max_kv_heads: 2,
            max_group: 3,
        }
    }
}

/// Any variant, with its scalar settings drawn in their valid ranges.
pub fn arb_variant() -> impl Strategy<Value = Variant> {
    let gate = prop_oneof![
        Just(Gate::TwoSigmoid),
        Just(Gate::Sigmoid),
        Just(Gate::Identity)
    ];
    let granularity = prop_oneof![
        Just(GateGranularity::PerHead),
        Just(GateGranularity::PerChannel)
    ];
    prop_oneof![
        Just(Variant::Softmax),
        Just(Variant::ValueBias),
        Just(Variant::ContextBias),
        Just(Variant::KvSink),
        (gate, granularity)
            .prop_map(|(gate, granularity)| Variant::ContextScale { gate, granularity }),
        prop_oneof![Just(None), (-6.0f32..3.0).prop_map(Some)]
            .prop_map(|bias| Variant::Sigmoid { bias }),
        Just(Variant::LogitSink),
        Just(Variant::Softmax1),
        (1.0f32..1.2, -0.2f32..=0.0)
            .prop_map(|(zeta, gamma)| Variant::ClippedSoftmax { zeta, gamma }),
    ]
}

/// Any mask: none, causal, or a sliding window with either side bounded or not (small
/// bounds, so that windows shorter than, equal to and longer than a sequence all occur).
pub fn arb_mask() -> impl Strategy<Value = Mask> {
    let side = |max: usize| prop_oneof![1 => Just(None), 3 => (0..=max).prop_map(Some)];
    prop_oneof![
        1 => Just(Mask::None),
        1 => Just(Mask::Causal),
        2 => (side(8), side(4)).prop_map(|(left, right)| Mask::Window { left, right }),
    ]
}

/// The keys row `i` of a sequence of `nq` queries and `nk` keys sees under `mask`, as the
/// inclusive range `(first, last)`, or `None` when it sees none: DESIGN.md's formula written
/// out by hand in signed arithmetic, independent of [`Mask::key_range`].
pub fn band(mask: Mask, i: usize, nq: usize, nk: usize) -> Option<(usize, usize)> {
    let diagonal = i as i64 + nk as i64 - nq as i64;
    let (left, right): (Option<i64>, Option<i64>) = match mask {
        Mask::None => (None, None),
        Mask::Causal => (None, Some(0)),
        Mask::Window { left, right } => (left.map(|l| l as i64), right.map(|r| r as i64)),
    };
    let first = left.map_or(0, |l| (diagonal - l).max(0));
    let last = right.map_or(nk as i64 - 1, |r| (diagonal + r).min(nk as i64 - 1));
    (first <= last).then_some((first as usize, last as usize))
}

/// A length in 1..=max, with 1 drawn often (decode, single key).
fn arb_len(max: usize) -> impl Strategy<Value = usize> {
    prop_oneof![1 => Just(1usize), 4 => 1..=max]
}

/// A shape within `limits`.
pub fn arb_shape(limits: &Limits) -> impl Strategy<Value = Shape> + use<> {
    (
        1..=limits.max_batch,
        1..=limits.max_kv_heads,
        1..=limits.max_group,
        arb_len(limits.max_len),
        arb_len(limits.max_len),
        1..=limits.max_head_dim / 8,
    )
        .prop_map(|(b, hkv, group, nq, nk, d8)| Shape::new(b, hkv * group, hkv, nq, nk, d8 * 8))
}

/// A whole problem within `limits`: shape, dtype, variant, mask, scale, softcap, statistics.
pub fn arb_problem(limits: &Limits) -> impl Strategy<Value = Problem> + use<> {
    (
        arb_shape(limits),
        proptest::sample::select(limits.dtypes.clone()),
        arb_variant(),
        prop_oneof![Just(Mask::None), Just(Mask::Causal)],
        prop_oneof![3 => Just(None), 1 => (0.05f32..1.0).prop_map(Some)],
        prop_oneof![3 => Just(None), 1 => (2.0f32..50.0).prop_map(Some)],
        prop_oneof![
            Just(StatsLevel::Off),
            Just(StatsLevel::Heads),
            Just(StatsLevel::HeadsAndKeys)
        ],
    )
        .prop_map(
            |(shape, dtype, variant, mask, scale, softcap, stats)| Problem {
                shape,
                dtype,
                variant,
                mask,
                scale,
                softcap,
                stats,
                seqs: outlier_attn::Sequences::DENSE,
            },
        )
}

/// One parity case: a problem, how its inputs are drawn, and whether they are views into
/// larger buffers.
#[derive(Clone, Debug)]
pub struct Case {
    /// The problem.
    pub problem: Problem,
    /// The input draw.
    pub spec: InputSpec,
    /// Inputs as views into padded, NaN-filled buffers.
    pub views: bool,
}

impl Case {
    /// The inputs of this case.
    pub fn inputs(&self) -> HostInputs {
        let dense = cases::random_inputs(&self.problem, &self.spec);
        if self.views {
            cases::as_views(&self.problem, &dense, self.spec.seed)
        } else {
            dense
        }
    }
}

/// A parity case within `limits`; a quarter of them with massive activations, a quarter as views.
pub fn arb_case(limits: &Limits) -> impl Strategy<Value = Case> + use<> {
    (arb_problem(limits), any::<u64>(), 0..4u8, 0..4u8).prop_map(|(problem, seed, m, v)| Case {
        problem,
        spec: InputSpec {
            seed,
            massive: m == 0,
            ..InputSpec::default()
        },
        views: v == 0,
    })
}

/// Holds `backend` to the reference on one case: an invalid case is rejected, a failing one
/// fails with its label and the whole report.
pub fn check_case(backend: &dyn Backend, case: &Case) -> Result<ParityReport, TestCaseError> {
    let inputs = case.inputs();
    let report = parity::check_backend(backend, &case.problem, &inputs)
        .map_err(|e| TestCaseError::fail(format!("{}: {e}", cases::label(&case.problem))))?;
    if report.invalid() {
        return Err(TestCaseError::reject(
            "baseline not finite where the reference is",
        ));
    }
    if !report.passed() {
        return Err(TestCaseError::fail(format!(
            "{} on {} (seed {}, massive {}, views {}):\n{report}",
            backend.name(),
            cases::label(&case.problem),
            case.spec.seed,
            case.spec.massive,
            case.views
        )));
    }
    Ok(report)
}

/// The parity sweep: random cases within `limits`, each held to the reference.
pub fn parity_sweep(backend: &dyn Backend, limits: &Limits) {
    let mut runner = TestRunner::new(config());
    let result = runner.run(&arb_case(limits), |case| {
        check_case(backend, &case).map(|_| ())
    });
    if let Err(e) = result {
        panic!("{}: parity sweep failed: {e}", backend.name());
    }
}

/// A dense parity case under any mask of [`arb_mask`] (sliding windows with either side
/// bounded or not, causal, none): for backends that implement windows on dense calls.
pub fn arb_windowed_case(limits: &Limits) -> impl Strategy<Value = Case> + use<> {
    (arb_case(limits), arb_mask()).prop_map(|(mut case, mask)| {
        case.problem.mask = mask;
        case
    })
}

/// The parity sweep of [`arb_windowed_case`], `cases` random cases (e.g. `config().cases`):
/// every case must run and pass.
pub fn windowed_parity_sweep(backend: &dyn Backend, limits: &Limits, cases: u32) {
    let mut runner = TestRunner::new(ProptestConfig { cases, ..config() });
    let result = runner.run(&arb_windowed_case(limits), |case| {
        check_case(backend, &case).map(|_| ())
    });
    if let Err(e) = result {
        panic!("{}: windowed parity sweep failed: {e}", backend.name());
    }
}

/// Windows as gpt-oss and Mistral run them, past several K/V tiles and query blocks, with
/// sinks (never masked by the window) and every statistic: a 128-token window with learned
/// sink logits (GQA), a window shorter than the sequence on both sides, a window longer than
/// the sequence, causal decode under a window over many keys, and Nq > Nk.
pub fn window_problems() -> Vec<Problem> {
    let window = |left, right| Mask::Window { left, right };
    [
        (
            Shape::new(1, 4, 2, 300, 300, 64),
            DType::F16,
            Variant::LogitSink,
            window(Some(127), Some(0)),
        ),
        (
            Shape::new(2, 2, 1, 90, 140, 32),
            DType::Bf16,
            Variant::KvSink,
            window(Some(5), Some(3)),
        ),
        (
            Shape::new(1, 2, 2, 40, 40, 64),
            DType::F32,
            Variant::ClippedSoftmax {
                zeta: 1.1,
                gamma: -0.1,
            },
            window(Some(100), None),
        ),
        (
            Shape::new(1, 8, 2, 1, 700, 128),
            DType::F16,
            Variant::Softmax,
            window(Some(127), Some(0)),
        ),
        (
            Shape::new(1, 2, 1, 120, 50, 64),
            DType::F32,
            Variant::Sigmoid { bias: None },
            window(Some(9), Some(2)),
        ),
    ]
    .into_iter()
    .map(|(shape, dtype, variant, mask)| {
        Problem::new(shape, dtype)
            .with_variant(variant)
            .with_mask(mask)
            .with_stats(StatsLevel::HeadsAndKeys)
    })
    .collect()
}

/// Runs `backend` twice on the same case and requires bit-identical outputs.
pub fn assert_deterministic(backend: &dyn Backend, case: &Case) {
    let inputs = case.inputs();
    let a = backend.forward(&case.problem, &inputs).expect("first run");
    let b = backend.forward(&case.problem, &inputs).expect("second run");
    assert!(
        output_bits(&a) == output_bits(&b),
        "{}: two runs of {} differ",
        backend.name(),
        cases::label(&case.problem)
    );
}

/// Every output of a call as bits (O, LSE, statistics, key mass), for bitwise comparisons.
#[allow(clippy::type_complexity)]
pub fn output_bits(
    x: &outlier_attn::HostOutputs,
) -> (Vec<u8>, Vec<u32>, Option<Vec<u32>>, Option<Vec<u32>>) {
    let f = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    (
        x.o.as_bytes().to_vec(),
        f(&x.lse),
        x.stats.as_deref().map(f),
        x.key_mass.as_deref().map(f),
    )
}

/// Runs one case on dense inputs and again on views into larger buffers; both must pass and
/// agree with the reference.
pub fn assert_views_match(backend: &dyn Backend, problem: &Problem, seed: u64) {
    for views in [false, true] {
        let case = Case {
            problem: *problem,
            spec: InputSpec {
                seed,
                ..InputSpec::default()
            },
            views,
        };
        if let Err(e) = check_case(backend, &case) {
            panic!("views = {views}: {e}");
        }
    }
}

/// The reference output of a case, for identities between problems.
pub fn exact(problem: &Problem, inputs: &HostInputs) -> reference::ExactOutputs {
    reference::forward(problem, inputs).expect("reference accepts a valid problem")
}

/// Holds a backend's device timer to what a timer must do: one time per timed pass, each
/// positive, together no longer than the host waited for them, and longer for a problem with
/// sixteen times the keys. Returns `false` when the backend has no device timer.
pub fn assert_device_times_measure_the_kernels(backend: &dyn Backend) -> bool {
    let short = Problem::new(Shape::new(1, 4, 2, 64, 64, 64), DType::F16)
        .with_variant(Variant::ContextScale {
            gate: Gate::TwoSigmoid,
            granularity: GateGranularity::PerHead,
        })
        .with_stats(StatsLevel::HeadsAndKeys);
    let long = Problem {
        shape: Shape {
            kv_len: 16 * short.shape.kv_len,
            ..short.shape
        },
        ..short
    };
    let reps = 5;
    let mut medians = Vec::new();
    for problem in [short, long] {
        let inputs = cases::random_inputs(&problem, &InputSpec::default());
        let start = std::time::Instant::now();
        let times = match backend.device_times(&problem, &inputs, 1, reps) {
            Ok(Some(times)) => times,
            Ok(None) => return false,
            Err(e) => panic!("{}: device_times failed: {e}", backend.name()),
        };
        let waited = start.elapsed();
        let label = cases::label(&problem);
        assert_eq!(times.len(), reps, "{}: one time per pass", backend.name());
        assert!(
            times.iter().all(|t| !t.is_zero()),
            "{}: a zero device time on {label}: {times:?}",
            backend.name()
        );
        let total: std::time::Duration = times.iter().sum();
        assert!(
            total <= waited,
            "{}: device times {total:?} exceed the {waited:?} the host waited on {label}",
            backend.name()
        );
        let mut sorted = times.clone();
        sorted.sort();
        medians.push(sorted[reps / 2]);
    }
    assert!(
        medians[1] > medians[0],
        "{}: sixteen times the keys did not take longer: {medians:?}",
        backend.name()
    );
    // Refusals are the forward pass's: a wrong-length Q is a typed error, not a time.
    let mut inputs = cases::random_inputs(&short, &InputSpec::default());
    inputs.q = outlier_attn::HostTensor::filled(DType::F16, 3, 0.0);
    assert!(
        backend.device_times(&short, &inputs, 0, 1).is_err(),
        "{}: device_times accepted a Q of 3 elements",
        backend.name()
    );
    true
}

/// Sequences past what a short sweep reaches (and past where a kernel with a loop over the
/// channels per key loses keys on lavapipe, ~450 at d = 64): a decode row over a long cache,
/// thousands of keys at d = 128, the ClippedSoftmax second pass and the key mass over
/// hundreds of rows. A kernel that truncates a long loop (lavapipe ends an invocation after
/// 65535 loop iterations) or overflows a tile counter fails here.
pub fn long_sequence_cases() -> Vec<Case> {
    let case = |shape, dtype, variant, mask, seed| Case {
        problem: Problem::new(shape, dtype)
            .with_variant(variant)
            .with_mask(mask)
            .with_stats(StatsLevel::HeadsAndKeys),
        spec: InputSpec {
            seed,
            ..InputSpec::default()
        },
        views: false,
    };
    vec![
        case(
            Shape::new(1, 2, 1, 1, 3000, 64),
            DType::F16,
            Variant::Softmax,
            Mask::None,
            1,
        ),
        case(
            Shape::new(1, 2, 1, 3, 2048, 128),
            DType::Bf16,
            Variant::KvSink,
            Mask::None,
            2,
        ),
        case(
            Shape::new(1, 2, 2, 17, 1000, 256),
            DType::F32,
            Variant::ClippedSoftmax {
                zeta: 1.1,
                gamma: -0.1,
            },
            Mask::Causal,
            3,
        ),
        case(
            Shape::new(1, 1, 1, 600, 700, 64),
            DType::F16,
            Variant::Sigmoid { bias: None },
            Mask::Causal,
            4,
        ),
    ]
}

/// Runs [`long_sequence_cases`] on `backend`; every one must pass.
pub fn assert_long_sequences_pass(backend: &dyn Backend) {
    for case in long_sequence_cases() {
        if let Err(e) = check_case(backend, &case) {
            panic!("{e}");
        }
    }
}

/// An engine-shaped batch within `limits` (DESIGN.md section 6): up to three sequences whose
/// lengths differ (dense Q or K/V force them equal), Q dense or packed, K/V dense, dense with
/// `seqlens_k` and spare NaN slots, packed, or paged with page sizes 1, 3, 16 and 256 and
/// spare NaN pages.
pub fn arb_seq_case(limits: &Limits) -> impl Strategy<Value = cases::SeqCase> + use<> {
    let max = limits.max_len;
    let storage = prop_oneof![
        Just(cases::KvStorage::Dense),
        (0..4usize).prop_map(|spare| cases::KvStorage::DenseWithLens { spare }),
        Just(cases::KvStorage::Packed),
        (
            proptest::sample::select(vec![1usize, 3, 16, 256]),
            0..3usize
        )
            .prop_map(|(page_size, spare_pages)| cases::KvStorage::Paged {
                page_size,
                spare_pages
            }),
    ];
    (
        1..=3usize,
        any::<bool>(),
        storage,
        proptest::collection::vec(arb_len(max), 3),
        proptest::collection::vec(arb_len(max), 3),
    )
        .prop_map(move |(b, packed_q, kv, q_lens, kv_lens)| {
            let mut q_lens = q_lens[..b].to_vec();
            let mut kv_lens = kv_lens[..b].to_vec();
            if !packed_q {
                q_lens = vec![q_lens[0]; b];
            }
            if kv == cases::KvStorage::Dense {
                kv_lens = vec![kv_lens[0]; b];
            }
            cases::SeqCase {
                q_lens,
                kv_lens,
                packed_q,
                kv,
            }
        })
}

/// One engine-shaped parity case: the template problem (its batch and lengths are replaced by
/// the batch's), the batch, and the input draw.
#[derive(Clone, Debug)]
pub struct EngineCase {
    /// Variant, mask, dtype, heads, head dim, scalars, statistics.
    pub template: Problem,
    /// The sequences and their storage.
    pub seqs: cases::SeqCase,
    /// The input draw.
    pub spec: InputSpec,
}

impl EngineCase {
    /// The call and its inputs.
    pub fn build(&self) -> (Problem, HostInputs) {
        cases::engine_inputs(&self.template, &self.seqs, &self.spec)
    }
}

/// An engine-shaped case within `limits`: any problem of [`arb_problem`], any mask of
/// [`arb_mask`], any batch of [`arb_seq_case`]; a quarter with massive activations.
pub fn arb_engine_case(limits: &Limits) -> impl Strategy<Value = EngineCase> + use<> {
    (
        arb_problem(limits),
        arb_mask(),
        arb_seq_case(limits),
        any::<u64>(),
        0..4u8,
    )
        .prop_map(|(template, mask, seqs, seed, m)| EngineCase {
            template: template.with_mask(mask),
            seqs,
            spec: InputSpec {
                seed,
                massive: m == 0,
                ..InputSpec::default()
            },
        })
}

/// Holds `backend` to the reference on one engine-shaped case: it passes the parity rule, or
/// it refuses with [`Error::Unsupported`](outlier_attn::Error) naming an engine-shaped
/// feature the case uses, never a wrong answer. Returns whether it ran.
pub fn check_engine_case(backend: &dyn Backend, case: &EngineCase) -> Result<bool, TestCaseError> {
    let (problem, inputs) = case.build();
    let label = format!("{} {}", cases::label(&problem), case.seqs.label());
    match parity::check_backend(backend, &problem, &inputs) {
        Ok(report) if report.invalid() => Err(TestCaseError::reject(
            "baseline not finite where the reference is",
        )),
        Ok(report) if report.passed() => Ok(true),
        Ok(report) => Err(TestCaseError::fail(format!(
            "{} on {label} (seed {}):\n{report}",
            backend.name(),
            case.spec.seed
        ))),
        Err(outlier_attn::Error::Unsupported { reason, .. })
            if problem
                .engine_features()
                .iter()
                .any(|f| reason.contains(f.name())) =>
        {
            Ok(false)
        }
        Err(e) => Err(TestCaseError::fail(format!("{label}: {e}"))),
    }
}

/// The engine-shaped parity sweep: random cases within `limits`, each passed or refused by
/// name. Returns how many ran (the rest were refused).
pub fn engine_parity_sweep(backend: &dyn Backend, limits: &Limits) -> usize {
    engine_parity_sweep_cases(backend, limits, config().cases)
}

/// [`engine_parity_sweep`] with `cases` random cases (for slow backends such as the emulator).
pub fn engine_parity_sweep_cases(backend: &dyn Backend, limits: &Limits, cases: u32) -> usize {
    let ran = std::cell::Cell::new(0usize);
    let mut runner = TestRunner::new(ProptestConfig { cases, ..config() });
    let result = runner.run(&arb_engine_case(limits), |case| {
        if check_engine_case(backend, &case)? {
            ran.set(ran.get() + 1);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{}: engine-shaped parity sweep failed: {e}", backend.name());
    }
    ran.get()
}

/// Split-KV decode on the engine layouts (DESIGN.md section 6), each over several 64-key tiles:
/// paged caches with page sizes that are and are not multiples of the tile (dense Q, the GQA
/// fold), dense K/V with lengths, packed Q and K, and windows whose first splits see no key of
/// a row (gpt-oss's 128-token window with sinks) next to sequences shorter than the others.
pub fn decode_engine_cases() -> Vec<EngineCase> {
    use cases::{KvStorage, SeqCase};
    let window = Mask::window(Some(127), Some(0));
    let case = |template: Problem, q_lens: Vec<usize>, kv_lens: Vec<usize>, packed_q, kv, seed| {
        EngineCase {
            template,
            seqs: SeqCase {
                q_lens,
                kv_lens,
                packed_q,
                kv,
            },
            spec: InputSpec {
                seed,
                ..InputSpec::default()
            },
        }
    };
    let base = |variant, mask, stats, d| {
        Problem::new(Shape::new(1, 4, 1, 1, 1, d), DType::Bf16)
            .with_variant(variant)
            .with_mask(mask)
            .with_stats(stats)
    };
    let paged = |page_size| KvStorage::Paged {
        page_size,
        spare_pages: 1,
    };
    vec![
        case(
            base(Variant::Softmax, Mask::None, StatsLevel::Off, 64),
            vec![1, 1, 1],
            vec![130, 70, 200],
            false,
            paged(64),
            1,
        ),
        case(
            base(Variant::LogitSink, window, StatsLevel::Off, 64),
            vec![1, 1],
            vec![200, 150],
            false,
            paged(16),
            2,
        ),
        case(
            base(Variant::KvSink, Mask::Causal, StatsLevel::HeadsAndKeys, 32),
            vec![2, 2],
            vec![150, 90],
            false,
            paged(7),
            3,
        ),
        case(
            base(Variant::ContextBias, Mask::Causal, StatsLevel::Heads, 128),
            vec![2, 2],
            vec![140, 70],
            false,
            KvStorage::DenseWithLens { spare: 10 },
            4,
        ),
        case(
            base(
                Variant::LogitSink,
                Mask::window(Some(40), Some(0)),
                StatsLevel::Heads,
                64,
            ),
            vec![3, 1],
            vec![140, 66],
            true,
            KvStorage::Packed,
            5,
        ),
    ]
}

/// Decode-shaped cases for split-KV (Nq of 1 to 3, Nk over two or three K/V tiles of 64
/// keys, GQA), every variant that splits (ClippedSoftmax does not) in turn, causal and not,
/// every statistics level, both 16-bit dtypes, some with massive activations or as views.
pub fn decode_cases() -> Vec<Case> {
    let variants: Vec<Variant> = Variant::all_default()
        .into_iter()
        .filter(|v| !matches!(v, Variant::ClippedSoftmax { .. }))
        .collect();
    let stats = [StatsLevel::Off, StatsLevel::Heads, StatsLevel::HeadsAndKeys];
    let shapes = [
        Shape::new(1, 4, 1, 1, 160, 64),
        Shape::new(1, 4, 2, 3, 129, 128),
        Shape::new(2, 2, 2, 2, 129, 32),
    ];
    variants
        .iter()
        .enumerate()
        .map(|(i, &variant)| {
            Problem::new(shapes[i % shapes.len()], [DType::Bf16, DType::F16][i % 2])
                .with_variant(variant)
                .with_mask([Mask::None, Mask::Causal][(i / 2) % 2])
                .with_stats(stats[i % stats.len()])
        })
        .enumerate()
        .map(|(i, problem)| Case {
            problem,
            spec: InputSpec {
                seed: 40 + i as u64,
                massive: i % 3 == 0,
                ..InputSpec::default()
            },
            views: i % 4 == 1,
        })
        .collect()
}

/// The CUDA backend's fixed cases, run on a GPU (tests/cuda_parity.rs) and on the emulator
/// (tests/cuda_emu_parity.rs): causal with Nq > Nk (rows that see no key), decode (Nq = 1),
/// a sink variant with statistics, both tuned head dims, lengths past one and two tiles, the
/// ClippedSoftmax second pass on f32, the d = 256 tile. All with `HeadsAndKeys`.
pub fn cuda_fixed_problems() -> Vec<Problem> {
    let cases = [
        (
            Shape::new(1, 4, 2, 130, 70, 64),
            DType::Bf16,
            Variant::KvSink,
            Mask::Causal,
        ),
        (
            Shape::new(2, 2, 1, 1, 300, 128),
            DType::F16,
            Variant::Softmax,
            Mask::None,
        ),
        (
            Shape::new(1, 2, 2, 90, 90, 128),
            DType::Bf16,
            Variant::ContextScale {
                gate: Gate::TwoSigmoid,
                granularity: GateGranularity::PerChannel,
            },
            Mask::Causal,
        ),
        (
            Shape::new(1, 3, 1, 65, 129, 72),
            DType::F32,
            Variant::ClippedSoftmax {
                zeta: 1.1,
                gamma: -0.1,
            },
            Mask::Causal,
        ),
        (
            Shape::new(1, 2, 1, 200, 64, 256),
            DType::F16,
            Variant::LogitSink,
            Mask::Causal,
        ),
    ];
    cases
        .into_iter()
        .map(|(shape, dtype, variant, mask)| {
            Problem::new(shape, dtype)
                .with_variant(variant)
                .with_mask(mask)
                .with_stats(StatsLevel::HeadsAndKeys)
        })
        .collect()
}

/// Every head-dim tile of the CUDA tensor-core kernel (d = 8 ... 256: the first and last d of
/// each tile and dims that are not a multiple of 16) in f16, bf16 and f32 (the SIMT kernel),
/// the variants in turn, causal and not, softcap on a third, keys past one 64-key tile, massive
/// activations on a quarter and views on a fifth. Run on a GPU and on the emulator.
pub fn cuda_tile_cases() -> Vec<Case> {
    let variants = Variant::all_default();
    let dims = [8, 24, 64, 72, 128, 136, 200, 256];
    let mut out = Vec::new();
    let mut n = 0;
    for (i, &d) in dims.iter().enumerate() {
        for dtype in [DType::F16, DType::Bf16, DType::F32] {
            let variant = variants[(i * 3 + n) % variants.len()];
            n += 1;
            let mut problem = Problem::new(Shape::new(1, 2, 1, 19, 70, d), dtype)
                .with_variant(variant)
                .with_mask(if n % 2 == 0 { Mask::Causal } else { Mask::None })
                .with_stats(StatsLevel::HeadsAndKeys);
            if n % 3 == 0 {
                problem = problem.with_softcap(20.0);
            }
            out.push(Case {
                problem,
                spec: InputSpec {
                    seed: 40 + n as u64,
                    massive: n % 4 == 0,
                    ..InputSpec::default()
                },
                views: n % 5 == 0,
            });
        }
    }
    out
}

/// Cases for the CUDA tensor-core kernel's query blocks (128 rows, 64 at d = 256) and K/V
/// tiles (64 keys, 32 at d = 256): lengths across two to five query blocks and up to ten key
/// tiles (so that whole unmasked tiles, tiles the causal diagonal crosses and the tail past Nk
/// all occur, and several blocks own K/V tiles), GQA groups of two and three (K/V statistics
/// counted once per kv head), Nq > Nk (rows that see no key) and Nq < Nk. Every variant (on
/// the fast and the generic path) runs twice: once causal with `HeadsAndKeys` and once
/// without a mask with `Heads`, or the other way round; f16 and bf16 at each of d = 64, 128
/// and 256; massive activations on a third; views on a quarter
/// ([`assert_block_cases_cover`] checks these claims).
pub fn cuda_block_cases() -> Vec<Case> {
    let variants = Variant::all_default();
    let shapes = [
        Shape::new(1, 4, 2, 300, 260, 64),
        Shape::new(1, 3, 1, 260, 130, 128),
        Shape::new(2, 2, 1, 129, 300, 64),
        Shape::new(1, 2, 2, 200, 200, 128),
        Shape::new(1, 2, 1, 150, 100, 256),
        Shape::new(1, 3, 1, 70, 150, 256),
    ];
    let mut out = Vec::new();
    for round in 0..2 {
        for (i, variant) in variants.iter().enumerate() {
            let n = round * variants.len() + i;
            let shape = shapes[n % shapes.len()];
            let dtype = if (n + n / shapes.len()) % 2 == 0 {
                DType::Bf16
            } else {
                DType::F16
            };
            let causal = (i + round) % 2 == 0;
            let (mask, stats) = if causal {
                (Mask::Causal, StatsLevel::HeadsAndKeys)
            } else {
                (Mask::None, StatsLevel::Heads)
            };
            out.push(Case {
                problem: Problem::new(shape, dtype)
                    .with_variant(*variant)
                    .with_mask(mask)
                    .with_stats(stats),
                spec: InputSpec {
                    seed: 500 + n as u64,
                    massive: n % 3 == 0,
                    ..InputSpec::default()
                },
                views: n % 4 == 3,
            });
        }
    }
    out
}

/// Checks what [`cuda_block_cases`] claims to cover: every variant both causal and not,
/// both `Heads` and `HeadsAndKeys`, f16 and bf16 at each of d = 64, 128 and 256, and every
/// case longer than `block(d)` = (query rows, keys) of one block and one K/V tile.
pub fn assert_block_cases_cover(cases: &[Case], block: impl Fn(usize) -> (usize, usize)) {
    use std::collections::BTreeSet;
    let mut seen = BTreeSet::new();
    for case in cases {
        let p = &case.problem;
        let s = p.shape;
        let (rows, keys) = block(s.head_dim);
        assert!(
            s.q_len > rows && s.kv_len > keys,
            "{}: within one block or tile",
            cases::label(p)
        );
        seen.insert(format!("{} {:?}", p.variant.name(), p.mask));
        seen.insert(format!("{:?}", p.stats));
        seen.insert(format!("{:?} d{}", p.dtype, s.head_dim));
    }
    let mut want: Vec<String> = Variant::all_default()
        .iter()
        .flat_map(|v| [Mask::Causal, Mask::None].map(|m| format!("{} {m:?}", v.name())))
        .collect();
    want.extend([StatsLevel::Heads, StatsLevel::HeadsAndKeys].map(|l| format!("{l:?}")));
    for d in [64, 128, 256] {
        want.extend([DType::F16, DType::Bf16].map(|t| format!("{t:?} d{d}")));
    }
    let missing: Vec<&String> = want.iter().filter(|w| !seen.contains(*w)).collect();
    assert!(missing.is_empty(), "not covered: {missing:?}");
}

/// Where [`nonfinite_cases`] writes a non-finite value: one element each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonfiniteSite {
    /// Channel 3 of query row 5 of head 1 (that row's scores and its sink logit).
    QueryRow,
    /// Channel 2 of key 2 of kv head 0 (every row sees it; in the first K/V tile, which the
    /// rows of the first shape see whole: the unmasked loop).
    EarlyKey,
    /// Channel 2 of key Nk − 5 of kv head 0 (in the last, masked K/V tile: under the causal
    /// mask only the last rows see it).
    LateKey,
    /// Channel 7 of value 2 of the last kv head (that channel of every row that sees a key).
    /// Always in the first shape, where every row sees key 2: a tiled P·V multiplies the
    /// weight 0 of a key masked for some rows of a block by its value, and 0 · inf is NaN
    /// (the crate docs, "NaN and Inf", say so; FlashAttention does the same).
    ValueChannel,
    /// Channel 3 of query row 0 of head 1 at −inf and channel 3 of every key of kv head 0
    /// positive: every score of that row is −inf (NaN in the reference, e^{−inf − (−inf)},
    /// unless a sink is in the denominator). Only with −inf, in the first shape, and not for
    /// ClippedSoftmax (the crate docs, "NaN and Inf").
    EveryScoreNegInf,
}

/// NaN, +Inf and −Inf in one query row, one key and one value channel, which DESIGN.md
/// section 4 says are not refused but propagate to what they reach as the reference
/// propagates them. Every variant at each site and value; f16, bf16 and f32 in turn (the
/// tensor-core and the SIMT CUDA kernels); causal and not in turn; two shapes in turn, both
/// past one K/V tile: 20 rows over 140 keys (the first K/V tile unmasked for every row) and
/// 140 rows over 70 keys (two query blocks; under the causal mask the first 70 rows see no key,
/// so a poisoned row 5 reaches only a sink); GQA; `HeadsAndKeys`, `Heads` on a quarter; and a
/// row whose every score is −inf; a learned sink logit of −inf. Each case is (label, problem,
/// inputs).
pub fn nonfinite_cases() -> Vec<(String, Problem, HostInputs)> {
    let shapes = [
        Shape::new(1, 4, 2, 20, 140, 16),
        Shape::new(1, 2, 1, 140, 70, 32),
    ];
    let sites = [
        NonfiniteSite::QueryRow,
        NonfiniteSite::EarlyKey,
        NonfiniteSite::LateKey,
        NonfiniteSite::ValueChannel,
        NonfiniteSite::EveryScoreNegInf,
    ];
    let mut out = Vec::new();
    let mut n = 0usize;
    for (v, variant) in Variant::all_default().iter().enumerate() {
        for (si, &site) in sites.iter().enumerate() {
            for value in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
                let every_score = site == NonfiniteSite::EveryScoreNegInf;
                if every_score
                    && (value != f64::NEG_INFINITY
                        || matches!(variant, Variant::ClippedSoftmax { .. }))
                {
                    continue;
                }
                // Every (site, value) meets each dtype, both masks and both shapes.
                let dtype = [DType::F16, DType::Bf16, DType::F32][(n + v) % 3];
                let mask = if (n + v) % 2 == 0 {
                    Mask::Causal
                } else {
                    Mask::None
                };
                let stats = if n % 4 == 3 {
                    StatsLevel::Heads
                } else {
                    StatsLevel::HeadsAndKeys
                };
                let shape = if site == NonfiniteSite::ValueChannel || every_score {
                    shapes[0]
                } else {
                    shapes[(v + si) % 2]
                };
                n += 1;
                let problem = Problem::new(shape, dtype)
                    .with_variant(*variant)
                    .with_mask(mask)
                    .with_stats(stats);
                let mut inputs = cases::random_inputs(
                    &problem,
                    &InputSpec {
                        seed: 900 + n as u64,
                        ..InputSpec::default()
                    },
                );
                let l = inputs.layouts;
                let (nk, last_kv) = (shape.kv_len, shape.kv_heads - 1);
                let written = match site {
                    NonfiniteSite::QueryRow => inputs.q.set(l.q.index(0, 5, 1, 3), value),
                    NonfiniteSite::EarlyKey => inputs.k.set(l.k.index(0, 2, 0, 2), value),
                    NonfiniteSite::LateKey => inputs.k.set(l.k.index(0, nk - 5, 0, 2), value),
                    NonfiniteSite::ValueChannel => inputs.v.set(l.v.index(0, 2, last_kv, 7), value),
                    NonfiniteSite::EveryScoreNegInf => {
                        for j in 0..nk {
                            let at = l.k.index(0, j, 0, 3);
                            let k = inputs.k.get(at).expect("inside K");
                            inputs.k.set(at, k.abs() + 0.5);
                        }
                        inputs.q.set(l.q.index(0, 0, 1, 3), value)
                    }
                };
                assert!(written, "{site:?} lies inside the tensor");
                let label = format!("{} with {value} in {site:?}", cases::label(&problem));
                out.push((label, problem, inputs));
            }
        }
    }
    // A learned sink logit θ = −inf (head 1), on rows that see keys and, causal in the second
    // shape, on rows that see none.
    for (i, mask) in [Mask::None, Mask::Causal].into_iter().enumerate() {
        for (dtype, shape) in [(DType::F16, shapes[1]), (DType::F32, shapes[0])] {
            let problem = Problem::new(shape, dtype)
                .with_variant(Variant::LogitSink)
                .with_mask(mask)
                .with_stats(StatsLevel::HeadsAndKeys);
            let mut inputs = cases::random_inputs(
                &problem,
                &InputSpec {
                    seed: 990 + i as u64,
                    ..InputSpec::default()
                },
            );
            let theta = inputs.params.sink_logits.as_mut().expect("θ");
            assert!(theta.set(1, f64::NEG_INFINITY), "head 1 has a θ");
            let label = format!("{} with θ = -inf", cases::label(&problem));
            out.push((label, problem, inputs));
        }
    }
    out
}

/// Holds `backend` to the reference on [`nonfinite_cases`]: NaN and ±Inf exactly where the
/// reference has them (O, LSE, every statistic, the key mass; the parity rule's first check),
/// finite values within the parity bound. A case whose baseline is not finite where the
/// reference is says nothing and is reported; most must say something, and most must have a
/// non-finite value in the reference's O or LSE (or the sweep tests nothing).
pub fn assert_nonfinite_propagate(backend: &dyn Backend) {
    assert_nonfinite_propagate_where(backend, |_| true);
}

/// [`assert_nonfinite_propagate`] on the cases whose problem `keep` accepts: for a second code
/// path of a backend whose propagation logic the first run already covered, a subset that
/// still meets every site and value (each meets every dtype: `dtype == F32` keeps them all).
pub fn assert_nonfinite_propagate_where(backend: &dyn Backend, keep: impl Fn(&Problem) -> bool) {
    let all: Vec<_> = nonfinite_cases()
        .into_iter()
        .filter(|(_, problem, _)| keep(problem))
        .collect();
    let (mut failures, mut invalid, mut reaching) = (Vec::new(), 0, 0);
    for (label, problem, inputs) in &all {
        let r = exact(problem, inputs);
        if r.o.iter().chain(&r.lse).any(|x| !x.is_finite()) {
            reaching += 1;
        }
        match parity::check_backend(backend, problem, inputs) {
            Err(e) => failures.push(format!("{label}: {e}")),
            Ok(report) if report.invalid() => {
                invalid += 1;
                eprintln!("note: {label}: the baseline is not finite where the reference is");
            }
            Ok(report) if !report.passed() => failures.push(format!("{label}:\n{report}")),
            Ok(_) => {}
        }
    }
    assert!(
        failures.is_empty(),
        "{}: {} of {} non-finite cases differ from the reference:\n{}",
        backend.name(),
        failures.len(),
        all.len(),
        failures.join("\n")
    );
    assert!(
        invalid * 4 < all.len() && reaching * 2 > all.len(),
        "{}: of {} non-finite cases {invalid} were invalid, {reaching} reach O or the LSE",
        backend.name(),
        all.len()
    );
}

/// What a device-level kernel must write for one output row (a query token, all heads) when
/// the engine's index tensors are wrong (crate docs, "Bad index tensors on the device").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowExpect {
    /// The row reads nothing bad: it equals the reference of the valid call.
    Correct,
    /// The row reads a bad entry: O and LSE NaN.
    Nan,
    /// Its sequence read a bad entry but this row may not have: either of the two.
    Either,
}

/// An engine-shaped call whose index tensors were corrupted after validation, as a
/// device-level call can receive them: the valid call, the corrupted index tensors, and what
/// each output row must be.
#[derive(Clone, Debug)]
pub struct BadIndexCase {
    /// What was corrupted.
    pub label: String,
    /// The call.
    pub problem: Problem,
    /// Its valid inputs; the reference of these is what unaffected rows must equal.
    pub valid: HostInputs,
    /// The index tensors the device sees instead.
    pub bad: outlier_attn::SeqIndices<Vec<i32>>,
    /// Per Q token (packed row, or b·Nq + i for dense Q).
    pub rows: Vec<RowExpect>,
}

/// Corrupted index tensors of every kind: a block-table entry past the caches and a negative
/// one (with a window, so that rows that never reach the bad page must stay correct), a
/// `seqlens_k` entry past the cache and a negative one, and cumulative lengths that are
/// not monotonic, start past 0, or end past the tensor.
pub fn bad_index_cases() -> Vec<BadIndexCase> {
    use outlier_attn::cases::{KvStorage, SeqCase};
    let template = Problem::new(Shape::new(1, 4, 2, 1, 1, 16), DType::F32)
        .with_variant(Variant::LogitSink)
        .with_stats(StatsLevel::HeadsAndKeys);
    let paged = SeqCase {
        q_lens: vec![6, 6, 6],
        kv_lens: vec![20, 40, 9],
        packed_q: true,
        kv: KvStorage::Paged {
            page_size: 8,
            spare_pages: 1,
        },
    };
    let packed = SeqCase {
        q_lens: vec![3, 5, 2],
        kv_lens: vec![7, 5, 9],
        packed_q: true,
        kv: KvStorage::Packed,
    };
    let window = Mask::window(Some(29), Some(0));
    let build = |mask: Mask, seqs: &SeqCase| {
        cases::engine_inputs(&template.with_mask(mask), seqs, &InputSpec::default())
    };
    let mut out = Vec::new();
    let (problem, valid) = build(window, &paged);
    let outlier_attn::KvSeqs::Paged {
        pages, max_pages, ..
    } = problem.seqs.kv
    else {
        unreachable!("a paged case")
    };
    // Sequence 1 (6 queries over 40 keys, 29 keys before the diagonal): logical page 0 holds
    // keys 0..8, which rows 0 to 2 read and rows 3 to 5 do not.
    for (what, value) in [("past the caches", pages as i32), ("negative", -1)] {
        let mut bad = valid.indices.clone();
        bad.block_table.as_mut().unwrap()[max_pages] = value;
        let mut rows = vec![RowExpect::Correct; 18];
        for i in 0..6 {
            let range = window.key_range(i, 6, 40);
            rows[6 + i] = if range.start < 8 {
                RowExpect::Nan
            } else {
                RowExpect::Either
            };
        }
        out.push(BadIndexCase {
            label: format!("block_table[1, 0] {what}"),
            problem,
            valid: valid.clone(),
            bad,
            rows,
        });
    }
    let (problem, valid) = build(Mask::Causal, &paged);
    for (what, value) in [
        ("past the cache", (max_pages * 8 + 1) as i32),
        ("negative", -3),
    ] {
        let mut bad = valid.indices.clone();
        bad.seqlens_k.as_mut().unwrap()[2] = value;
        let mut rows = vec![RowExpect::Correct; 18];
        rows[12..].fill(RowExpect::Nan);
        out.push(BadIndexCase {
            label: format!("seqlens_k[2] {what}"),
            problem,
            valid: valid.clone(),
            bad,
            rows,
        });
    }
    let (problem, valid) = build(Mask::Causal, &packed);
    for (what, tensor, at, value) in [
        ("decreasing", "cu_seqlens_q", 2, 1),
        ("not starting at 0", "cu_seqlens_k", 0, 2),
        ("ending past the tensor", "cu_seqlens_k", 3, 30),
        ("ending past the tensor", "cu_seqlens_q", 3, 1000),
    ] {
        let mut bad = valid.indices.clone();
        let cu = if tensor == "cu_seqlens_q" {
            bad.cu_seqlens_q.as_mut()
        } else {
            bad.cu_seqlens_k.as_mut()
        };
        cu.unwrap()[at] = value;
        out.push(BadIndexCase {
            label: format!("{tensor}[{at}] {what}"),
            problem,
            valid: valid.clone(),
            bad,
            rows: vec![RowExpect::Nan; 10],
        });
    }
    out
}

/// The keys of a poisoned sequence whose key mass may be NaN: its own keys in packed K, its
/// whole row `[0, Nk)` otherwise (where the row outlives the sequence's length, which a bad
/// `seqlens_k` no longer tells). Its own keys must be NaN; the rest NaN or 0.
pub fn poisoned_keys(p: &Problem, span: &outlier_attn::SeqSpan) -> usize {
    match p.seqs.kv {
        outlier_attn::KvSeqs::Packed { .. } => span.kv_len,
        _ => p.shape.kv_len,
    }
}

/// Holds a device-level run's outputs to what [`BadIndexCase::rows`] requires: rows that read
/// a bad entry are NaN (O and LSE, every head), rows that read nothing bad pass the parity rule
/// against the reference of the valid call, and a sequence with a NaN row has an all-NaN
/// statistics record and NaN key mass over its own keys (past them, up to [`poisoned_keys`],
/// NaN or the reference's 0); every other sequence's record and key mass pass.
pub fn check_bad_index_outputs(
    case: &BadIndexCase,
    actual: &outlier_attn::HostOutputs,
) -> Result<(), String> {
    let p = &case.problem;
    let exact = reference::forward(p, &case.valid).map_err(|e| e.to_string())?;
    let base = reference::baseline(p, &case.valid).map_err(|e| e.to_string())?;
    let map = outlier_attn::SeqMap::new(&p.shape, &p.seqs, &case.valid.indices)
        .map_err(|e| e.to_string())?;
    let (hq, d) = (p.shape.q_heads, p.shape.head_dim);
    let x_o = actual.o.to_f64_vec();
    let (mut r_o, mut b_o) = (exact.o.clone(), base.o.to_f64_vec());
    let (mut r_lse, mut b_lse): (Vec<f64>, Vec<f64>) = (
        exact.lse.clone(),
        base.lse.iter().map(|&x| x as f64).collect(),
    );
    let x_lse: Vec<f64> = actual.lse.iter().map(|&x| x as f64).collect();
    let mut poisoned = vec![false; p.shape.batch];
    for (b, span) in map.spans().iter().enumerate() {
        for i in 0..span.q_len {
            let (outer, token) = map.q_pos(b, i);
            let row = outer * p.shape.q_len + token;
            let expect = case.rows[row];
            let row_nan = (0..hq * d).all(|c| x_o[row * hq * d + c].is_nan());
            let nan = match expect {
                RowExpect::Correct => false,
                RowExpect::Nan => true,
                RowExpect::Either => row_nan,
            };
            if nan {
                poisoned[b] = true;
                r_o[row * hq * d..(row + 1) * hq * d].fill(f64::NAN);
                b_o[row * hq * d..(row + 1) * hq * d].fill(f64::NAN);
                for h in 0..hq {
                    r_lse[map.lse_index(b, h, i)] = f64::NAN;
                    b_lse[map.lse_index(b, h, i)] = f64::NAN;
                }
            }
        }
    }
    let mut checks = vec![
        parity::compare_values("o", p.dtype, &x_o, &r_o, &b_o),
        parity::compare_values("lse", p.dtype, &x_lse, &r_lse, &b_lse),
    ];
    if let (Some(x), Some(b_stats)) = (&actual.stats, &base.stats) {
        let (mut r, mut bb) = (
            exact.stats.clone(),
            b_stats.iter().map(|&v| v as f64).collect::<Vec<_>>(),
        );
        for (b, &bad) in poisoned.iter().enumerate() {
            if bad {
                let at = b * hq * outlier_attn::Stat::COUNT;
                r[at..at + hq * outlier_attn::Stat::COUNT].fill(f64::NAN);
                bb[at..at + hq * outlier_attn::Stat::COUNT].fill(f64::NAN);
            }
        }
        let x: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        checks.push(parity::compare_values("stats", p.dtype, &x, &r, &bb));
    }
    if let (Some(x), Some(b_km)) = (&actual.key_mass, &base.key_mass) {
        let (mut r, mut bb) = (
            exact.key_mass.clone(),
            b_km.iter().map(|&v| v as f64).collect::<Vec<_>>(),
        );
        let x: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        // In the `[B, Hq, Nk]` layouts a poisoned sequence's row past its length may be NaN
        // too: when the bad entry is its seqlens_k, the kernel cannot know that length.
        for (b, span) in map.spans().iter().enumerate() {
            if poisoned[b] {
                for h in 0..hq {
                    for j in 0..poisoned_keys(p, span) {
                        let at = map.key_mass_index(b, h, j);
                        if j < span.kv_len || x[at].is_nan() {
                            r[at] = f64::NAN;
                            bb[at] = f64::NAN;
                        }
                    }
                }
            }
        }
        checks.push(parity::compare_values("key_mass", p.dtype, &x, &r, &bb));
    }
    let failed: Vec<String> = checks
        .iter()
        .filter(|c| c.verdict == parity::Verdict::Fail)
        .map(|c| format!("{}: {}", c.output, c.detail.clone().unwrap_or_default()))
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("{}: {}", case.label, failed.join("; ")))
    }
}

/// Batch invariance (FlashInfer's test): sequences 0 and 2 of a three-sequence batch (GQA,
/// learned sinks, 130 keys, `Heads` statistics), each run alone, give bit for bit their rows
/// of the full batch: O, LSE and the statistics record. `label` names the backend's setting.
pub fn assert_batch_invariant(backend: &dyn Backend, label: &str) {
    use outlier_attn::{HostTensor, Stat};
    let problem = Problem::new(Shape::new(3, 2, 1, 2, 130, 64), DType::Bf16)
        .with_variant(Variant::LogitSink)
        .with_stats(StatsLevel::Heads);
    let full_inputs = cases::random_inputs(&problem, &InputSpec::default());
    let s = problem.shape;
    let one = Problem::new(Shape { batch: 1, ..s }, problem.dtype)
        .with_variant(problem.variant)
        .with_stats(problem.stats);
    let slice = |t: &HostTensor, b: usize, per: usize| {
        let bytes = per * problem.dtype.size_bytes();
        HostTensor::from_bytes(problem.dtype, &t.as_bytes()[b * bytes..(b + 1) * bytes])
            .expect("whole elements")
    };
    let (q_per, kv_per) = (
        s.q_len * s.q_heads * s.head_dim,
        s.kv_len * s.kv_heads * s.head_dim,
    );
    let full = backend.forward(&problem, &full_inputs).expect("full batch");
    let o_full = full.o.as_bytes();
    let stats_full = full.stats.as_deref().expect("stats");
    let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    for bb in [0, 2] {
        let inputs = HostInputs::dense(
            &one,
            slice(&full_inputs.q, bb, q_per),
            slice(&full_inputs.k, bb, kv_per),
            slice(&full_inputs.v, bb, kv_per),
        )
        .with_params(full_inputs.params.clone());
        let alone = backend.forward(&one, &inputs).expect("one sequence");
        let o_bytes = q_per * problem.dtype.size_bytes();
        assert_eq!(
            alone.o.as_bytes(),
            &o_full[bb * o_bytes..(bb + 1) * o_bytes],
            "{label}: O of sequence {bb}"
        );
        let lse_per = s.q_heads * s.q_len;
        assert_eq!(
            bits(&alone.lse),
            bits(&full.lse[bb * lse_per..(bb + 1) * lse_per]),
            "{label}: LSE of sequence {bb}"
        );
        let stats_per = s.q_heads * Stat::COUNT;
        assert_eq!(
            bits(alone.stats.as_deref().expect("stats")),
            bits(&stats_full[bb * stats_per..(bb + 1) * stats_per]),
            "{label}: statistics of sequence {bb}"
        );
    }
}

/// Qwen3-Next's per-channel sigmoid gate, read as a view of the q projection: one buffer
/// [total_q, Hq, 2d] holds q (channels 0..d) and the gate z (channels d..2d), each read
/// through its own offset and strides; packed queries over a paged cache, `HeadsAndKeys`.
pub fn gate_view_case(dtype: DType) -> (Problem, HostInputs) {
    use outlier_attn::{HostTensor, Layout, Strides};
    let template = Problem::new(Shape::new(1, 4, 2, 1, 1, 16), dtype)
        .with_variant(Variant::ContextScale {
            gate: Gate::Sigmoid,
            granularity: GateGranularity::PerChannel,
        })
        .with_mask(Mask::Causal)
        .with_stats(StatsLevel::HeadsAndKeys);
    let seqs = cases::SeqCase {
        q_lens: vec![5, 3],
        kv_lens: vec![9, 21],
        packed_q: true,
        kv: cases::KvStorage::Paged {
            page_size: 4,
            spare_pages: 1,
        },
    };
    let (problem, mut inputs) = cases::engine_inputs(&template, &seqs, &InputSpec::default());
    let s = problem.shape;
    let (hq, d) = (s.q_heads, s.head_dim);
    let rows = problem.q_tokens();
    let (q, z) = (
        inputs.q.to_f64_vec(),
        inputs.params.gate.take().expect("z").to_f64_vec(),
    );
    let mut fused = vec![0.0; rows * hq * 2 * d];
    for r in 0..rows {
        for h in 0..hq {
            for c in 0..d {
                fused[(r * hq + h) * 2 * d + c] = q[(r * hq + h) * d + c];
                fused[(r * hq + h) * 2 * d + d + c] = z[(r * hq + h) * d + c];
            }
        }
    }
    let strides = Strides {
        batch: (rows * hq * 2 * d) as u64,
        seq: (hq * 2 * d) as u64,
        head: (2 * d) as u64,
        channel: 1,
    };
    let projection = HostTensor::from_f64(dtype, &fused);
    inputs.q = projection.clone();
    inputs.params.gate = Some(projection);
    inputs.layouts.q = Layout { offset: 0, strides };
    inputs.layouts.params.gate = Some(Layout {
        offset: d as u64,
        strides,
    });
    (problem, inputs)
}

/// Engine-shaped cases that a backend runs with split-KV forced (each a decode or a short
/// prefill over many keys, tests/common `decode_engine_cases`): each passes the parity rule
/// against the reference, and a second and a third run give the same O bits.
pub fn assert_engine_cases_pass_and_repeat(backend: &dyn Backend, cases: &[EngineCase]) {
    for case in cases {
        let (problem, inputs) = case.build();
        let label = format!("{} {}", cases::label(&problem), case.seqs.label());
        let report = parity::check_backend(backend, &problem, &inputs)
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        assert!(report.passed(), "{label}:\n{report}");
        let again = backend.forward(&problem, &inputs).expect("second run");
        let first = backend.forward(&problem, &inputs).expect("third run");
        assert_eq!(again.o.as_bytes(), first.o.as_bytes(), "{label}: O differs");
    }
}
