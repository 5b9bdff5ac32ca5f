//! The CPU reference on the cases of `outlier-attn bench` ([`suites::bench_problems`]) at
//! short lengths, timed as the tool times it (host wall time of `Backend::forward`): the
//! reference materialises every score in f64, and its figures are the floor the GPU backends
//! are read against. `OUTLIER_ATTN_BENCH_LENS` replaces the lengths.
mod common;

use criterion::{Criterion, criterion_group, criterion_main};
use outlier_attn::reference::Reference;

/// Sequence lengths the reference is timed at (the GPU benches use `suites::BENCH_LENS`).
const REFERENCE_LENS: [usize; 2] = [32, 64];

fn reference(c: &mut Criterion) {
    common::suite(c, "reference", &Reference, &common::lens(&REFERENCE_LENS));
}

criterion_group!(benches, reference);
criterion_main!(benches);
