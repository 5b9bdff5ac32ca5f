//! A wgpu engine's attention layer with outlier-attn inside it. The engine opens its own device;
//! one command encoder holds its own QKV pass (writing the fused projection output
//! `[B, T, Hq + 2·Hkv, d]`), `WgslAttention` reading Q, K and V as three strided views of that
//! buffer, and its own output pass (reading O); it submits once and reads the result back.
//! tests/against_reference.rs holds the result to the f64 reference under the crate's parity
//! rule (on lavapipe in CI).

use outlier_attn::wgsl::{DeviceArgs, WgslAttention, WgslOptions};
use outlier_attn::{
    DType, HostInputs, HostOutputs, HostTensor, Layout, Mask, Problem, Shape, Stat, StatsLevel,
};
// `wgpu` is the engine's own dependency: the same crate outlier-attn is built against.

const BATCH: usize = 2;
const Q_HEADS: usize = 4;
const KV_HEADS: usize = 2;
const TOKENS: usize = 24;
const HEAD_DIM: usize = 32;
/// Heads per token in the fused QKV buffer.
const FUSED_HEADS: usize = Q_HEADS + 2 * KV_HEADS;
const WORKGROUP: u32 = 64;

/// The engine's QKV pass. `qkv_value` is the same function in Rust below; its values are
/// multiples of 1/1024 in [-1, 1), exact in f32, so the host rebuilds the very same inputs.
const WRITE_QKV_WGSL: &str = r#"
@group(0) @binding(0) var<storage, read_write> qkv: array<f32>;

fn qkv_value(i: u32) -> f32 {
    return f32(((i * 2654435761u) >> 13u) % 2048u) / 1024.0 - 1.0;
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x < arrayLength(&qkv)) {
        qkv[id.x] = qkv_value(id.x);
    }
}
"#;

/// The engine's output pass; stands in for the output projection: exactly 2·O.
const PROJECT_WGSL: &str = r#"
@group(0) @binding(0) var<storage, read> attn_o: array<f32>;
@group(0) @binding(1) var<storage, read_write> projected: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x < arrayLength(&projected)) {
        projected[id.x] = 2.0 * attn_o[id.x];
    }
}
"#;

fn qkv_value(i: usize) -> f64 {
    let h = ((i as u32).wrapping_mul(2_654_435_761) >> 13) % 2048;
    h as f64 / 1024.0 - 1.0
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// One run of the layer: what the engine computed and what it started from.
pub struct LayerRun {
    /// The adapter it ran on.
    pub adapter: String,
    /// The attention call inside the layer.
    pub problem: Problem,
    /// Q, K and V as the QKV pass wrote them, gathered dense on the host.
    pub inputs: HostInputs,
    /// O (the output pass's result, un-projected), LSE and statistics, as read back.
    pub outputs: HostOutputs,
}

/// Runs the layer once on the default adapter; `Ok(None)` when there is no adapter.
///
/// # Errors
/// A device that cannot be opened, a refusal of `WgslAttention`, a failed read-back.
pub fn run_layer() -> Result<Option<LayerRun>> {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let Ok(adapter) = pollster::block_on(instance.request_adapter(&Default::default())) else {
        return Ok(None);
    };
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("wgpu-engine"),
        required_features: adapter.features() & wgpu::Features::SUBGROUP,
        required_limits: adapter.limits(),
        ..Default::default()
    }))?;
    let attention = WgslAttention::new(&device, &queue, WgslOptions::default())?;

    let shape = Shape::new(BATCH, Q_HEADS, KV_HEADS, TOKENS, TOKENS, HEAD_DIM);
    let problem = Problem::new(shape, DType::F32)
        .with_mask(Mask::Causal)
        .with_stats(StatsLevel::Heads);
    let o_len = BATCH * TOKENS * Q_HEADS * HEAD_DIM;
    let storage = |label, len: usize| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: (len * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        })
    };
    let qkv = storage("qkv", BATCH * TOKENS * FUSED_HEADS * HEAD_DIM);
    let o = storage("o", o_len);
    let lse = storage("lse", shape.lse_len());
    let stats = storage("stats", shape.heads_total() * Stat::COUNT);
    let projected = storage("projected", o_len);

    let pass = |label: &str, source: &str, buffers: &[&wgpu::Buffer]| {
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(label),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(label),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        let entries: Vec<wgpu::BindGroupEntry> = (0..)
            .zip(buffers)
            .map(|(binding, b)| wgpu::BindGroupEntry {
                binding,
                resource: b.as_entire_binding(),
            })
            .collect();
        let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(label),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        (pipeline, group)
    };
    let write_qkv = pass("write_qkv", WRITE_QKV_WGSL, &[&qkv]);
    let project = pass("project", PROJECT_WGSL, &[&o, &projected]);
    let run_pass = |encoder: &mut wgpu::CommandEncoder, (pipeline, group): &_, len: u64| {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, group, &[]);
        pass.dispatch_workgroups((len / 4).div_ceil(WORKGROUP as u64) as u32, 1, 1);
    };

    // Q, K and V: head ranges of each token's row of the fused buffer.
    let fused = Layout::contiguous(TOKENS, FUSED_HEADS, HEAD_DIM);
    let at = |head: usize| Layout {
        offset: (head * HEAD_DIM) as u64,
        ..fused
    };
    let mut args =
        DeviceArgs::dense(&problem, &qkv, &qkv, &qkv, &o, &lse).with_stats(&problem, &stats);
    args.q.layout = at(0);
    args.k.layout = at(Q_HEADS);
    args.v.layout = at(Q_HEADS + KV_HEADS);

    let mut encoder = device.create_command_encoder(&Default::default());
    run_pass(&mut encoder, &write_qkv, qkv.size());
    attention.encode(&mut encoder, &problem, &args)?;
    run_pass(&mut encoder, &project, projected.size());
    let readback = [&projected, &lse, &stats];
    let total: u64 = readback.iter().map(|b| b.size()).sum();
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("read-back"),
        size: total,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut at_byte = 0;
    for b in readback {
        encoder.copy_buffer_to_buffer(b, 0, &staging, at_byte, b.size());
        at_byte += b.size();
    }
    queue.submit([encoder.finish()]);
    staging.slice(..).map_async(wgpu::MapMode::Read, |_| {});
    device.poll(wgpu::PollType::wait_indefinitely())?;
    let values: Vec<f32> = bytemuck::pod_collect_to_vec(&staging.get_mapped_range(..)?);
    let (projected, rest) = values.split_at(o_len);
    let (lse, stats) = rest.split_at(shape.lse_len());

    // Undo the output projection (exact: a division by 2).
    let outputs = HostOutputs {
        o: HostTensor::from(projected.iter().map(|x| x / 2.0).collect::<Vec<f32>>()),
        lse: lse.to_vec(),
        stats: Some(stats.to_vec()),
        key_mass: None,
    };
    Ok(Some(LayerRun {
        adapter: adapter.get_info().name,
        inputs: host_inputs(&problem),
        problem,
        outputs,
    }))
}

/// Dense Q, K, V gathered on the host from what the QKV pass wrote.
fn host_inputs(problem: &Problem) -> HostInputs {
    let gather = |first_head: usize, heads: usize| -> HostTensor {
        let mut out = Vec::with_capacity(BATCH * TOKENS * heads * HEAD_DIM);
        for b in 0..BATCH {
            for t in 0..TOKENS {
                for h in 0..heads {
                    let row = ((b * TOKENS + t) * FUSED_HEADS + first_head + h) * HEAD_DIM;
                    out.extend((0..HEAD_DIM).map(|c| qkv_value(row + c)));
                }
            }
        }
        HostTensor::from_f64(DType::F32, &out)
    };
    HostInputs::dense(
        problem,
        gather(0, Q_HEADS),
        gather(Q_HEADS, KV_HEADS),
        gather(Q_HEADS + KV_HEADS, KV_HEADS),
    )
}
