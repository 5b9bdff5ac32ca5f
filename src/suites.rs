//! Named sets of problems shared by the `outlier-attn` tool's `parity` and `bench` commands and
//! by the criterion benches, so that a figure in BENCHMARKS.md and a case in a sweep can be
//! named the same way everywhere ([`cases::label`]).

use std::time::{Duration, Instant};

use crate::cases::{self, InputSpec, KvStorage, SeqCase};
use crate::contract::{
    Backend, DType, Gate, GateGranularity, HostInputs, Mask, Problem, Result, Shape, StatsLevel,
    Variant,
};

/// How much of the parity grid to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Coverage {
    /// Every variant x dtype x mask once, the shape and statistics level rotating through
    /// [`PARITY_SHAPES`] and the levels: about seventy small cases.
    #[default]
    Quick,
    /// The full product of variants, dtypes, masks, shapes and statistics levels.
    Full,
}

/// One case of the parity sweep: the problem, how its inputs are drawn, and for an
/// engine-shaped case (DESIGN.md section 6) its sequences.
#[derive(Clone, Debug, PartialEq)]
pub struct ParityCase {
    /// The problem (for an engine-shaped case, the call [`cases::engine_inputs`] builds).
    pub problem: Problem,
    /// The input draw (seed, massive activations).
    pub spec: InputSpec,
    /// The sequences of an engine-shaped case; `None` for a dense one.
    pub seqs: Option<SeqCase>,
}

impl ParityCase {
    /// The inputs of this case.
    pub fn inputs(&self) -> HostInputs {
        match &self.seqs {
            None => cases::random_inputs(&self.problem, &self.spec),
            Some(seqs) => cases::engine_inputs(&self.problem, seqs, &self.spec).1,
        }
    }

    /// The label: [`cases::label`] of the problem, and the sequences' lengths.
    pub fn label(&self) -> String {
        match &self.seqs {
            None => cases::label(&self.problem),
            Some(seqs) => format!("{} {}", cases::label(&self.problem), seqs.label()),
        }
    }
}

/// The shapes of the parity sweep, as `Shape::new(B, Hq, Hkv, Nq, Nk, d)`: decode with MQA,
/// lengths that are no multiple of a tile, Nq > Nk (causal rows that see no key), the smallest
/// and largest head dims, GQA ratios 1, 2, 3 and 4.
#[rustfmt::skip]
pub const PARITY_SHAPES: [Shape; 6] = [
    Shape { batch: 1, q_heads: 4, kv_heads: 1, q_len: 1, kv_len: 37, head_dim: 64 },
    Shape { batch: 2, q_heads: 4, kv_heads: 2, q_len: 17, kv_len: 17, head_dim: 32 },
    Shape { batch: 1, q_heads: 2, kv_heads: 2, q_len: 33, kv_len: 70, head_dim: 128 },
    Shape { batch: 1, q_heads: 6, kv_heads: 2, q_len: 70, kv_len: 33, head_dim: 64 },
    Shape { batch: 1, q_heads: 1, kv_heads: 1, q_len: 1, kv_len: 1, head_dim: 8 },
    Shape { batch: 1, q_heads: 3, kv_heads: 1, q_len: 13, kv_len: 113, head_dim: 256 },
];

const LEVELS: [StatsLevel; 3] = [StatsLevel::Off, StatsLevel::Heads, StatsLevel::HeadsAndKeys];

/// A softcap used on every fifth case, small enough to bend the scores it meets.
const SWEEP_SOFTCAP: f32 = 5.0;

/// Every variant with the paper's defaults, plus the settings whose code paths differ:
/// a per-channel gate, an explicit sigmoid bias, a wider clipping.
pub fn sweep_variants() -> Vec<Variant> {
    let mut variants = Variant::all_default().to_vec();
    variants.extend([
        Variant::ContextScale {
            gate: Gate::Sigmoid,
            granularity: GateGranularity::PerChannel,
        },
        Variant::Sigmoid { bias: Some(-2.0) },
        Variant::ClippedSoftmax {
            zeta: 1.1,
            gamma: -0.1,
        },
    ]);
    variants
}

/// The parity sweep: deterministic, so that a failing case is named by its label and seed.
pub fn parity_cases(coverage: Coverage) -> Vec<ParityCase> {
    let mut out = Vec::new();
    let mut n = 0usize;
    for variant in sweep_variants() {
        for dtype in DType::ALL {
            for mask in [Mask::None, Mask::Causal] {
                let grid: Vec<(Shape, StatsLevel)> = match coverage {
                    Coverage::Quick => vec![(
                        PARITY_SHAPES[n % PARITY_SHAPES.len()],
                        LEVELS[(n / PARITY_SHAPES.len() + n) % LEVELS.len()],
                    )],
                    Coverage::Full => PARITY_SHAPES
                        .iter()
                        .flat_map(|&s| LEVELS.map(|l| (s, l)))
                        .collect(),
                };
                for (shape, stats) in grid {
                    let mut problem = Problem::new(shape, dtype)
                        .with_variant(variant)
                        .with_mask(mask)
                        .with_stats(stats);
                    if n % 5 == 4 {
                        problem = problem.with_softcap(SWEEP_SOFTCAP);
                    }
                    out.push(ParityCase {
                        problem,
                        spec: InputSpec {
                            seed: n as u64,
                            massive: n % 4 == 3,
                            ..InputSpec::default()
                        },
                        seqs: None,
                    });
                    n += 1;
                }
            }
        }
    }
    out.extend(engine_cases(coverage));
    out
}

/// The engine-shaped batches of the parity sweep (DESIGN.md section 6), as `(mask, batch)`:
/// packed prefill, batched decode over paged caches of page sizes 1, 16 and 256 and over a
/// dense cache with lengths, windows shorter than, equal to and longer than the sequences
/// (with and without sinks), and sequences of one token next to long ones.
pub fn engine_batches() -> Vec<(Mask, SeqCase)> {
    let seqs = |q: &[usize], k: &[usize], packed_q: bool, kv: KvStorage| SeqCase {
        q_lens: q.to_vec(),
        kv_lens: k.to_vec(),
        packed_q,
        kv,
    };
    let paged = |page_size| KvStorage::Paged {
        page_size,
        spare_pages: 2,
    };
    vec![
        (
            Mask::Causal,
            seqs(&[5, 1, 17], &[5, 40, 17], true, KvStorage::Packed),
        ),
        (
            Mask::None,
            seqs(&[1; 4], &[1, 16, 37, 70], false, paged(16)),
        ),
        (Mask::None, seqs(&[1; 3], &[9, 1, 23], false, paged(1))),
        (Mask::Causal, seqs(&[2; 2], &[30, 3], false, paged(256))),
        (
            Mask::None,
            seqs(
                &[3; 3],
                &[7, 33, 1],
                false,
                KvStorage::DenseWithLens { spare: 4 },
            ),
        ),
        // A window shorter than, then equal to, then longer than the sequences.
        (
            Mask::window(Some(7), Some(0)),
            seqs(&[20, 12], &[20, 40], true, KvStorage::Packed),
        ),
        (
            Mask::window(Some(15), Some(0)),
            seqs(&[16, 1], &[16, 16], true, paged(4)),
        ),
        (
            Mask::window(Some(64), Some(3)),
            seqs(
                &[9; 2],
                &[9, 30],
                false,
                KvStorage::DenseWithLens { spare: 0 },
            ),
        ),
        (
            Mask::window(Some(4), Some(2)),
            seqs(&[1; 3], &[1, 50, 5], false, paged(16)),
        ),
    ]
}

/// Engine-shaped cases: each batch of [`engine_batches`] with the variants rotating (every
/// variant on each batch for [`Coverage::Full`]), GQA 4:2, head dims 64 and 128, statistics
/// levels rotating. The gpt-oss form (`LogitSink` with a window) and Qwen3-Next's
/// (`ContextScale` with a per-channel `Sigmoid` gate) are always among them.
pub fn engine_cases(coverage: Coverage) -> Vec<ParityCase> {
    let variants = sweep_variants();
    let qwen = Variant::ContextScale {
        gate: Gate::Sigmoid,
        granularity: GateGranularity::PerChannel,
    };
    let mut out = Vec::new();
    for (n, (mask, seqs)) in engine_batches().into_iter().enumerate() {
        let chosen: Vec<Variant> = match coverage {
            Coverage::Full => variants.clone(),
            Coverage::Quick => match n {
                5 => vec![Variant::LogitSink],
                0 => vec![qwen],
                _ => vec![variants[n % variants.len()]],
            },
        };
        for (m, variant) in chosen.into_iter().enumerate() {
            let k = n + m;
            let template = Problem::new(
                Shape::new(1, 4, 2, 1, 1, [64, 128][k % 2]),
                DType::ALL[k % DType::ALL.len()],
            )
            .with_variant(variant)
            .with_mask(mask)
            .with_stats(LEVELS[k % LEVELS.len()]);
            let spec = InputSpec {
                seed: 1000 + k as u64,
                massive: k % 4 == 3,
                ..InputSpec::default()
            };
            let problem = cases::engine_inputs(&template, &seqs, &spec).0;
            out.push(ParityCase {
                problem,
                spec,
                seqs: Some(seqs.clone()),
            });
        }
    }
    out
}

/// Query heads of the benchmark shapes.
pub const BENCH_Q_HEADS: usize = 8;
/// Key/value heads of the benchmark shapes (GQA 4:1, as in most current models).
pub const BENCH_KV_HEADS: usize = 2;
/// Head dim of the benchmark shapes (one of the tuned paths).
pub const BENCH_HEAD_DIM: usize = 64;
/// Default sequence lengths of `outlier-attn bench` (Nq = Nk, no mask).
pub const BENCH_LENS: [usize; 4] = [128, 256, 512, 1024];

/// The benchmark problems at one length: plain Softmax, every other variant, then Softmax with
/// each statistics level, so that each one's overhead over plain Softmax can be read off.
pub fn bench_problems(len: usize, dtype: DType) -> Vec<Problem> {
    let shape = Shape::new(1, BENCH_Q_HEADS, BENCH_KV_HEADS, len, len, BENCH_HEAD_DIM);
    let base = Problem::new(shape, dtype);
    let mut out: Vec<Problem> = Variant::all_default()
        .into_iter()
        .map(|v| base.with_variant(v))
        .collect();
    out.push(base.with_stats(StatsLevel::Heads));
    out.push(base.with_stats(StatsLevel::HeadsAndKeys));
    out
}

/// Where a forward pass was timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    /// The backend's device timer around the kernels ([`Backend::device_times`]).
    Device,
    /// Host wall time around [`Backend::forward`], uploads and read-back included.
    Host,
}

impl Clock {
    /// `"device"` or `"host"`.
    pub fn name(self) -> &'static str {
        match self {
            Clock::Device => "device",
            Clock::Host => "host",
        }
    }
}

/// Times `reps` forward passes of `problem` after `warmup` untimed ones, with the backend's
/// device timer where it has one and host wall time of `forward` otherwise: the one timing
/// rule of `outlier-attn bench` and the criterion benches.
///
/// # Errors
/// Whatever the backend's `device_times` or `forward` returns.
pub fn time_passes(
    backend: &dyn Backend,
    problem: &Problem,
    inputs: &HostInputs,
    warmup: usize,
    reps: usize,
) -> Result<(Vec<Duration>, Clock)> {
    if let Some(times) = backend.device_times(problem, inputs, warmup, reps)? {
        return Ok((times, Clock::Device));
    }
    for _ in 0..warmup {
        backend.forward(problem, inputs)?;
    }
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = Instant::now();
        let out = backend.forward(problem, inputs)?;
        times.push(start.elapsed());
        std::hint::black_box(out);
    }
    Ok((times, Clock::Host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_sweep_covers_every_variant_dtype_mask_level_and_shape() {
        let cases = parity_cases(Coverage::Quick);
        assert_eq!(
            cases.len(),
            sweep_variants().len() * 3 * 2 + engine_batches().len()
        );
        for level in LEVELS {
            assert!(cases.iter().any(|c| c.problem.stats == level));
        }
        for shape in PARITY_SHAPES {
            assert!(cases.iter().any(|c| c.problem.shape == shape));
        }
        assert!(cases.iter().any(|c| c.problem.softcap.is_some()));
        assert!(cases.iter().any(|c| c.spec.massive));
    }

    #[test]
    fn full_sweep_is_the_product() {
        let n = sweep_variants().len() * 3 * 2 * PARITY_SHAPES.len() * LEVELS.len()
            + engine_batches().len() * sweep_variants().len();
        assert_eq!(parity_cases(Coverage::Full).len(), n);
    }

    #[test]
    fn engine_cases_cover_every_layout_and_the_model_forms() {
        use crate::contract::{KvSeqs, QuerySeqs};
        let cases = engine_cases(Coverage::Quick);
        let has = |f: &dyn Fn(&ParityCase) -> bool| cases.iter().any(f);
        assert!(has(&|c| matches!(
            c.problem.seqs.q,
            QuerySeqs::Packed { .. }
        )));
        assert!(has(&|c| matches!(c.problem.seqs.kv, KvSeqs::Packed { .. })));
        assert!(has(&|c| matches!(c.problem.seqs.kv, KvSeqs::DenseWithLens)));
        for size in [1, 16, 256] {
            assert!(has(&|c| matches!(
                c.problem.seqs.kv,
                KvSeqs::Paged { page_size, .. } if page_size == size
            )));
        }
        assert!(has(&|c| c.problem.variant == Variant::LogitSink
            && matches!(c.problem.mask, Mask::Window { .. })));
        assert!(has(&|c| matches!(
            c.problem.variant,
            Variant::ContextScale {
                gate: Gate::Sigmoid,
                granularity: GateGranularity::PerChannel
            }
        )));
        for case in &cases {
            let inputs = case.inputs();
            inputs.validate(&case.problem).expect("a valid call");
        }
    }

    #[test]
    fn bench_problems_start_with_plain_softmax() {
        let p = bench_problems(64, DType::F16);
        assert_eq!(p[0].variant, Variant::Softmax);
        assert_eq!(p[0].stats, StatsLevel::Off);
        assert_eq!(p.len(), 9 + 2);
    }
}
