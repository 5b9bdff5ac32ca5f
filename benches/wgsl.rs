//! Forward time and GFLOP/s of the WGSL kernels through the device-level API.
//!
//! Time is the wall time from submit to completion of one recorded call (lavapipe runs on
//! the CPU, so this is the kernels' time plus a submit); inputs stay on the device. GFLOP/s
//! use 4·B·Hq·Nq·Nk·d per pass (halved for causal). The grid is the issue's: d = 64 and 128,
//! Nq = Nk = 512 and 2048, f32 and f16, Softmax vs ContextScale vs KvSink, statistics Off vs
//! Heads. `OUTLIER_ATTN_BENCH_LENS=512` (a comma list) restricts the lengths.
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use outlier_attn::cases::{self, InputSpec};
use outlier_attn::wgsl::{DeviceArgs, DeviceSlice, DeviceTensor, WgslBackend};
use outlier_attn::{
    Backend, DType, Gate, GateGranularity, HostTensor, Params, Problem, Shape, Stat, StatsLevel,
    Variant,
};
use wgpu::util::DeviceExt;

const HEADS: usize = 8;

fn lens() -> Vec<usize> {
    std::env::var("OUTLIER_ATTN_BENCH_LENS")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![512, 2048])
}

fn slice(buffer: &wgpu::Buffer, dtype: DType, len: usize) -> DeviceSlice<'_> {
    DeviceSlice {
        buffer,
        dtype,
        offset: 0,
        len,
    }
}

fn param(uploaded: &Option<(wgpu::Buffer, DType, usize)>) -> Option<DeviceSlice<'_>> {
    uploaded.as_ref().map(|(b, dt, len)| slice(b, *dt, *len))
}

fn bench(c: &mut Criterion) {
    let backend = match WgslBackend::new() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("skipped: no wgsl backend: {e}");
            return;
        }
    };
    eprintln!("{}", backend.describe().join("\n  "));
    let device = backend.device();
    let queue = backend.queue();
    let mut group = c.benchmark_group("wgsl_forward");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    let variants = [
        Variant::Softmax,
        Variant::ContextScale {
            gate: Gate::TwoSigmoid,
            granularity: GateGranularity::PerHead,
        },
        Variant::KvSink,
    ];
    for n in lens() {
        for d in [64usize, 128] {
            for dtype in [DType::F32, DType::F16] {
                for variant in variants {
                    for stats in [StatsLevel::Off, StatsLevel::Heads] {
                        let problem = Problem::new(Shape::new(1, HEADS, HEADS, n, n, d), dtype)
                            .with_variant(variant)
                            .with_stats(stats);
                        let inputs = cases::random_inputs(&problem, &InputSpec::default());
                        let storage = wgpu::BufferUsages::STORAGE;
                        let upload = |t: &HostTensor| {
                            device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                                label: None,
                                contents: t.as_bytes(),
                                usage: storage,
                            })
                        };
                        let zeros = |elems: usize, dt: DType| {
                            device.create_buffer(&wgpu::BufferDescriptor {
                                label: None,
                                size: (elems * dt.size_bytes()).div_ceil(4) as u64 * 4,
                                usage: storage,
                                mapped_at_creation: false,
                            })
                        };
                        let (q, k, v) = (upload(&inputs.q), upload(&inputs.k), upload(&inputs.v));
                        let s = &problem.shape;
                        let o = zeros(s.batch * n * HEADS * d, dtype);
                        let lse = zeros(s.lse_len(), DType::F32);
                        let st = zeros(s.heads_total() * Stat::COUNT, DType::F32);
                        let params = inputs.params.map(|t| (upload(t), t.dtype(), t.len()));
                        let args = DeviceArgs {
                            q: DeviceTensor {
                                buffer: &q,
                                dtype,
                                layout: inputs.layouts.q,
                            },
                            k: DeviceTensor {
                                buffer: &k,
                                dtype,
                                layout: inputs.layouts.k,
                            },
                            v: DeviceTensor {
                                buffer: &v,
                                dtype,
                                layout: inputs.layouts.v,
                            },
                            o: DeviceTensor {
                                buffer: &o,
                                dtype,
                                layout: inputs.layouts.q,
                            },
                            lse: slice(&lse, DType::F32, s.lse_len()),
                            stats: stats
                                .heads()
                                .then(|| slice(&st, DType::F32, s.heads_total() * Stat::COUNT)),
                            key_mass: None,
                            params: Params {
                                k_sink: param(&params.k_sink),
                                v_sink: param(&params.v_sink),
                                v_bias: param(&params.v_bias),
                                sink_logits: param(&params.sink_logits),
                                gate: param(&params.gate),
                            },
                        };
                        let run = || {
                            let mut encoder = device.create_command_encoder(&Default::default());
                            backend
                                .attention()
                                .encode(&mut encoder, &problem, &args)
                                .expect("encode");
                            queue.submit([encoder.finish()]);
                            device
                                .poll(wgpu::PollType::wait_indefinitely())
                                .expect("poll");
                        };
                        group.throughput(Throughput::Elements(problem.flops() as u64));
                        let id = format!("{}/{dtype}/d{d}/n{n}/{}", variant.name(), stats.name());
                        // Pipelines are built by the first call, before any timing, and only for
                        // the configurations the command line's filter selects.
                        let mut built = false;
                        group.bench_function(id, |bencher| {
                            if !built {
                                run();
                                built = true;
                            }
                            bencher.iter_custom(|iters| {
                                let start = Instant::now();
                                for _ in 0..iters {
                                    run();
                                }
                                start.elapsed()
                            })
                        });
                    }
                }
            }
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
