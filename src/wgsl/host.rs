//! The host level: adapter discovery that explains itself, and the [`Backend`] trait (upload,
//! run, read back), used by tests, tools and the demo.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ::wgpu::util::DeviceExt;

use super::device::{
    BACKEND, DeviceArgs, DeviceIndex, DeviceSlice, DeviceTensor, SharedAttention, WgslAttention,
    WgslOptions,
};
use crate::contract::{
    Backend, DType, Error, HostInputs, HostOutputs, HostTensor, Layout, Problem, Result,
    SeqIndices, TensorName,
};
use crate::parity;

/// NaN elements written after O's last element; they must still be NaN after a run.
const GUARD_ELEMENTS: usize = 8;

/// The WGSL backend on a wgpu adapter of its own: [`WgslAttention`] plus uploads and
/// read-backs, behind the [`Backend`] trait.
pub struct WgslBackend {
    attention: SharedAttention,
    device: ::wgpu::Device,
    queue: ::wgpu::Queue,
    info: ::wgpu::AdapterInfo,
    adapter_features: ::wgpu::Features,
    workgroup_storage: u32,
    options: WgslOptions,
    /// Errors wgpu raised outside an error scope (recorded, never a panic).
    uncaptured: Arc<Mutex<Vec<String>>>,
}

fn backend_error(message: impl Into<String>) -> Error {
    Error::Backend {
        backend: BACKEND.to_string(),
        message: message.into(),
    }
}

impl WgslBackend {
    /// Finds an adapter (the environment's `WGPU_BACKEND`, `WGPU_ADAPTER_NAME` and
    /// `WGPU_POWER_PREF` are honoured) and opens a device with the default options.
    ///
    /// # Errors
    /// [`Error::Backend`] when no adapter is found or the device cannot be opened.
    pub fn new() -> Result<WgslBackend> {
        Self::with_options(WgslOptions::default())
    }

    /// As [`new`](Self::new), with explicit options (`subgroups: false` forces the path
    /// without subgroup operations).
    ///
    /// # Errors
    /// [`Error::Backend`] when no adapter is found or the device cannot be opened.
    pub fn with_options(options: WgslOptions) -> Result<WgslBackend> {
        let instance = ::wgpu::Instance::new(
            ::wgpu::InstanceDescriptor::new_without_display_handle_from_env(),
        );
        let adapter = pollster::block_on(find_adapter(&instance))?;
        let adapter_features = adapter.features();
        // Only what a path uses: subgroups for the reductions, timestamps for the bench.
        let wanted = ::wgpu::Features::SUBGROUP | ::wgpu::Features::TIMESTAMP_QUERY;
        let required_features = adapter_features & wanted;
        let (device, queue) =
            pollster::block_on(adapter.request_device(&::wgpu::DeviceDescriptor {
                label: Some("outlier-attn"),
                required_features,
                // The adapter's own limits: WebGPU's defaults cap workgroup memory at 16 KiB.
                required_limits: adapter.limits(),
                ..Default::default()
            }))
            .map_err(|e| backend_error(format!("opening the device failed: {e}")))?;
        let uncaptured = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&uncaptured);
        device.on_uncaptured_error(Arc::new(move |e: ::wgpu::Error| {
            sink.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(e.to_string());
        }));
        let attention = Arc::new(WgslAttention::new(&device, &queue, options)?);
        Ok(WgslBackend {
            attention,
            workgroup_storage: device.limits().max_compute_workgroup_storage_size,
            device,
            queue,
            info: adapter.get_info(),
            adapter_features,
            options,
            uncaptured,
        })
    }

    /// The device-level engine this backend runs (for composing with other passes).
    pub fn attention(&self) -> &WgslAttention {
        &self.attention
    }

    /// The device this backend opened.
    pub fn device(&self) -> &::wgpu::Device {
        &self.device
    }

    /// The queue of that device.
    pub fn queue(&self) -> &::wgpu::Queue {
        &self.queue
    }

    /// The adapter's description.
    pub fn adapter_info(&self) -> &::wgpu::AdapterInfo {
        &self.info
    }

    fn upload(&self, label: &str, bytes: &[u8], usage: ::wgpu::BufferUsages) -> ::wgpu::Buffer {
        self.device
            .create_buffer_init(&::wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytes,
                usage: usage | ::wgpu::BufferUsages::STORAGE,
            })
    }

    fn take_uncaptured(&self) -> Result<()> {
        let mut errors = self
            .uncaptured
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if errors.is_empty() {
            return Ok(());
        }
        let message = errors.join("; ");
        errors.clear();
        Err(backend_error(message))
    }
}

/// The adapter named by `WGPU_ADAPTER_NAME` (the first whose name contains it, ignoring case;
/// none is an error listing the adapters there are), else wgpu's default adapter with
/// `WGPU_POWER_PREF` (high performance unless it says otherwise). `WGPU_BACKEND` was applied
/// to `instance` when it was created.
async fn find_adapter(instance: &::wgpu::Instance) -> Result<::wgpu::Adapter> {
    if let Ok(wanted) = std::env::var("WGPU_ADAPTER_NAME") {
        let adapters = instance.enumerate_adapters(::wgpu::Backends::all()).await;
        let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
        return adapters
            .into_iter()
            .find(|a| {
                a.get_info()
                    .name
                    .to_lowercase()
                    .contains(&wanted.to_lowercase())
            })
            .ok_or_else(|| {
                backend_error(format!(
                    "WGPU_ADAPTER_NAME={wanted:?} matches none of the adapters found: {names:?}"
                ))
            });
    }
    instance
        .request_adapter(&::wgpu::RequestAdapterOptions {
            power_preference: ::wgpu::PowerPreference::from_env()
                .unwrap_or(::wgpu::PowerPreference::HighPerformance),
            ..Default::default()
        })
        .await
        .map_err(|e| backend_error(format!("no wgpu adapter found: {e}")))
}

/// A dense f32 output of `len` elements at the start of `buffer`.
fn slice(buffer: &::wgpu::Buffer, len: usize) -> DeviceSlice<'_> {
    DeviceSlice {
        buffer,
        dtype: DType::F32,
        offset: 0,
        len,
    }
}

/// An uploaded parameter as a device slice.
fn param_slice(uploaded: &Option<(::wgpu::Buffer, DType, usize)>) -> Option<DeviceSlice<'_>> {
    uploaded.as_ref().map(|(buffer, dtype, len)| DeviceSlice {
        buffer,
        dtype: *dtype,
        offset: 0,
        len: *len,
    })
}

/// O's layout on the device: the caller's `layouts.o` when it is a valid output layout (so
/// that strided writes are exercised), else contiguous in Q's sequence layout.
fn output_layout(problem: &Problem, inputs: &HostInputs) -> Layout {
    let dims = problem.tensor_dims(TensorName::O);
    let o = inputs.layouts.o;
    if o.strides.channel == 1 && o.is_non_overlapping(dims) && o.reach(dims).is_some() {
        o
    } else {
        Layout::contiguous(dims[1], dims[2], dims[3])
    }
}

/// One host-level call's buffers on the device: the inputs uploaded, the outputs NaN-poisoned
/// (O with guard elements after its view), so that an element the kernels never write, or one
/// they write outside O, is caught.
struct Resident {
    q: ::wgpu::Buffer,
    k: ::wgpu::Buffer,
    v: ::wgpu::Buffer,
    o: ::wgpu::Buffer,
    o_layout: Layout,
    /// Elements of O's buffer: its view's reach plus the guard.
    o_len: usize,
    lse: ::wgpu::Buffer,
    stats: Option<::wgpu::Buffer>,
    key_mass: Option<::wgpu::Buffer>,
    params: crate::contract::Params<(::wgpu::Buffer, DType, usize)>,
    indices: SeqIndices<::wgpu::Buffer>,
    poisoned: HostOutputs,
}

impl Resident {
    /// The device-level arguments over these buffers, with the inputs' layouts.
    fn args(&self, dtype: DType, inputs: &HostInputs) -> DeviceArgs<'_> {
        let tensor = |buffer, layout| DeviceTensor {
            buffer,
            dtype,
            layout,
        };
        DeviceArgs {
            q: tensor(&self.q, inputs.layouts.q),
            k: tensor(&self.k, inputs.layouts.k),
            v: tensor(&self.v, inputs.layouts.v),
            o: tensor(&self.o, self.o_layout),
            lse: slice(&self.lse, self.poisoned.lse.len()),
            stats: self
                .stats
                .as_ref()
                .map(|b| slice(b, self.poisoned.stats.as_ref().map_or(0, Vec::len))),
            key_mass: self
                .key_mass
                .as_ref()
                .map(|b| slice(b, self.poisoned.key_mass.as_ref().map_or(0, Vec::len))),
            params: crate::contract::Params {
                k_sink: param_slice(&self.params.k_sink),
                v_sink: param_slice(&self.params.v_sink),
                v_bias: param_slice(&self.params.v_bias),
                sink_logits: param_slice(&self.params.sink_logits),
                gate: param_slice(&self.params.gate),
            },
            indices: SeqIndices {
                cu_seqlens_q: self.indices.cu_seqlens_q.as_ref().map(DeviceIndex::whole),
                cu_seqlens_k: self.indices.cu_seqlens_k.as_ref().map(DeviceIndex::whole),
                seqlens_k: self.indices.seqlens_k.as_ref().map(DeviceIndex::whole),
                block_table: self.indices.block_table.as_ref().map(DeviceIndex::whole),
            },
        }
    }
}

impl WgslBackend {
    /// Uploads validated host inputs, with `indices` as the index tensors the device sees,
    /// and allocates poisoned outputs.
    fn resident(
        &self,
        problem: &Problem,
        inputs: &HostInputs,
        indices: &SeqIndices<Vec<i32>>,
    ) -> Resident {
        let read_only = ::wgpu::BufferUsages::empty();
        let copy_src = ::wgpu::BufferUsages::COPY_SRC;
        let poisoned = parity::poisoned_outputs(problem);
        let o_layout = output_layout(problem, inputs);
        let o_reach = o_layout
            .reach(problem.tensor_dims(TensorName::O))
            .unwrap_or(0) as usize;
        let o_len = o_reach + GUARD_ELEMENTS;
        let o_init = HostTensor::filled(problem.dtype, o_len, f64::NAN);
        Resident {
            q: self.upload("q", inputs.q.as_bytes(), read_only),
            k: self.upload("k", inputs.k.as_bytes(), read_only),
            v: self.upload("v", inputs.v.as_bytes(), read_only),
            o: self.upload("o", o_init.as_bytes(), copy_src),
            o_layout,
            o_len,
            lse: self.upload("lse", bytemuck::cast_slice(&poisoned.lse), copy_src),
            stats: poisoned
                .stats
                .as_ref()
                .map(|x| self.upload("stats", bytemuck::cast_slice(x), copy_src)),
            key_mass: poisoned
                .key_mass
                .as_ref()
                .map(|x| self.upload("key_mass", bytemuck::cast_slice(x), copy_src)),
            params: inputs.params.map(|t| {
                (
                    self.upload("param", t.as_bytes(), read_only),
                    t.dtype(),
                    t.len(),
                )
            }),
            indices: indices.map(|x| self.upload("index", bytemuck::cast_slice(x), read_only)),
            poisoned,
        }
    }

    /// Runs a validated call with `indices` as the index tensors the device sees (the
    /// inputs' own for [`Backend::forward`]).
    fn run(
        &self,
        problem: &Problem,
        inputs: &HostInputs,
        indices: &SeqIndices<Vec<i32>>,
    ) -> Result<HostOutputs> {
        let s = &problem.shape;
        let dtype = problem.dtype;
        let resident = self.resident(problem, inputs, indices);
        let Resident {
            o,
            o_layout,
            o_len,
            lse,
            stats,
            key_mass,
            poisoned,
            ..
        } = &resident;
        let (o_layout, o_len) = (*o_layout, *o_len);
        let args = resident.args(dtype, inputs);

        // The host level may wait: pipeline builds and validation report through error scopes.
        self.attention.prepare(problem)?;
        let scope = self
            .device
            .push_error_scope(::wgpu::ErrorFilter::Validation);
        let mut encoder = self
            .device
            .create_command_encoder(&::wgpu::CommandEncoderDescriptor {
                label: Some("outlier-attn host call"),
            });
        self.attention.encode(&mut encoder, problem, &args)?;

        // One read-back buffer: O (with its guard), LSE, stats, key mass, each 4-byte aligned.
        let parts: Vec<&::wgpu::Buffer> = [Some(o), Some(lse), stats.as_ref(), key_mass.as_ref()]
            .into_iter()
            .flatten()
            .collect();
        let total: u64 = parts.iter().map(|b| b.size()).sum();
        let readback = self.device.create_buffer(&::wgpu::BufferDescriptor {
            label: Some("outlier-attn read-back"),
            size: total,
            usage: ::wgpu::BufferUsages::MAP_READ | ::wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut at = 0;
        let mut ranges = Vec::new();
        for b in &parts {
            encoder.copy_buffer_to_buffer(b, 0, &readback, at, b.size());
            ranges.push(at as usize..(at + b.size()) as usize);
            at += b.size();
        }
        self.queue.submit([encoder.finish()]);
        readback.slice(..).map_async(::wgpu::MapMode::Read, |_| {});
        self.wait()?;
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(backend_error(format!("the forward call failed: {e}")));
        }
        self.take_uncaptured()?;
        let bytes = readback
            .get_mapped_range(..)
            .map_err(|e| backend_error(format!("reading back failed: {e}")))?
            .to_vec();
        readback.unmap();

        let f32s = |r: &std::ops::Range<usize>, len: usize| -> Vec<f32> {
            bytemuck::pod_collect_to_vec::<u8, f32>(&bytes[r.clone()])[..len].to_vec()
        };
        let o_all = HostTensor::from_bytes(
            dtype,
            &bytes[ranges[0].start..][..o_len * dtype.size_bytes()],
        )
        .ok_or_else(|| backend_error("O read back with a partial element"))?;
        // Gather O dense and check that nothing outside its view changed.
        let mut in_view = vec![false; o_len];
        let [outer, tokens, _, _] = problem.tensor_dims(TensorName::O);
        let mut o_dense = HostTensor::filled(dtype, outer * tokens * s.q_heads * s.head_dim, 0.0);
        let dense = Layout::contiguous(tokens, s.q_heads, s.head_dim);
        for b in 0..outer {
            for i in 0..tokens {
                for h in 0..s.q_heads {
                    for c in 0..s.head_dim {
                        let at = o_layout.index(b, i, h, c);
                        in_view[at] = true;
                        o_dense.set(dense.index(b, i, h, c), o_all.get(at).unwrap_or(f64::NAN));
                    }
                }
            }
        }
        if let Some(at) =
            (0..o_len).find(|&i| !in_view[i] && !o_all.get(i).is_some_and(f64::is_nan))
        {
            return Err(backend_error(format!(
                "the kernel wrote element {at} of O's buffer, outside O's view"
            )));
        }
        let mut next = 1;
        let lse_out = f32s(&ranges[next], problem.lse_len());
        next += 1;
        let stats_out = poisoned.stats.as_ref().map(|x| {
            let r = f32s(&ranges[next], x.len());
            next += 1;
            r
        });
        let key_mass_out = poisoned
            .key_mass
            .as_ref()
            .map(|x| f32s(&ranges[next], x.len()));
        Ok(HostOutputs {
            o: o_dense,
            lse: lse_out,
            stats: stats_out,
            key_mass: key_mass_out,
        })
    }

    /// As [`Backend::forward`], with the index tensors the device sees replaced by
    /// `device_indices` after the host checks passed on the inputs' own: what an engine's
    /// device-level call receives when its index tensors are wrong. The kernels must still
    /// stay inside every buffer and write the rows that used a bad entry as NaN (crate docs,
    /// "Bad index tensors on the device"); tests hold them to it.
    ///
    /// # Errors
    /// As [`Backend::forward`]; [`Error::Size`] when `device_indices` differ from the inputs'
    /// in length.
    pub fn forward_with_device_indices(
        &self,
        problem: &Problem,
        inputs: &HostInputs,
        device_indices: &SeqIndices<Vec<i32>>,
    ) -> Result<HostOutputs> {
        inputs.validate(problem)?;
        self.run(problem, inputs, device_indices)
    }

    fn wait(&self) -> Result<()> {
        self.device
            .poll(::wgpu::PollType::wait_indefinitely())
            .map_err(|e| backend_error(format!("waiting for the device failed: {e}")))?;
        Ok(())
    }
}

impl Backend for WgslBackend {
    fn name(&self) -> String {
        format!("wgsl ({}, {:?})", self.info.name, self.info.backend)
    }

    fn describe(&self) -> Vec<String> {
        let has = |f: ::wgpu::Features| self.adapter_features.contains(f);
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        vec![
            self.name(),
            format!(
                "adapter: {} ({:?}, driver {} {})",
                self.info.name, self.info.device_type, self.info.driver, self.info.driver_info
            ),
            format!(
                "SUBGROUP: {} (sizes {}..={}); keys reach the lanes by {} (options.subgroups = {})",
                yes_no(has(::wgpu::Features::SUBGROUP)),
                self.info.subgroup_min_size,
                self.info.subgroup_max_size,
                if self.attention.uses_subgroups() {
                    "subgroup shuffles"
                } else {
                    "workgroup-memory broadcasts"
                },
                self.options.subgroups
            ),
            format!(
                "TIMESTAMP_QUERY: {}; benchmarks time {}",
                yes_no(has(::wgpu::Features::TIMESTAMP_QUERY)),
                if self
                    .device
                    .features()
                    .contains(::wgpu::Features::TIMESTAMP_QUERY)
                {
                    "the compute pass with the device's timestamps"
                } else {
                    "host wall time"
                }
            ),
            format!(
                "SHADER_F16: {}; not needed: f16 and bf16 are read and written as packed 32-bit words on every adapter",
                yes_no(has(::wgpu::Features::SHADER_F16))
            ),
            format!(
                "workgroup memory: {} bytes; K/V tile of the forward pass: {} keys at d = 64, {} at d = 128, {} at d = 256",
                self.workgroup_storage,
                self.attention.forward_tile(64).unwrap_or(0),
                self.attention.forward_tile(128).unwrap_or(0),
                self.attention.forward_tile(256).unwrap_or(0),
            ),
            format!(
                "split-KV: {:?} (Auto splits {})",
                self.attention.split_kv(),
                if self.attention.loop_iteration_limit().is_some() {
                    "only a decode past the loop budget"
                } else {
                    "decodes whose workgroups leave most of the device idle"
                }
            ),
        ]
    }

    fn forward(&self, problem: &Problem, inputs: &HostInputs) -> Result<HostOutputs> {
        // Refuse bad host inputs before anything is uploaded.
        inputs.validate(problem)?;
        self.run(problem, inputs, &inputs.indices)
    }
    /// Timestamps around the call's compute pass ([`WgslAttention::encode_timed`]), one
    /// submission per pass with the device idle in between, inputs resident. `Ok(None)` when
    /// the device has no `TIMESTAMP_QUERY`.
    fn device_times(
        &self,
        problem: &Problem,
        inputs: &HostInputs,
        warmup: usize,
        reps: usize,
    ) -> Result<Option<Vec<Duration>>> {
        if !self
            .device
            .features()
            .contains(::wgpu::Features::TIMESTAMP_QUERY)
        {
            return Ok(None);
        }
        inputs.validate(problem)?;
        self.attention.prepare(problem)?;
        let resident = self.resident(problem, inputs, &inputs.indices);
        let args = resident.args(problem.dtype, inputs);
        let queries = self.device.create_query_set(&::wgpu::QuerySetDescriptor {
            label: Some("outlier-attn timestamps"),
            ty: ::wgpu::QueryType::Timestamp,
            count: 2,
        });
        // Each pass's two timestamps resolve to their own aligned slot.
        let slot = ::wgpu::QUERY_RESOLVE_BUFFER_ALIGNMENT;
        let bytes = slot * reps.max(1) as u64;
        let resolved = self.device.create_buffer(&::wgpu::BufferDescriptor {
            label: Some("outlier-attn timestamps resolved"),
            size: bytes,
            usage: ::wgpu::BufferUsages::QUERY_RESOLVE | ::wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let readback = self.device.create_buffer(&::wgpu::BufferDescriptor {
            label: Some("outlier-attn timestamps read-back"),
            size: bytes,
            usage: ::wgpu::BufferUsages::MAP_READ | ::wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        for i in 0..warmup + reps {
            let mut encoder =
                self.device
                    .create_command_encoder(&::wgpu::CommandEncoderDescriptor {
                        label: Some("outlier-attn timed call"),
                    });
            let writes = ::wgpu::ComputePassTimestampWrites {
                query_set: &queries,
                beginning_of_pass_write_index: Some(0),
                end_of_pass_write_index: Some(1),
            };
            self.attention
                .encode_timed(&mut encoder, problem, &args, Some(writes))?;
            if let Some(rep) = i.checked_sub(warmup) {
                encoder.resolve_query_set(&queries, 0..2, &resolved, rep as u64 * slot);
            }
            self.queue.submit([encoder.finish()]);
            self.wait()?;
        }
        let mut encoder = self.device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(&resolved, 0, &readback, 0, bytes);
        self.queue.submit([encoder.finish()]);
        readback.slice(..).map_async(::wgpu::MapMode::Read, |_| {});
        self.wait()?;
        self.take_uncaptured()?;
        let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(
            &readback
                .get_mapped_range(..)
                .map_err(|e| backend_error(format!("reading the timestamps failed: {e}")))?,
        );
        readback.unmap();
        let ns_per_tick = f64::from(self.queue.get_timestamp_period());
        let per_slot = (slot / 8) as usize;
        (0..reps)
            .map(|rep| {
                let (begin, end) = (ticks[rep * per_slot], ticks[rep * per_slot + 1]);
                if end < begin {
                    return Err(backend_error(format!(
                        "timestamps out of order: the pass ended at tick {end}, before it began at {begin}"
                    )));
                }
                Ok(Duration::from_secs_f64((end - begin) as f64 * ns_per_tick * 1e-9))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
}
