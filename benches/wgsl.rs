//! Forward time of the WGSL kernels, timed by the device's timestamps around the call's
//! compute pass (inputs resident; see `common`). Two groups:
//!
//! - `wgsl`: the cases of `outlier-attn bench` (`suites::bench_problems`: every variant and
//!   statistics level at Hq = 8, Hkv = 2, d = 64) at `suites::BENCH_LENS`.
//! - `wgsl_grid`: d = 64 and 128, Nq = Nk = 256 and 512, f32 and f16, Softmax vs
//!   ContextScale vs KvSink, statistics Off vs Heads, 8 heads (MHA).
//!
//! `OUTLIER_ATTN_BENCH_LENS` (a comma list) replaces both groups' lengths.
mod common;

use criterion::{Criterion, criterion_group, criterion_main};
use outlier_attn::suites::BENCH_LENS;
use outlier_attn::wgsl::WgslBackend;
use outlier_attn::{DType, Gate, GateGranularity, Problem, Shape, StatsLevel, Variant};

/// Heads of the grid (MHA).
const GRID_HEADS: usize = 8;
/// Lengths of the grid.
const GRID_LENS: [usize; 2] = [256, 512];

fn bench(c: &mut Criterion) {
    let backend = match WgslBackend::new() {
        Ok(b) => b,
        Err(e) => return common::absent("wgsl", &e),
    };
    common::suite(c, "wgsl", &backend, &common::lens(&BENCH_LENS));

    let mut group = c.benchmark_group("wgsl_grid");
    group.sample_size(10);
    group.warm_up_time(std::time::Duration::from_millis(500));
    group.measurement_time(std::time::Duration::from_secs(3));
    let variants = [
        Variant::Softmax,
        Variant::ContextScale {
            gate: Gate::TwoSigmoid,
            granularity: GateGranularity::PerHead,
        },
        Variant::KvSink,
    ];
    for n in common::lens(&GRID_LENS) {
        for d in [64usize, 128] {
            for dtype in [DType::F32, DType::F16] {
                for variant in variants {
                    for stats in [StatsLevel::Off, StatsLevel::Heads] {
                        let shape = Shape::new(1, GRID_HEADS, GRID_HEADS, n, n, d);
                        let problem = Problem::new(shape, dtype)
                            .with_variant(variant)
                            .with_stats(stats);
                        let id = format!("{}/{dtype}/d{d}/n{n}/{}", variant.name(), stats.name());
                        common::bench_problem(&mut group, id, &backend, &problem);
                    }
                }
            }
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
