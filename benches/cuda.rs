//! CUDA forward-pass throughput, in two groups:
//!
//! - `cuda_suite`: the cases of `outlier-attn bench` (`suites::bench_problems` at
//!   `suites::BENCH_LENS`, timed as the tool times them; see `common`).
//! - `cuda`: bf16, d = 64 and 128, causal and not, Nq = Nk = 1k..16k with 16 heads and
//!   B·N = 16k tokens (the shapes of the H200 comparison with PyTorch), plus the cost of
//!   `Heads` statistics and of ContextScale at d = 128.
//!
//! Timed with CUDA events around back-to-back launches on one stream (`iter_custom`). Each
//! shape also prints one `outlier-attn-bench` line (TFLOP/s, FLOPs by `Problem::flops`) and,
//! when `OUTLIER_ATTN_BENCH_OUT` names a file, appends it there as JSON for
//! scripts/h200/compare.py. Without a GPU it prints why and measures nothing.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

mod common;

use criterion::{Criterion, criterion_group, criterion_main};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaSlice, CudaStream};
use half::bf16;
use outlier_attn::cuda::{CudaAttention, CudaBackend, DeviceArgs, DeviceParams, Workspace, detect};
use outlier_attn::{
    DType, Gate, GateGranularity, Layouts, Mask, Problem, Shape, Stat, StatsLevel, Variant,
};

const TOKENS: usize = 16 * 1024;
const HEADS: usize = 16;

struct Buffers {
    q: CudaSlice<bf16>,
    k: CudaSlice<bf16>,
    v: CudaSlice<bf16>,
    o: CudaSlice<bf16>,
    lse: CudaSlice<f32>,
    stats: CudaSlice<f32>,
    gate: CudaSlice<bf16>,
}

/// Values in [-1, 1) from a fixed LCG: cheap for 16k x 16 x 128 elements.
fn fill(len: usize, seed: u64) -> Vec<bf16> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            bf16::from_f32(((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
        })
        .collect()
}

fn buffers(stream: &Arc<CudaStream>, shape: &Shape) -> Buffers {
    let n = shape.batch * shape.q_len * shape.q_heads * shape.head_dim;
    let up = |seed| stream.clone_htod(&fill(n, seed)).expect("upload");
    Buffers {
        q: up(1),
        k: up(2),
        v: up(3),
        o: stream.alloc_zeros(n).expect("alloc"),
        lse: stream.alloc_zeros(shape.lse_len()).expect("alloc"),
        stats: stream
            .alloc_zeros(shape.heads_total() * Stat::COUNT)
            .expect("alloc"),
        gate: stream
            .clone_htod(&fill(shape.batch * shape.q_len * shape.q_heads, 4))
            .expect("upload"),
    }
}

fn run(
    attn: &CudaAttention,
    stream: &Arc<CudaStream>,
    problem: &Problem,
    bufs: &mut Buffers,
    workspace: &mut Workspace,
) {
    let gate = matches!(problem.variant, Variant::ContextScale { .. }).then(|| bufs.gate.as_view());
    let args = DeviceArgs {
        q: bufs.q.as_view(),
        k: bufs.k.as_view(),
        v: bufs.v.as_view(),
        o: bufs.o.as_view_mut(),
        lse: bufs.lse.as_view_mut(),
        stats: problem.stats.heads().then(|| bufs.stats.as_view_mut()),
        key_mass: None,
        layouts: Layouts::contiguous(&problem.shape),
        params: DeviceParams {
            gate,
            ..DeviceParams::default()
        },
    };
    attn.forward(stream, problem, args, workspace)
        .expect("forward");
}

/// Seconds per forward pass over `iters` back-to-back launches, by CUDA events.
fn time(
    attn: &CudaAttention,
    stream: &Arc<CudaStream>,
    problem: &Problem,
    bufs: &mut Buffers,
    workspace: &mut Workspace,
    iters: u64,
) -> f64 {
    let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
    let start = stream.record_event(flags).expect("event");
    for _ in 0..iters {
        run(attn, stream, problem, bufs, workspace);
    }
    let end = stream.record_event(flags).expect("event");
    end.synchronize().expect("sync");
    start.elapsed_ms(&end).expect("elapsed") as f64 / 1e3 / iters as f64
}

fn label(problem: &Problem) -> String {
    let s = &problem.shape;
    format!(
        "{}/d{}/{}/n{}/stats-{}",
        problem.variant.name(),
        s.head_dim,
        if problem.mask == Mask::Causal {
            "causal"
        } else {
            "full"
        },
        s.q_len,
        problem.stats.name()
    )
}

fn report(problem: &Problem, seconds: f64) {
    let s = &problem.shape;
    let tflops = problem.flops() / seconds / 1e12;
    let line = format!(
        "{{\"variant\":\"{}\",\"d\":{},\"causal\":{},\"n\":{},\"batch\":{},\"heads\":{},\"stats\":\"{}\",\"ms\":{:.4},\"tflops\":{:.2}}}",
        problem.variant.name(),
        s.head_dim,
        problem.mask == Mask::Causal,
        s.q_len,
        s.batch,
        s.q_heads,
        problem.stats.name(),
        seconds * 1e3,
        tflops
    );
    println!("outlier-attn-bench {line}");
    if let Some(path) = std::env::var_os("OUTLIER_ATTN_BENCH_OUT")
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}

fn problems() -> Vec<Problem> {
    let mut out = Vec::new();
    for d in [64, 128] {
        for mask in [Mask::None, Mask::Causal] {
            for n in [1024, 4096, 8192, 16384] {
                let shape = Shape::new(TOKENS / n, HEADS, HEADS, n, n, d);
                out.push(Problem::new(shape, DType::Bf16).with_mask(mask));
            }
        }
    }
    // The costs the issue bounds: Heads statistics (<= 5 %) and ContextScale (<= 3 %).
    for mask in [Mask::None, Mask::Causal] {
        let base =
            Problem::new(Shape::new(4, HEADS, HEADS, 4096, 4096, 128), DType::Bf16).with_mask(mask);
        out.push(base.with_stats(StatsLevel::Heads));
        out.push(base.with_variant(Variant::ContextScale {
            gate: Gate::TwoSigmoid,
            granularity: GateGranularity::PerHead,
        }));
    }
    out
}

fn bench(c: &mut Criterion) {
    let ctx = match detect() {
        Ok(ctx) => ctx,
        Err(e) => return common::absent("cuda", &e),
    };
    match CudaBackend::new() {
        Ok(backend) => common::suite(
            c,
            "cuda_suite",
            &backend,
            &common::lens(&outlier_attn::suites::BENCH_LENS),
        ),
        Err(e) => return common::absent("cuda", &e),
    }
    let stream = ctx.new_stream().expect("stream");
    let attn = CudaAttention::new(ctx).expect("nvrtc");
    let mut workspace = Workspace::new();
    let mut group = c.benchmark_group("cuda");
    group.sample_size(10);
    for problem in problems() {
        let mut bufs = buffers(&stream, &problem.shape);
        // Warm-up: compiles (or loads) the module and settles the clocks.
        time(&attn, &stream, &problem, &mut bufs, &mut workspace, 3);
        report(
            &problem,
            time(&attn, &stream, &problem, &mut bufs, &mut workspace, 10),
        );
        group.bench_function(label(&problem), |b| {
            b.iter_custom(|iters| {
                Duration::from_secs_f64(
                    time(&attn, &stream, &problem, &mut bufs, &mut workspace, iters) * iters as f64,
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
