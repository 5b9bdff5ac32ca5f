//! Criterion benches of the CPU reference on the cases of `outlier-attn bench`
//! ([`suites::bench_problems`]), at short lengths: the reference materialises every score in
//! f64, and its figures are the floor the GPU backends are read against.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use outlier_attn::cases::{self, InputSpec};
use outlier_attn::reference::Reference;
use outlier_attn::suites;
use outlier_attn::{Backend, DType};

/// Sequence lengths the reference is timed at (the GPU benches use `suites::BENCH_LENS`).
const REFERENCE_LENS: [usize; 2] = [32, 64];

fn reference(c: &mut Criterion) {
    let mut group = c.benchmark_group("reference");
    group.sample_size(10);
    for len in REFERENCE_LENS {
        for problem in suites::bench_problems(len, DType::F16) {
            let inputs = cases::random_inputs(&problem, &InputSpec::default());
            group.bench_function(cases::label(&problem), |b| {
                b.iter(|| {
                    Reference
                        .forward(black_box(&problem), black_box(&inputs))
                        .expect("the bench problems are valid")
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, reference);
criterion_main!(benches);
