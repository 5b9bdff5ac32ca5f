//! CUDA forward-pass throughput, in two groups:
//!
//! - `cuda_suite`: the cases of `outlier-attn bench` (`suites::bench_problems` at
//!   `suites::BENCH_LENS`, timed as the tool times them; see `common`).
//! - `cuda`: bf16 and f16, d = 64 and 128, causal and not, Nq = Nk = 1k..16k with 16 heads
//!   and B·N = 16k tokens (the shapes of the H200 comparison with PyTorch), then at bf16,
//!   d = 128, N = 4k, causal and not: `Heads`, `HeadsAndKeys`, and every other variant, for
//!   their cost over plain Softmax.
//!
//! Timed with CUDA events around back-to-back launches on one stream (`iter_custom`). Each
//! shape also prints one `outlier-attn-bench` line (TFLOP/s, FLOPs by `Problem::flops`) and,
//! when `OUTLIER_ATTN_BENCH_OUT` names a file, appends it there as JSON for
//! scripts/h200/compare.py. Without a GPU it prints why and measures nothing.

use std::sync::Arc;
use std::time::Duration;

mod common;

use criterion::{Criterion, criterion_group, criterion_main};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaSlice, CudaStream};
use half::{bf16, f16};
use outlier_attn::cuda::{
    CudaAttention, CudaBackend, CudaElement, DeviceArgs, DeviceParams, Workspace, detect,
};
use outlier_attn::{
    DType, Layouts, Mask, Problem, SeqIndices, Shape, Stat, StatsLevel, TensorName, Variant,
};

const TOKENS: usize = 16 * 1024;
const HEADS: usize = 16;

/// One shape's device buffers, every parameter a variant may read included.
struct Buffers<T> {
    q: CudaSlice<T>,
    k: CudaSlice<T>,
    v: CudaSlice<T>,
    o: CudaSlice<T>,
    lse: CudaSlice<f32>,
    stats: CudaSlice<f32>,
    key_mass: CudaSlice<f32>,
    gate: CudaSlice<T>,
    /// k′, v′ (also ValueBias's bias), θ.
    k_sink: CudaSlice<f32>,
    v_sink: CudaSlice<f32>,
    sink_logits: CudaSlice<f32>,
}

/// Values in [-1, 1) (benches/common).
fn fill(len: usize, seed: u64) -> Vec<f32> {
    common::lcg_fill(len, seed)
}

fn buffers<T: CudaElement + From32>(stream: &Arc<CudaStream>, shape: &Shape) -> Buffers<T> {
    let n = shape.batch * shape.q_len * shape.q_heads * shape.head_dim;
    let up = |len, seed| {
        let host: Vec<T> = fill(len, seed).into_iter().map(T::from_f32).collect();
        stream.clone_htod(&host).expect("upload")
    };
    let up_f32 = |len, seed| stream.clone_htod(&fill(len, seed)).expect("upload");
    let params = shape.q_heads * shape.head_dim;
    Buffers {
        q: up(n, 1),
        k: up(n, 2),
        v: up(n, 3),
        o: stream.alloc_zeros(n).expect("alloc"),
        lse: stream.alloc_zeros(shape.lse_len()).expect("alloc"),
        stats: stream
            .alloc_zeros(shape.heads_total() * Stat::COUNT)
            .expect("alloc"),
        key_mass: stream
            .alloc_zeros(shape.heads_total() * shape.kv_len)
            .expect("alloc"),
        gate: up(shape.batch * shape.q_len * shape.q_heads, 4),
        k_sink: up_f32(params, 5),
        v_sink: up_f32(params, 6),
        sink_logits: up_f32(shape.q_heads, 7),
    }
}

/// f32 to the element type (half's constructors, behind one name).
trait From32 {
    fn from_f32(x: f32) -> Self;
}
impl From32 for bf16 {
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
}
impl From32 for f16 {
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
}

fn run<T: CudaElement>(
    attn: &CudaAttention,
    stream: &Arc<CudaStream>,
    problem: &Problem,
    bufs: &mut Buffers<T>,
    workspace: &mut Workspace,
) {
    let wants = |name| problem.variant.params().contains(&name);
    let args = DeviceArgs {
        q: bufs.q.as_view(),
        k: bufs.k.as_view(),
        v: bufs.v.as_view(),
        o: bufs.o.as_view_mut(),
        lse: Some(bufs.lse.as_view_mut()),
        stats: problem.stats.heads().then(|| bufs.stats.as_view_mut()),
        key_mass: problem.stats.keys().then(|| bufs.key_mass.as_view_mut()),
        layouts: Layouts::contiguous(&problem.shape),
        params: DeviceParams {
            k_sink: wants(TensorName::KSink).then(|| bufs.k_sink.as_view()),
            v_sink: wants(TensorName::VSink).then(|| bufs.v_sink.as_view()),
            v_bias: wants(TensorName::VBias).then(|| bufs.v_sink.as_view()),
            sink_logits: wants(TensorName::SinkLogits).then(|| bufs.sink_logits.as_view()),
            gate: wants(TensorName::Gate).then(|| bufs.gate.as_view()),
        },
        indices: SeqIndices::none(),
    };
    attn.forward(stream, problem, args, workspace)
        .expect("forward");
}

/// Seconds per forward pass over `iters` back-to-back launches, by CUDA events.
fn time<T: CudaElement>(
    attn: &CudaAttention,
    stream: &Arc<CudaStream>,
    problem: &Problem,
    bufs: &mut Buffers<T>,
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
        "{}/{}/d{}/{}/n{}/stats-{}",
        problem.dtype,
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
        "{{\"dtype\":\"{}\",\"variant\":\"{}\",\"d\":{},\"causal\":{},\"n\":{},\"batch\":{},\"heads\":{},\"stats\":\"{}\",\"ms\":{:.4},\"tflops\":{:.2}}}",
        problem.dtype,
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
    common::append_json(&line);
}

fn problems() -> Vec<Problem> {
    let mut out = Vec::new();
    for dtype in [DType::Bf16, DType::F16] {
        for d in [64, 128] {
            for mask in [Mask::None, Mask::Causal] {
                for n in [1024, 4096, 8192, 16384] {
                    let shape = Shape::new(TOKENS / n, HEADS, HEADS, n, n, d);
                    out.push(Problem::new(shape, dtype).with_mask(mask));
                }
            }
        }
    }
    // The costs the issue bounds: Heads (<= 5 %), HeadsAndKeys (<= 60 %), ContextScale and
    // LogitSink (<= 3 %); the other variants for the record.
    for mask in [Mask::None, Mask::Causal] {
        let base =
            Problem::new(Shape::new(4, HEADS, HEADS, 4096, 4096, 128), DType::Bf16).with_mask(mask);
        out.push(base.with_stats(StatsLevel::Heads));
        out.push(base.with_stats(StatsLevel::HeadsAndKeys));
        for variant in Variant::all_default().into_iter().skip(1) {
            out.push(base.with_variant(variant));
        }
    }
    out
}

/// Times `problem` (a warm-up, then ten passes for the report line) and registers it with
/// criterion.
fn measure<T: CudaElement + From32>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    attn: &CudaAttention,
    stream: &Arc<CudaStream>,
    problem: &Problem,
    workspace: &mut Workspace,
) {
    let mut bufs = buffers::<T>(stream, &problem.shape);
    // Warm-up: compiles (or loads) the module and settles the clocks.
    time(attn, stream, problem, &mut bufs, workspace, 3);
    report(
        problem,
        time(attn, stream, problem, &mut bufs, workspace, 10),
    );
    group.bench_function(label(problem), |b| {
        b.iter_custom(|iters| {
            Duration::from_secs_f64(
                time(attn, stream, problem, &mut bufs, workspace, iters) * iters as f64,
            )
        })
    });
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
        match problem.dtype {
            DType::F16 => measure::<f16>(&mut group, &attn, &stream, &problem, &mut workspace),
            _ => measure::<bf16>(&mut group, &attn, &stream, &problem, &mut workspace),
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
