//! The WGSL backend as an engine drives it: the engine's own wgpu device, buffers and command
//! encoder, with the K/V cache laid out for more tokens than a call reads. A prefill step
//! (causal attention over the prompt), then a decode step (the next token against the whole
//! cache), each with its per-head statistics read back.
//!
//! `cargo run --example wgpu_engine --features wgpu` (any Vulkan, Metal or DX12 adapter, or
//! lavapipe on the CPU).

use outlier_attn::wgsl::wgpu::{self, util::DeviceExt};
use outlier_attn::wgsl::{DeviceArgs, WgslAttention, WgslOptions};
use outlier_attn::{DType, HeadStats, Layout, Mask, Problem, Shape, Stat, StatsLevel};

const Q_HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 64;
const PROMPT: usize = 16;
/// Tokens the K/V cache holds: the prompt and one decoded token.
const CAPACITY: usize = PROMPT + 1;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result<()> {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&Default::default()))?;
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_features: adapter.features() & wgpu::Features::SUBGROUP,
        required_limits: adapter.limits(),
        ..Default::default()
    }))?;
    println!("adapter: {}", adapter.get_info().name);
    let attention = WgslAttention::new(&device, &queue, WgslOptions::default())?;

    // The cache the engine's K/V projections would have filled: [1, CAPACITY, Hkv, d].
    let cache_len = CAPACITY * KV_HEADS * HEAD_DIM;
    let k_cache = upload(&device, &values(cache_len, 1));
    let v_cache = upload(&device, &values(cache_len, 2));

    for (step, q_len, kv_len) in [("prefill", PROMPT, PROMPT), ("decode", 1, CAPACITY)] {
        let shape = Shape::new(1, Q_HEADS, KV_HEADS, q_len, kv_len, HEAD_DIM);
        let problem = Problem::new(shape, DType::F32)
            .with_mask(Mask::Causal)
            .with_stats(StatsLevel::Heads);
        let q = upload(&device, &values(q_len * Q_HEADS * HEAD_DIM, 3));
        let o = output(&device, q_len * Q_HEADS * HEAD_DIM);
        let lse = output(&device, shape.lse_len());
        let stats = output(&device, shape.heads_total() * Stat::COUNT);
        let mut args = DeviceArgs::dense(&problem, &q, &k_cache, &v_cache, &o, &lse)
            .with_stats(&problem, &stats);
        // K and V read the first `kv_len` tokens of the cache.
        args.k.layout = Layout::contiguous(CAPACITY, KV_HEADS, HEAD_DIM);
        args.v.layout = args.k.layout;

        let mut encoder = device.create_command_encoder(&Default::default());
        attention.encode(&mut encoder, &problem, &args)?;
        let heads = HeadStats::from_buffer(&read_back(&device, &queue, encoder, &stats)?);
        println!("{step}: {q_len} queries, {kv_len} keys");
        for (h, s) in heads.iter().enumerate() {
            println!(
                "  head {h}: first_key_mass {:.3}  max_score {:.2}  entropy {:.3}",
                s.first_key_mass, s.max_score, s.mean_entropy
            );
        }
    }
    Ok(())
}

/// Deterministic inputs in [-1, 1).
fn values(len: usize, seed: u32) -> Vec<f32> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(40_503)) % 2048)
        .map(|x| x as f32 / 1024.0 - 1.0)
        .collect()
}

fn upload(device: &wgpu::Device, data: &[f32]) -> wgpu::Buffer {
    device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: None,
        contents: bytemuck::cast_slice(data),
        usage: wgpu::BufferUsages::STORAGE,
    })
}

fn output(device: &wgpu::Device, len: usize) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: (len * 4) as u64,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    })
}

/// Copies `buffer` out at the end of `encoder`, submits it and waits for the f32 values.
fn read_back(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    mut encoder: wgpu::CommandEncoder,
    buffer: &wgpu::Buffer,
) -> Result<Vec<f32>> {
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: buffer.size(),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, buffer.size());
    queue.submit([encoder.finish()]);
    staging.slice(..).map_async(wgpu::MapMode::Read, |_| {});
    device.poll(wgpu::PollType::wait_indefinitely())?;
    let values = bytemuck::pod_collect_to_vec(&staging.get_mapped_range(..)?);
    Ok(values)
}
