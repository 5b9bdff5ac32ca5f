//! Named sets of problems shared by the `outlier-attn` tool's `parity` and `bench` commands and
//! by the criterion benches, so that a figure in BENCHMARKS.md and a case in a sweep can be
//! named the same way everywhere ([`cases::label`](crate::cases::label)).

use std::time::{Duration, Instant};

use crate::cases::InputSpec;
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

/// One case of the parity sweep: the problem and how its inputs are drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ParityCase {
    /// The problem.
    pub problem: Problem,
    /// The input draw (seed, massive activations).
    pub spec: InputSpec,
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
                    });
                    n += 1;
                }
            }
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
        assert_eq!(cases.len(), sweep_variants().len() * 3 * 2);
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
        let n = sweep_variants().len() * 3 * 2 * PARITY_SHAPES.len() * LEVELS.len();
        assert_eq!(parity_cases(Coverage::Full).len(), n);
    }

    #[test]
    fn bench_problems_start_with_plain_softmax() {
        let p = bench_problems(64, DType::F16);
        assert_eq!(p[0].variant, Variant::Softmax);
        assert_eq!(p[0].stats, StatsLevel::Off);
        assert_eq!(p.len(), 9 + 2);
    }
}
