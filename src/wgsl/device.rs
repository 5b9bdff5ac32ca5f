//! The device-level entry for engines: the caller's `wgpu::Device`, buffers and
//! `CommandEncoder`; this module records compute passes and allocates only what it cannot reuse.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::kernel::{
    BLOCK_M, BLOCK_M_SHORT, COMBINE_THREADS, CPU_BLOCK_M, CPU_MAX_LANE_QUADS, KV_DENSE, KV_LENS,
    KV_PACKED, KV_PAGED, KV_PARTIAL_LEN, Kernel, KernelKind, LAVAPIPE_LOOP_ITERATIONS, LoopTrips,
    MAX_LANE_QUADS, PARTIAL_LEN, Params, ROW_STATE_LEN, SEQ_LEN, SEQS_THREADS, SHUFFLE_TILE,
    SPLIT_HEAD_LEN, WORKGROUP_ROUND, key_mass_keys_per_lane, row_lanes, tile_rows, window_uniforms,
};
use crate::contract::{
    Args, BufferArg, DType, EngineFeature, Error, KvSeqs, Layout, Params as VariantParams, Problem,
    QuerySeqs, Result, SeqIndices, SplitKv, TensorArg, TensorName, Validated, Variant,
    heuristic_splits, validate,
};

/// The backend's name in errors.
pub(crate) const BACKEND: &str = "wgsl";

/// The engine-shaped features of DESIGN.md section 6 these kernels implement.
const SUPPORTED: &[EngineFeature] = &[
    EngineFeature::Window,
    EngineFeature::PackedQueries,
    EngineFeature::KeyLengths,
    EngineFeature::PackedKeys,
    EngineFeature::PagedKv,
];

/// A strided `[B, N, H, d]` tensor in a caller's buffer.
#[derive(Clone, Copy, Debug)]
pub struct DeviceTensor<'a> {
    /// The buffer; needs `BufferUsages::STORAGE`.
    pub buffer: &'a ::wgpu::Buffer,
    /// The element type.
    pub dtype: DType,
    /// Offset and strides, in elements from the start of the buffer.
    pub layout: Layout,
}

/// A dense run of elements in a caller's buffer (LSE, statistics, key mass, parameters).
#[derive(Clone, Copy, Debug)]
pub struct DeviceSlice<'a> {
    /// The buffer; needs `BufferUsages::STORAGE`.
    pub buffer: &'a ::wgpu::Buffer,
    /// The element type (f32 except for the gate z, which has the problem's dtype).
    pub dtype: DType,
    /// Offset of the first element, in elements from the start of the buffer.
    pub offset: u64,
    /// Number of elements.
    pub len: usize,
}

/// A dense run of i32 elements in a caller's buffer: one of the index tensors of DESIGN.md
/// section 6 (`cu_seqlens_q`, `cu_seqlens_k`, `seqlens_k`, `block_table`).
///
/// Their values stay on the device and are never checked by the host: the kernels clamp every
/// index they read into the buffers they were given and write the rows that used a bad entry
/// as NaN (crate docs, "Bad index tensors on the device").
#[derive(Clone, Copy, Debug)]
pub struct DeviceIndex<'a> {
    /// The buffer; needs `BufferUsages::STORAGE`.
    pub buffer: &'a ::wgpu::Buffer,
    /// Offset of the first element, in elements from the start of the buffer.
    pub offset: u64,
    /// Number of elements.
    pub len: usize,
}

/// The buffers of one call, in the problem's sequence layout ([`Problem::tensor_dims`]).
#[derive(Clone, Debug)]
pub struct DeviceArgs<'a> {
    /// Q `[B, Nq, Hq, d]`, or `[total_q, Hq, d]` packed.
    pub q: DeviceTensor<'a>,
    /// K `[B, Nk, Hkv, d]`, `[total_k, Hkv, d]` packed, `[pages, page_size, Hkv, d]` paged.
    pub k: DeviceTensor<'a>,
    /// V, shaped as K.
    pub v: DeviceTensor<'a>,
    /// O, shaped as Q, written.
    pub o: DeviceTensor<'a>,
    /// LSE `[B, Hq, Nq]` (`[Hq, total_q]` for packed Q), f32, written.
    pub lse: DeviceSlice<'a>,
    /// Statistics `[B, Hq, Stat::COUNT]`, f32, written; present iff the level asks for them.
    pub stats: Option<DeviceSlice<'a>>,
    /// Key mass ([`Problem::key_mass_len`]), f32, written; present iff the level is
    /// `HeadsAndKeys`.
    pub key_mass: Option<DeviceSlice<'a>>,
    /// The variant's learned tensors.
    pub params: VariantParams<DeviceSlice<'a>>,
    /// The index tensors the sequence layout reads ([`Sequences::index_tensors`]); none for
    /// a dense call.
    ///
    /// [`Sequences::index_tensors`]: crate::Sequences::index_tensors
    pub indices: SeqIndices<DeviceIndex<'a>>,
}

/// Which kernel paths to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WgslOptions {
    /// Let the forward kernel's lanes exchange keys by subgroup shuffles when the device has
    /// `Features::SUBGROUP` (default `true`); `false` forces the workgroup-memory path.
    pub subgroups: bool,
    /// Split-KV for decode (default [`SplitKv::Auto`]); see the module docs for where the
    /// kernels split and what `Auto` chooses.
    pub split_kv: SplitKv,
    /// Query rows each lane group of the forward kernel serves (register blocking; default
    /// `None`: the adapter's choice, [`CPU_ROW_BLOCKS`] by the call's size on a CPU adapter,
    /// else 1). `Some(n)`, n from 1 to [`MAX_ROW_BLOCK`], forces n for every call but
    /// decode's short workgroups. Each row computes the same bits whatever n: it changes which
    /// lanes compute a row, not what they compute.
    pub row_block: Option<u32>,
}

impl Default for WgslOptions {
    fn default() -> Self {
        WgslOptions {
            subgroups: true,
            split_kv: SplitKv::Auto,
            row_block: None,
        }
    }
}

/// The compute units [`SplitKv::Auto`] fills on a GPU adapter (wgpu does not report the
/// count): a mid-range discrete GPU's. The heuristic splits a decode whose workgroups are
/// fewer than 80 % of them.
pub const TYPICAL_COMPUTE_UNITS: u32 = 64;

/// Query rows each forward lane group serves on a CPU adapter (register blocking,
/// `ROW_BLOCK` of forward.wgsl), by the size of the call: pairs of (the fewest folded query
/// rows per (sequence, kv head), rows per lane group), the first pair a call reaches applies,
/// and a smaller call keeps one row. On a CPU adapter every workgroup-memory load and store is
/// a loop over the SIMD lanes (lavapipe's gallivm), so the loads of the K/V tile, not the
/// FMAs, bound the kernel, and a key fetched once for n rows divides them by n; registers
/// spill to the stack cheaply. Each pair leaves a call at least 2 (d <= 64) workgroups per
/// (sequence, kv head) for the CPU's threads, keeps small calls (and decode) on the pipelines
/// that build fastest, and gives four rows, whose pipelines build 2 to 4 times slower than
/// one row's, only to calls whose run is long enough to repay it (BENCHMARKS.md, "Settling
/// loops"). GPUs keep one row per lane group, whose registers it already fills.
pub const CPU_ROW_BLOCKS: [(usize, u32); 2] = [(1024, 4), (256, 2)];

/// The most rows per lane group [`WgslOptions::row_block`] may ask for (each doubles the code
/// written out per key, and the pipeline's build time with it).
pub const MAX_ROW_BLOCK: u32 = 4;

/// Fused attention on a caller's wgpu device: pipelines cached per specialisation, a scratch
/// buffer reused across calls, passes recorded into the caller's encoder.
///
/// [`encode`](Self::encode) validates, writes the call's uniforms into the next slot of a ring
/// (`Queue::write_buffer`: they reach the device with the next submission, before its
/// commands), records and returns; it never waits for the device. Per call it creates only the
/// bind groups, which name the call's own buffers. The ring has [`UNIFORM_SLOTS`] slots: up to
/// that many calls may be recorded between two submissions.
pub struct WgslAttention {
    device: ::wgpu::Device,
    queue: ::wgpu::Queue,
    /// The shuffle path: chunks of this many lanes (the adapter's smallest subgroup size), in
    /// workgroups whose size is a multiple of `subgroup_max`.
    shuffle_lanes: Option<u32>,
    subgroup_max: u32,
    /// Rows per forward lane group for a full block (`ROW_BLOCK`): forced by the options, or
    /// `None` for [`CPU_ROW_BLOCKS`] on a CPU adapter and 1 on a GPU.
    row_block: Option<u32>,
    /// The adapter runs on the CPU (lavapipe or another `DeviceType::Cpu`).
    cpu_adapter: bool,
    limits: ::wgpu::Limits,
    uniforms: ::wgpu::Buffer,
    /// Bytes between two uniform slots (the device's dynamic-offset alignment, at least 256).
    uniform_stride: u64,
    next_slot: AtomicU64,
    forward_layout: ::wgpu::BindGroupLayout,
    combine_layout: ::wgpu::BindGroupLayout,
    key_mass_layout: ::wgpu::BindGroupLayout,
    seqs_layout: ::wgpu::BindGroupLayout,
    forward_pipeline_layout: ::wgpu::PipelineLayout,
    combine_pipeline_layout: ::wgpu::PipelineLayout,
    key_mass_pipeline_layout: ::wgpu::PipelineLayout,
    seqs_pipeline_layout: ::wgpu::PipelineLayout,
    pipelines: Mutex<HashMap<Kernel, ::wgpu::ComputePipeline>>,
    scratch: Mutex<Option<::wgpu::Buffer>>,
    /// Bound in place of a parameter the variant does not read.
    placeholder: ::wgpu::Buffer,
    /// Loop iterations the driver lets one invocation run (lavapipe), if it limits them.
    loop_limit: Option<u64>,
    split_kv: SplitKv,
    /// What the split heuristic fills: lavapipe's threads (the host's CPUs), else
    /// [`TYPICAL_COMPUTE_UNITS`].
    compute_units: u32,
}

/// Storage buffers the forward kernel binds at once (WebGPU's default limit is 8).
const FORWARD_STORAGE_BUFFERS: u32 = 8;

/// Slots of the uniform ring: the calls that may be recorded between two submissions.
pub const UNIFORM_SLOTS: u64 = 1024;

fn uniform_entry(binding: u32) -> ::wgpu::BindGroupLayoutEntry {
    ::wgpu::BindGroupLayoutEntry {
        binding,
        visibility: ::wgpu::ShaderStages::COMPUTE,
        ty: ::wgpu::BindingType::Buffer {
            ty: ::wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: true,
            min_binding_size: NonZeroU64::new(std::mem::size_of::<Params>() as u64),
        },
        count: None,
    }
}

fn storage_entry(binding: u32, read_only: bool) -> ::wgpu::BindGroupLayoutEntry {
    ::wgpu::BindGroupLayoutEntry {
        binding,
        visibility: ::wgpu::ShaderStages::COMPUTE,
        ty: ::wgpu::BindingType::Buffer {
            ty: ::wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}

/// A range of a buffer as bound, and where the tensor starts inside it.
struct Bound<'a> {
    buffer: &'a ::wgpu::Buffer,
    offset: u64,
    size: NonZeroU64,
    /// Element index, relative to the binding, of the tensor's first element.
    base: u32,
}

impl Bound<'_> {
    fn entry(&self, binding: u32) -> ::wgpu::BindGroupEntry<'_> {
        ::wgpu::BindGroupEntry {
            binding,
            resource: ::wgpu::BindingResource::Buffer(::wgpu::BufferBinding {
                buffer: self.buffer,
                offset: self.offset,
                size: Some(self.size),
            }),
        }
    }
}

fn unsupported(reason: String) -> Error {
    Error::Unsupported {
        backend: BACKEND.to_string(),
        reason,
    }
}

fn backend_error(message: String) -> Error {
    Error::Backend {
        backend: BACKEND.to_string(),
        message,
    }
}

impl WgslAttention {
    /// Prepares the kernels' layouts on `device`; `queue` (the device's) carries each call's
    /// uniforms. Pipelines are built on first use, or ahead of it by [`prepare`](Self::prepare).
    ///
    /// The shuffle path is taken when `options.subgroups` is set, `device` was created with
    /// `Features::SUBGROUP` and the adapter's subgroup sizes are powers of two from 4 to 64.
    ///
    /// # Errors
    /// [`Error::Unsupported`] when the device allows fewer than 8 storage buffers per stage.
    pub fn new(
        device: &::wgpu::Device,
        queue: &::wgpu::Queue,
        options: WgslOptions,
    ) -> Result<WgslAttention> {
        let limits = device.limits();
        if limits.max_storage_buffers_per_shader_stage < FORWARD_STORAGE_BUFFERS {
            return Err(unsupported(format!(
                "the device allows {} storage buffers per shader stage, the forward kernel binds {}",
                limits.max_storage_buffers_per_shader_stage, FORWARD_STORAGE_BUFFERS
            )));
        }
        let layout = |label, entries: &[::wgpu::BindGroupLayoutEntry]| {
            device.create_bind_group_layout(&::wgpu::BindGroupLayoutDescriptor {
                label: Some(label),
                entries,
            })
        };
        // The bind-group layouts are the kernels' signatures (see the shaders' bindings).
        let forward_layout = layout(
            "outlier-attn forward",
            &[
                uniform_entry(0),
                storage_entry(1, true),  // q
                storage_entry(2, true),  // k
                storage_entry(3, true),  // v
                storage_entry(4, false), // o
                storage_entry(5, false), // lse
                storage_entry(6, false), // scratch
                storage_entry(7, true),  // param a
                storage_entry(8, true),  // param b
            ],
        );
        let combine_layout = layout(
            "outlier-attn combine",
            &[
                uniform_entry(0),
                storage_entry(1, true),  // scratch
                storage_entry(2, false), // stats
            ],
        );
        let key_mass_layout = layout(
            "outlier-attn key mass",
            &[
                uniform_entry(0),
                storage_entry(1, true),  // q
                storage_entry(2, true),  // k
                storage_entry(3, true),  // scratch
                storage_entry(4, false), // key mass
            ],
        );
        let seqs_layout = layout(
            "outlier-attn sequences",
            &[
                uniform_entry(0),
                storage_entry(1, true),  // cu_seqlens_q
                storage_entry(2, true),  // cu_seqlens_k
                storage_entry(3, true),  // seqlens_k
                storage_entry(4, true),  // block_table
                storage_entry(5, false), // scratch
            ],
        );
        let pipeline_layout = |label, bgl: &::wgpu::BindGroupLayout| {
            device.create_pipeline_layout(&::wgpu::PipelineLayoutDescriptor {
                label: Some(label),
                bind_group_layouts: &[Some(bgl)],
                immediate_size: 0,
            })
        };
        let placeholder = device.create_buffer(&::wgpu::BufferDescriptor {
            label: Some("outlier-attn unused parameter"),
            size: 16,
            usage: ::wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        // lavapipe reports itself as "llvmpipe (LLVM ...)"; its budget is a compile-time
        // constant of Mesa's gallivm, the same in every version that has it.
        let info = device.adapter_info();
        let lavapipe = info.name.contains("llvmpipe") || info.driver.contains("llvmpipe");
        let (sg_min, sg_max) = (info.subgroup_min_size, info.subgroup_max_size);
        let shuffles = options.subgroups
            && device.features().contains(::wgpu::Features::SUBGROUP)
            && sg_min.is_power_of_two()
            && sg_max.is_power_of_two()
            && (4..=64).contains(&sg_min)
            && sg_max <= BLOCK_M
            && sg_min <= sg_max;
        let uniform_stride = u64::from(limits.min_uniform_buffer_offset_alignment).max(256);
        let uniforms = device.create_buffer(&::wgpu::BufferDescriptor {
            label: Some("outlier-attn uniform ring"),
            size: uniform_stride * UNIFORM_SLOTS,
            usage: ::wgpu::BufferUsages::UNIFORM | ::wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        if let Some(n) = options.row_block
            && !(1..=MAX_ROW_BLOCK).contains(&n)
        {
            return Err(unsupported(format!(
                "options.row_block = {n}: the forward kernel serves 1 to {MAX_ROW_BLOCK} rows per lane group"
            )));
        }
        let cpu_adapter = lavapipe || info.device_type == ::wgpu::DeviceType::Cpu;
        let compute_units = if lavapipe {
            std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
        } else {
            TYPICAL_COMPUTE_UNITS
        };
        Ok(WgslAttention {
            loop_limit: lavapipe.then_some(LAVAPIPE_LOOP_ITERATIONS),
            split_kv: options.split_kv,
            compute_units,
            device: device.clone(),
            queue: queue.clone(),
            shuffle_lanes: shuffles.then_some(sg_min),
            subgroup_max: sg_max,
            row_block: options.row_block,
            cpu_adapter,
            uniforms,
            uniform_stride,
            next_slot: AtomicU64::new(0),
            forward_pipeline_layout: pipeline_layout("outlier-attn forward", &forward_layout),
            combine_pipeline_layout: pipeline_layout("outlier-attn combine", &combine_layout),
            key_mass_pipeline_layout: pipeline_layout("outlier-attn key mass", &key_mass_layout),
            seqs_pipeline_layout: pipeline_layout("outlier-attn sequences", &seqs_layout),
            forward_layout,
            combine_layout,
            key_mass_layout,
            seqs_layout,
            limits,
            pipelines: Mutex::new(HashMap::new()),
            scratch: Mutex::new(None),
            placeholder,
        })
    }

    /// The split-KV setting of this instance ([`WgslOptions::split_kv`]).
    pub fn split_kv(&self) -> SplitKv {
        self.split_kv
    }

    /// With another split-KV setting (the pipelines built so far are kept).
    pub fn with_split_kv(mut self, split_kv: SplitKv) -> WgslAttention {
        self.split_kv = split_kv;
        self
    }

    /// Splits of each row's keys that a call of `problem` runs with (1: no split), after the
    /// checks of [`encode`](Self::encode) that depend on the device.
    ///
    /// # Errors
    /// As [`prepare`](Self::prepare), without building anything.
    pub fn splits(&self, problem: &Problem) -> Result<usize> {
        self.plan(problem).map(|p| p.splits as usize)
    }

    /// Whether the forward kernel's lanes exchange keys by subgroup shuffles (for the head dims
    /// whose tile fits; see [`forward_tile`](Self::forward_tile)).
    pub fn uses_subgroups(&self) -> bool {
        self.shuffle_lanes.is_some()
    }

    /// The loop iterations the driver lets one shader invocation run, all loops together, when
    /// it limits them: `Some(65535)` on lavapipe, which ends an invocation there silently.
    /// Calls whose kernels could exceed it are refused with [`Error::Unsupported`] rather than
    /// run to a wrong result. The forward kernel costs about two iterations per key (four for
    /// ClippedSoftmax), so on lavapipe a row may see 19 000 (d = 256) to 35 000 (d = 64) keys,
    /// half that for ClippedSoftmax, and the key mass about 15 000 query rows.
    pub fn loop_iteration_limit(&self) -> Option<u64> {
        self.loop_limit
    }

    /// Keys per K/V tile of the forward kernel for head dim `d` on this device (for a full
    /// block of query rows; a decode step's smaller workgroup may take fewer), or `None` if
    /// even one key does not fit its workgroup memory: on the shuffle path the most whole
    /// chunks (the adapter's smallest subgroup size) up to 32 keys that fit, else the largest
    /// power of two up to 64 that does.
    pub fn forward_tile(&self, head_dim: usize) -> Option<u32> {
        self.forward_geometry(head_dim, BLOCK_M as usize)
            .map(|g| g.tile)
    }

    /// Workgroup size, K/V tile and path of the forward kernel for `folded` query rows per
    /// (batch, kv head).
    fn forward_geometry(&self, head_dim: usize, folded: usize) -> Option<ForwardGeometry> {
        let storage = self.limits.max_compute_workgroup_storage_size;
        let row_lanes = self.row_lanes(head_dim);
        // K and V tiles, plus the fold of the K/V statistics records (one per key of a tile);
        // per invocation, its vec4 of `row_share` (and two floats of `row_red` without
        // subgroups); the row counter.
        let kv_record = KV_PARTIAL_LEN as u32 * 4;
        let short = folded.saturating_mul(row_lanes as usize) <= BLOCK_M_SHORT as usize;
        if let Some(lanes) = self.shuffle_lanes {
            let workgroup = if short {
                // The fewest whole subgroups that hold the rows' lanes: a lane past the rows
                // still walks every key (the shuffles need the whole subgroup), so on a CPU
                // adapter, whose SIMD runs a subgroup's lanes together, each idle subgroup
                // costs as much as a live one.
                let lanes_needed = (folded as u32 * row_lanes).max(1);
                lanes_needed.div_ceil(self.subgroup_max) * self.subgroup_max
            } else {
                self.forward_workgroup()
            };
            // The largest tile of whole chunks (powers of two) up to SHUFFLE_TILE keys and one
            // key per invocation (the K/V measurement gives each key of a tile its own lane)
            // that fits: fewer tiles mean fewer barriers and staging rounds per key.
            let key_bytes = head_dim as u32 * 4 * 2 + kv_record;
            let fixed = workgroup * 16 + 4;
            let mut tile = SHUFFLE_TILE.max(lanes).min(workgroup);
            while tile > lanes && tile * key_bytes + fixed > storage {
                tile /= 2;
            }
            if tile * key_bytes + fixed <= storage && lanes <= tile && row_lanes <= lanes {
                return Some(ForwardGeometry {
                    workgroup,
                    tile,
                    chunk: lanes,
                    keys_held: lanes / row_lanes,
                    shuffles: true,
                    short,
                });
            }
        }
        let workgroup = match short {
            true => BLOCK_M_SHORT,
            false => self.forward_workgroup(),
        };
        let per_lane = 16 + 2 * 4;
        let tile =
            tile_rows(head_dim, 2, workgroup * (kv_record + per_lane), storage)?.min(workgroup);
        Some(ForwardGeometry {
            workgroup,
            tile,
            chunk: tile,
            keys_held: tile.min(WORKGROUP_ROUND),
            shuffles: false,
            short,
        })
    }

    /// Invocations of a forward workgroup for a full block of rows on this adapter.
    fn forward_workgroup(&self) -> u32 {
        match self.cpu_adapter {
            true => CPU_BLOCK_M,
            false => BLOCK_M,
        }
    }

    /// Lanes per forward row at head dim `head_dim` on this adapter ([`row_lanes`]).
    fn row_lanes(&self, head_dim: usize) -> u32 {
        let max_quads = match self.cpu_adapter {
            true => CPU_MAX_LANE_QUADS,
            false => MAX_LANE_QUADS,
        };
        row_lanes(head_dim, max_quads)
    }

    /// Rows per lane group (`ROW_BLOCK`) for a call of `folded` rows per (sequence, kv head) on
    /// `geometry`: the one place that chooses it.
    fn row_block_for(&self, geometry: &ForwardGeometry, folded: usize) -> u32 {
        match self.row_block {
            _ if geometry.short => 1,
            Some(n) => n,
            None if self.cpu_adapter => CPU_ROW_BLOCKS
                .iter()
                .find(|&&(rows, _)| folded >= rows)
                .map_or(1, |&(_, n)| n),
            None => 1,
        }
    }

    fn key_mass_tile(&self, head_dim: usize) -> Option<u32> {
        // The Q tile plus (m, l, clip mass) per row of it: at most 64 rows.
        tile_rows(
            head_dim,
            1,
            64 * ROW_STATE_LEN as u32 * 4,
            self.limits.max_compute_workgroup_storage_size,
        )
    }

    /// Builds the pipelines `problem` needs now, inside an error scope that it waits for, so
    /// that a shader the device rejects is an [`Error::Backend`] with the compiler's message.
    /// Call it where a wait is acceptable (at load time); [`encode`](Self::encode) builds
    /// what is missing without waiting, and a build error then reaches the device's
    /// uncaptured-error handler instead.
    ///
    /// # Errors
    /// [`Error::Unsupported`] as for [`encode`](Self::encode) for a problem this device
    /// cannot run; [`Error::Backend`] when a pipeline does not build.
    pub fn prepare(&self, problem: &Problem) -> Result<()> {
        let scope = self
            .device
            .push_error_scope(::wgpu::ErrorFilter::Validation);
        let built = self.plan(problem).map(|plan| {
            for kernel in plan.kernels() {
                self.pipeline(&kernel);
            }
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(backend_error(format!(
                "building the kernels of {problem:?} failed: {e}"
            )));
        }
        built
    }

    /// The pipeline of `kernel`, built on first use (without waiting for the device: see
    /// [`prepare`](Self::prepare) for a build whose errors come back).
    fn pipeline(&self, kernel: &Kernel) -> ::wgpu::ComputePipeline {
        if let Some(p) = self.pipelines_lock().get(kernel) {
            return p.clone();
        }
        let source = kernel.source();
        let module = self
            .device
            .create_shader_module(::wgpu::ShaderModuleDescriptor {
                label: Some(kernel.kind.entry_point()),
                source: ::wgpu::ShaderSource::Wgsl(source.into()),
            });
        let layout = match kernel.kind {
            KernelKind::Forward | KernelKind::SplitCombine => &self.forward_pipeline_layout,
            KernelKind::Combine => &self.combine_pipeline_layout,
            KernelKind::KeyMass => &self.key_mass_pipeline_layout,
            KernelKind::Seqs => &self.seqs_pipeline_layout,
        };
        let pipeline = self
            .device
            .create_compute_pipeline(&::wgpu::ComputePipelineDescriptor {
                label: Some(kernel.kind.entry_point()),
                layout: Some(layout),
                module: &module,
                entry_point: Some(kernel.kind.entry_point()),
                // Every workgroup variable is written before it is read (tiles are staged, the
                // K/V records stored first), so wgpu's zero-fill prologue is not needed; it
                // costs a loop and a barrier in every kernel.
                compilation_options: ::wgpu::PipelineCompilationOptions {
                    zero_initialize_workgroup_memory: false,
                    ..Default::default()
                },
                cache: None,
            });
        // Another thread may have built the same pipeline meanwhile; keep the first.
        self.pipelines_lock()
            .entry(*kernel)
            .or_insert(pipeline)
            .clone()
    }

    fn pipelines_lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<Kernel, ::wgpu::ComputePipeline>> {
        self.pipelines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Number of pipelines built so far.
    pub fn cached_pipelines(&self) -> usize {
        self.pipelines_lock().len()
    }

    /// The scratch buffer, grown to at least `bytes`.
    fn scratch(&self, bytes: u64) -> ::wgpu::Buffer {
        let mut slot = self.scratch.lock().unwrap_or_else(PoisonError::into_inner);
        match slot.as_ref() {
            Some(b) if b.size() >= bytes => b.clone(),
            _ => {
                let b = self.device.create_buffer(&::wgpu::BufferDescriptor {
                    label: Some("outlier-attn scratch"),
                    size: bytes.next_power_of_two().max(256),
                    usage: ::wgpu::BufferUsages::STORAGE,
                    mapped_at_creation: false,
                });
                *slot = Some(b.clone());
                b
            }
        }
    }

    /// Binds elements `[first, end)` of a buffer whose elements are `elem_bytes` wide.
    fn bind<'a>(
        &self,
        tensor: TensorName,
        buffer: &'a ::wgpu::Buffer,
        elem_bytes: u64,
        first: u64,
        end: u64,
    ) -> Result<Bound<'a>> {
        let align = self.limits.min_storage_buffer_offset_alignment as u64;
        let start = first * elem_bytes;
        let offset = start / align * align;
        // Storage bindings are whole 4-byte words.
        let stop = (end * elem_bytes).div_ceil(4) * 4;
        if stop > buffer.size() {
            return Err(unsupported(format!(
                "{tensor}: its last 16-bit element ends a buffer of {} bytes mid-word; pad the buffer to a multiple of 4 bytes",
                buffer.size()
            )));
        }
        let size = stop - offset;
        if size > self.limits.max_storage_buffer_binding_size {
            return Err(unsupported(format!(
                "{tensor}: spans {size} bytes, more than the {} bytes one storage binding may hold on this device",
                self.limits.max_storage_buffer_binding_size
            )));
        }
        if size / elem_bytes > u32::MAX as u64 {
            return Err(unsupported(format!(
                "{tensor}: spans more than 2^32 elements"
            )));
        }
        Ok(Bound {
            buffer,
            offset,
            size: NonZeroU64::new(size.max(4)).unwrap_or(NonZeroU64::MIN),
            base: ((start - offset) / elem_bytes) as u32,
        })
    }

    fn bind_tensor<'a>(
        &self,
        tensor: TensorName,
        t: &DeviceTensor<'a>,
        dims: [usize; 4],
    ) -> Result<(Bound<'a>, [u32; 3])> {
        let end = t
            .layout
            .reach(dims)
            .ok_or(Error::IndexOverflow { tensor })?;
        let bound = self.bind(
            tensor,
            t.buffer,
            t.dtype.size_bytes() as u64,
            t.layout.offset,
            end,
        )?;
        // A dimension of size 1 never multiplies its stride: pass 0 so that a huge unused
        // stride cannot wrap. The others fit: the binding holds fewer than 2^32 elements.
        let s = &t.layout.strides;
        let stride = |size: usize, stride: u64| if size > 1 { stride as u32 } else { 0 };
        Ok((
            bound,
            [
                stride(dims[0], s.batch),
                stride(dims[1], s.seq),
                stride(dims[2], s.head),
            ],
        ))
    }

    fn bind_slice<'a>(&self, tensor: TensorName, s: &DeviceSlice<'a>) -> Result<Bound<'a>> {
        self.bind(
            tensor,
            s.buffer,
            s.dtype.size_bytes() as u64,
            s.offset,
            s.offset + s.len as u64,
        )
    }

    /// Records one forward call into `encoder`: the fused pass, the statistics combine when
    /// the level asks for statistics, and the key-mass pass for `HeadsAndKeys`.
    ///
    /// The problem and buffers go through [`validate`] first (buffer lengths are the buffers'
    /// byte sizes divided by the element size); nothing is recorded when it refuses.
    ///
    /// # Errors
    /// Every refusal of [`validate`]; [`Error::BufferTooShort`] for a slice past its buffer's
    /// end; [`Error::Unsupported`] for a valid problem this device cannot run (a tensor larger
    /// than one storage binding, a grid larger than the dispatch limit, a head dim whose tile
    /// does not fit the workgroup memory); [`Error::Backend`] when wgpu reports an error.
    pub fn encode(
        &self,
        encoder: &mut ::wgpu::CommandEncoder,
        problem: &Problem,
        args: &DeviceArgs<'_>,
    ) -> Result<Validated> {
        self.encode_timed(encoder, problem, args, None)
    }

    /// As [`encode`](Self::encode), and writes the device's timestamps at the beginning and
    /// end of the call's compute pass into the caller's query set (the device needs
    /// `Features::TIMESTAMP_QUERY`). Every pass of the call is inside the two timestamps.
    ///
    /// # Errors
    /// As [`encode`](Self::encode).
    pub fn encode_timed(
        &self,
        encoder: &mut ::wgpu::CommandEncoder,
        problem: &Problem,
        args: &DeviceArgs<'_>,
        timestamp_writes: Option<::wgpu::ComputePassTimestampWrites<'_>>,
    ) -> Result<Validated> {
        // The engine-shaped calls of DESIGN.md section 6 these kernels do not implement yet:
        // refused by name before anything else.
        problem.require_features(BACKEND, SUPPORTED)?;
        let tensor_arg = |t: &DeviceTensor<'_>| TensorArg {
            dtype: t.dtype,
            len: (t.buffer.size() / t.dtype.size_bytes() as u64) as usize,
            layout: t.layout,
        };
        let slice_arg = |name: TensorName, s: &DeviceSlice<'_>| -> Result<BufferArg> {
            let held = s.buffer.size() / s.dtype.size_bytes() as u64;
            let needed = s.offset.saturating_add(s.len as u64);
            if needed > held {
                return Err(Error::BufferTooShort {
                    tensor: name,
                    needed,
                    len: held,
                });
            }
            Ok(BufferArg {
                dtype: s.dtype,
                len: s.len,
            })
        };
        // An index tensor must lie inside its buffer; its values are the kernels' to check.
        for (name, slot) in args.indices.slots() {
            if let Some(x) = slot {
                let held = x.buffer.size() / 4;
                let needed = x.offset.saturating_add(x.len as u64);
                if needed > held {
                    return Err(Error::BufferTooShort {
                        tensor: name,
                        needed,
                        len: held,
                    });
                }
            }
        }
        let mut params = VariantParams::none();
        for (name, slot) in args.params.slots() {
            let arg = slot.map(|s| slice_arg(name, s)).transpose()?;
            match name {
                TensorName::KSink => params.k_sink = arg,
                TensorName::VSink => params.v_sink = arg,
                TensorName::VBias => params.v_bias = arg,
                TensorName::SinkLogits => params.sink_logits = arg,
                _ => params.gate = arg,
            }
        }
        let checked = validate(
            problem,
            &Args {
                q: tensor_arg(&args.q),
                k: tensor_arg(&args.k),
                v: tensor_arg(&args.v),
                o: tensor_arg(&args.o),
                lse: Some(slice_arg(TensorName::Lse, &args.lse)?),
                stats: args
                    .stats
                    .as_ref()
                    .map(|s| slice_arg(TensorName::Stats, s))
                    .transpose()?,
                key_mass: args
                    .key_mass
                    .as_ref()
                    .map(|s| slice_arg(TensorName::KeyMass, s))
                    .transpose()?,
                params,
                param_layouts: VariantParams::none(),
                indices: args.indices.map(|x| x.len),
            },
        )?;
        checked.require_features(BACKEND, SUPPORTED)?;
        self.record(encoder, &checked, args, timestamp_writes)?;
        Ok(checked)
    }

    /// Geometry, kernels and dispatch sizes of `problem` on this device, after the checks
    /// that depend on the device alone (32-bit indexing, dispatch limits, workgroup memory,
    /// lavapipe's loop budget).
    fn plan(&self, problem: &Problem) -> Result<Plan> {
        let s = &problem.shape;
        let d = s.head_dim;
        if d == 0 || d % 8 != 0 || d > 256 {
            return Err(unsupported(format!(
                "head dim {d}: the kernels take multiples of 8 up to 256"
            )));
        }
        let too_big = |what: &str| unsupported(format!("{what} does not fit 32-bit indexing"));
        let q_len = u32::try_from(s.q_len).map_err(|_| too_big("Nq"))?;
        let kv_len = u32::try_from(s.kv_len).map_err(|_| too_big("Nk"))?;
        // key_range (common.wgsl) adds up to 2·(Nq + Nk) + 1.
        if 2 * (s.q_len as u64 + s.kv_len as u64) + 1 > u64::from(u32::MAX) {
            return Err(too_big("2·(Nq + Nk) + 1"));
        }
        let folded = s
            .q_len
            .checked_mul(s.group_size())
            .ok_or_else(|| too_big("Nq · group"))?;
        let folded = u32::try_from(folded).map_err(|_| too_big("Nq · group"))?;
        let heads = u32::try_from(s.heads_total()).map_err(|_| too_big("B·Hq"))?;
        let no_tile = || {
            unsupported(format!(
                "head dim {d}: one key of K and V does not fit the {} bytes of workgroup memory",
                self.limits.max_compute_workgroup_storage_size
            ))
        };
        let geometry = self
            .forward_geometry(d, folded as usize)
            .ok_or_else(no_tile)?;
        let row_block = self.row_block_for(&geometry, folded as usize);
        // Folded rows per workgroup: `row_lanes` lanes per row, `row_block` rows per lane group.
        let q_blocks = folded.div_ceil(geometry.workgroup / self.row_lanes(d) * row_block);
        // Key-mass workgroups per (batch, head): BLOCK_M lanes of `KEYS_PER_LANE` keys each.
        let key_blocks = kv_len.div_ceil(BLOCK_M * key_mass_keys_per_lane(d));
        let key_mass_tile = match problem.stats.keys() {
            true => Some(self.key_mass_tile(d).ok_or_else(no_tile)?),
            false => None,
        };
        // The loop iterations of the call's invocations when each visits `keys` keys.
        let needed = |keys: u32, splits: u32| {
            let trips = LoopTrips::of(
                s.q_len as u64,
                u64::from(keys),
                d as u64,
                u64::from(geometry.workgroup),
                u64::from(geometry.tile),
                u64::from(geometry.keys_held),
                u64::from(key_mass_tile.unwrap_or(1)),
                matches!(problem.variant, Variant::ClippedSoftmax { .. }),
            );
            [
                Some(trips.forward),
                key_mass_tile.map(|_| trips.key_mass),
                problem.stats.heads().then_some(trips.combine),
                (!problem.seqs.is_dense()).then(|| seqs_trips(problem)),
                // The split combine: two loops over the splits, the K/V records' fold, and
                // a per-channel gate's statistics over the row's channel quads.
                (splits > 1).then(|| 3 * (u64::from(splits) + 1) + d as u64 / 4 + 1),
            ]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(0)
        };
        let tile = geometry.tile;
        let tiles = kv_len.div_ceil(tile).max(1);
        let tiles_per_split = self.tiles_per_split(problem, q_blocks, tile, tiles, &|t| {
            self.loop_limit
                .is_none_or(|limit| needed(t * tile, tiles.div_ceil(t)) <= limit)
        })?;
        let splits = tiles.div_ceil(tiles_per_split);
        let split_keys = if splits > 1 {
            tiles_per_split * tile
        } else {
            kv_len.max(1)
        };
        let split_groups = q_blocks
            .checked_mul(splits)
            .ok_or_else(|| too_big("query blocks · splits"))?;
        // The split combine: one lane per (folded row, channel quad).
        let split_combine_groups = (folded as u64 * d as u64 / 4).div_ceil(COMBINE_THREADS as u64);
        let split_combine_groups =
            u32::try_from(split_combine_groups).map_err(|_| too_big("Nq · group · d"))?;
        let max_groups = self.limits.max_compute_workgroups_per_dimension;
        for (what, n) in [
            ("query blocks", split_groups),
            ("kv heads", s.kv_heads as u32),
            ("query heads", s.q_heads as u32),
            ("batch", s.batch as u32),
            ("key blocks", key_blocks),
            ("combine groups", heads.div_ceil(COMBINE_THREADS)),
            ("split combine groups", split_combine_groups),
        ] {
            if n > max_groups {
                return Err(unsupported(format!(
                    "{what}: {n} workgroups, more than the {max_groups} per dimension this device dispatches"
                )));
            }
        }
        if let Some(limit) = self.loop_limit {
            let needed = needed(split_keys.min(kv_len), splits);
            if needed > limit {
                return Err(unsupported(format!(
                    "lavapipe ends a shader invocation after {limit} loop iterations (Mesa's \
                     LP_MAX_TGSI_LOOP_ITERATIONS), and this call (Nq = {}, Nk = {}, d = {d}) \
                     needs up to {needed}; run it on a GPU adapter, or split the keys",
                    s.q_len, s.kv_len
                )));
            }
        }
        let kernel = |kind, workgroup, tile, subgroups| {
            Kernel::new(
                kind,
                d,
                workgroup,
                tile,
                problem.dtype,
                &problem.variant,
                problem.stats,
                subgroups,
            )
            .with_sequences(problem.seqs.is_dense())
            .with_softcap(problem.softcap.is_some())
            .with_row_lanes(self.row_lanes(d))
        };
        Ok(Plan {
            forward: kernel(
                KernelKind::Forward,
                geometry.workgroup,
                geometry.tile,
                geometry.shuffles,
            )
            .with_chunk(geometry.chunk)
            .with_row_block(row_block)
            .with_split(splits > 1),
            combine: problem
                .stats
                .heads()
                .then(|| kernel(KernelKind::Combine, COMBINE_THREADS, 1, false)),
            key_mass: key_mass_tile.map(|tile| {
                // A Q row reaches the lanes by shuffles where chunks of the smallest subgroup
                // divide the workgroup (key_mass_subgroup.wgsl).
                let chunk = self.shuffle_lanes.filter(|&lanes| BLOCK_M % lanes == 0);
                kernel(KernelKind::KeyMass, BLOCK_M, tile, chunk.is_some())
                    .with_chunk(chunk.unwrap_or(1))
            }),
            seqs: (!problem.seqs.is_dense())
                .then(|| kernel(KernelKind::Seqs, SEQS_THREADS, 1, false)),
            split_combine: (splits > 1)
                .then(|| kernel(KernelKind::SplitCombine, COMBINE_THREADS, 1, false)),
            q_len,
            kv_len,
            q_blocks,
            key_blocks,
            heads,
            splits,
            split_keys,
            split_combine_groups,
        })
    }

    /// K/V tiles (of `tile` keys) per split of `problem` (all `tiles` of the keys: no split) under this
    /// instance's [`SplitKv`], for `q_blocks` folded blocks per (batch, kv head); `fits` says
    /// whether a split of that many tiles keeps within the loop budget.
    ///
    /// Where the kernels split: every variant but ClippedSoftmax, at every statistics level
    /// (the sink joins split 0; the combine applies the per-row terms, merges the statistics'
    /// sums and the K/V records). ClippedSoftmax needs each row's final normaliser before its
    /// first weight: it never splits, and forcing it is refused.
    ///
    /// `Auto`: on lavapipe (the CPU), a split only when the unsplit call would exceed the loop
    /// budget, then into the fewest splits that keep within it (measured in BENCHMARKS.md: the
    /// split adds work and no parallelism there); on a GPU, FlashAttention-2's heuristic
    /// ([`heuristic_splits`]) over [`TYPICAL_COMPUTE_UNITS`]. `On`: the heuristic, forced.
    fn tiles_per_split(
        &self,
        problem: &Problem,
        q_blocks: u32,
        tile: u32,
        tiles: u32,
        fits: &dyn Fn(u32) -> bool,
    ) -> Result<u32> {
        let s = &problem.shape;
        let can_split = !matches!(problem.variant, Variant::ClippedSoftmax { .. });
        let blocks = s.batch * s.kv_heads * q_blocks as usize;
        let units = self.compute_units as usize;
        let by_heuristic =
            |force| tiles.div_ceil(heuristic_splits(blocks, tiles as usize, units, force) as u32);
        Ok(match self.split_kv {
            SplitKv::Off => tiles,
            SplitKv::Auto if !can_split => tiles,
            SplitKv::On | SplitKv::KeysPerSplit(_) if !can_split => {
                return Err(unsupported(format!(
                    "split-KV was forced, but {} does not split (its weights need the row's \
                     final normaliser; every other variant splits)",
                    problem.variant.name(),
                )));
            }
            SplitKv::Auto if self.loop_limit.is_some() => {
                // The fewest splits within the loop budget.
                let mut per_split = tiles;
                while per_split > 1 && !fits(per_split) {
                    per_split = per_split.div_ceil(2);
                }
                per_split
            }
            SplitKv::Auto => by_heuristic(false),
            SplitKv::On => by_heuristic(true),
            SplitKv::KeysPerSplit(keys) => {
                keys.div_ceil(tile as usize).clamp(1, tiles as usize) as u32
            }
        })
    }

    fn record(
        &self,
        encoder: &mut ::wgpu::CommandEncoder,
        checked: &Validated,
        args: &DeviceArgs<'_>,
        timestamp_writes: Option<::wgpu::ComputePassTimestampWrites<'_>>,
    ) -> Result<()> {
        let problem = checked.problem();
        let s = checked.shape();
        let plan = self.plan(problem)?;

        let dims = |t| problem.tensor_dims(t);
        let (q, q_strides) = self.bind_tensor(TensorName::Q, &args.q, dims(TensorName::Q))?;
        let (k, k_strides) = self.bind_tensor(TensorName::K, &args.k, dims(TensorName::K))?;
        let (v, v_strides) = self.bind_tensor(TensorName::V, &args.v, dims(TensorName::V))?;
        let (o, o_strides) = self.bind_tensor(TensorName::O, &args.o, dims(TensorName::O))?;
        let lse = self.bind_slice(TensorName::Lse, &args.lse)?;
        let stats = args
            .stats
            .as_ref()
            .map(|x| self.bind_slice(TensorName::Stats, x))
            .transpose()?;
        let key_mass = args
            .key_mass
            .as_ref()
            .map(|x| self.bind_slice(TensorName::KeyMass, x))
            .transpose()?;
        let p = &args.params;
        let (param_a, param_b) = match problem.variant {
            Variant::ContextBias | Variant::KvSink => (p.k_sink.as_ref(), p.v_sink.as_ref()),
            Variant::ValueBias => (p.v_bias.as_ref(), None),
            Variant::LogitSink => (p.sink_logits.as_ref(), None),
            Variant::ContextScale { .. } => (p.gate.as_ref(), None),
            _ => (None, None),
        };
        let placeholder = || Bound {
            buffer: &self.placeholder,
            offset: 0,
            size: NonZeroU64::new(16).unwrap_or(NonZeroU64::MIN),
            base: 0,
        };
        let param_a = match param_a {
            Some(x) => self.bind_slice(TensorName::KSink, x)?,
            None => placeholder(),
        };
        let param_b = match param_b {
            Some(x) => self.bind_slice(TensorName::VSink, x)?,
            None => placeholder(),
        };

        // Scratch: a statistics record per query row, a K/V record per (batch, kv head), and
        // the key mass's row state.
        let (partials_len, kv_partials_len) = if problem.stats.heads() {
            (
                s.lse_len() * PARTIAL_LEN,
                s.batch * s.kv_heads * KV_PARTIAL_LEN,
            )
        } else {
            (0, 0)
        };
        let rows_len = if problem.stats.keys() {
            s.lse_len() * ROW_STATE_LEN
        } else {
            0
        };
        // The sequence records and the checked block table (seqs.wgsl), for calls that are not
        // dense.
        let (seqs_len, table_len) = match (plan.seqs, problem.seqs.kv) {
            (None, _) => (0, 0),
            (Some(_), KvSeqs::Paged { max_pages, .. }) => (s.batch * SEQ_LEN, s.batch * max_pages),
            (Some(_), _) => (s.batch * SEQ_LEN, 0),
        };
        // Split-KV: a partial (the softmax state and statistics sums, the unnormalised output)
        // per (row, split), then with statistics a K/V record per (batch, kv head, split).
        let split_len = if plan.splits > 1 {
            let splits = plan.splits as usize;
            let kv_len = if problem.stats.heads() {
                s.batch * s.kv_heads * splits * KV_PARTIAL_LEN
            } else {
                0
            };
            (s.batch * s.q_heads * s.q_len)
                .checked_mul(splits * (SPLIT_HEAD_LEN + s.head_dim))
                .and_then(|rows| rows.checked_add(kv_len))
                .ok_or_else(|| unsupported("the split-KV partials overflow".to_string()))?
        } else {
            0
        };
        let seqs_offset = partials_len + kv_partials_len + rows_len;
        let split_offset = seqs_offset + seqs_len + table_len;
        let scratch_words = split_offset + split_len;
        let scratch_bytes = (scratch_words * 4) as u64;
        if scratch_bytes > self.limits.max_storage_buffer_binding_size {
            return Err(unsupported(format!(
                "the statistics scratch needs {scratch_bytes} bytes, more than one storage binding holds"
            )));
        }
        let scratch = self.scratch(scratch_bytes.max(16));
        let scratch_bound = Bound {
            buffer: &scratch,
            offset: 0,
            size: NonZeroU64::new(scratch.size()).unwrap_or(NonZeroU64::MIN),
            base: 0,
        };

        let (zeta, gamma) = match problem.variant {
            Variant::ClippedSoftmax { zeta, gamma } => (zeta, gamma),
            _ => (1.0, 0.0),
        };
        let (window_left, window_right) = window_uniforms(problem.mask, plan.q_len, plan.kv_len);
        let too_big = |what: &str| unsupported(format!("{what} does not fit 32-bit indexing"));
        let q_total = match problem.seqs.q {
            QuerySeqs::Packed { total } => u32::try_from(total).map_err(|_| too_big("total_q"))?,
            QuerySeqs::Dense => 0,
        };
        let (kv_mode, kv_total, pages, page_size, max_pages) = match problem.seqs.kv {
            KvSeqs::Dense => (KV_DENSE, 0, 0, 1, 0),
            KvSeqs::DenseWithLens => (KV_LENS, 0, 0, 1, 0),
            KvSeqs::Packed { total } => (KV_PACKED, total, 0, 1, 0),
            KvSeqs::Paged {
                pages,
                page_size,
                max_pages,
            } => (KV_PAGED, 0, pages, page_size, max_pages),
        };
        let word = |what: &str, n: usize| u32::try_from(n).map_err(|_| too_big(what));
        // The index tensors, in the order of `SeqIndices::slots` (a placeholder for each the
        // layout does not read).
        let [cu_q, cu_k, lens, table] = args.indices.slots().map(|(name, x)| match x {
            Some(x) => self.bind(name, x.buffer, 4, x.offset, x.offset + x.len as u64),
            None => Ok(placeholder()),
        });
        let (cu_q, cu_k, lens, table) = (cu_q?, cu_k?, lens?, table?);
        // β of Sigmoid left to the shader when each sequence has its own Nk_b.
        let bias_per_seq = matches!(problem.variant, Variant::Sigmoid { bias: None })
            && problem.seqs.kv != KvSeqs::Dense;
        let uniforms = Params {
            batch: s.batch as u32,
            q_heads: s.q_heads as u32,
            group: s.group_size() as u32,
            q_len: plan.q_len,
            kv_len: plan.kv_len,
            q_blocks: plan.q_blocks,
            scale: checked.scale(),
            softcap: checked.softcap().unwrap_or(0.0),
            sigmoid_bias: checked.sigmoid_bias(),
            zeta,
            gamma,
            q_offset: q.base,
            q_stride_b: q_strides[0],
            q_stride_n: q_strides[1],
            q_stride_h: q_strides[2],
            k_offset: k.base,
            k_stride_b: k_strides[0],
            k_stride_n: k_strides[1],
            k_stride_h: k_strides[2],
            v_offset: v.base,
            v_stride_b: v_strides[0],
            v_stride_n: v_strides[1],
            v_stride_h: v_strides[2],
            o_offset: o.base,
            o_stride_b: o_strides[0],
            o_stride_n: o_strides[1],
            o_stride_h: o_strides[2],
            lse_offset: lse.base,
            stats_offset: stats.as_ref().map_or(0, |b| b.base),
            key_mass_offset: key_mass.as_ref().map_or(0, |b| b.base),
            param_a_offset: param_a.base,
            param_b_offset: param_b.base,
            partials_offset: 0,
            kv_partials_offset: partials_len as u32,
            rows_offset: (partials_len + kv_partials_len) as u32,
            nan_bits: f32::NAN.to_bits(),
            neg_inf_bits: f32::NEG_INFINITY.to_bits(),
            window_left,
            window_right,
            q_packed: u32::from(matches!(problem.seqs.q, QuerySeqs::Packed { .. })),
            kv_mode,
            q_total,
            kv_total: word("total_k", kv_total)?,
            pages: word("pages", pages)?,
            page_size: word("page_size", page_size)?,
            max_pages: word("max_pages", max_pages)?,
            seqs_offset: word("the scratch buffer", seqs_offset)?,
            table_offset: word("the scratch buffer", seqs_offset + seqs_len)?,
            cu_q_offset: cu_q.base,
            cu_k_offset: cu_k.base,
            lens_offset: lens.base,
            block_table_offset: table.base,
            bias_per_seq: u32::from(bias_per_seq),
            splits: plan.splits,
            split_keys: plan.split_keys,
            split_offset: word("the scratch buffer", split_offset)?,
            one: 1,
            ..Params::default()
        };

        let seqs_pipeline = plan.seqs.map(|k| self.pipeline(&k));
        let forward = self.pipeline(&plan.forward);
        let split_combine = plan.split_combine.map(|k| self.pipeline(&k));
        let combine = plan.combine.map(|k| self.pipeline(&k));
        let key_mass_pipeline = plan.key_mass.map(|k| self.pipeline(&k));

        // The call's slot of the uniform ring; the write reaches the device with the next
        // submission, ahead of its commands.
        let slot = self.next_slot.fetch_add(1, Ordering::Relaxed) % UNIFORM_SLOTS;
        let dynamic_offset = slot * self.uniform_stride;
        self.queue.write_buffer(
            &self.uniforms,
            dynamic_offset,
            bytemuck::bytes_of(&uniforms),
        );
        let dynamic = [dynamic_offset as u32];
        let uniform_entry = ::wgpu::BindGroupEntry {
            binding: 0,
            resource: ::wgpu::BindingResource::Buffer(::wgpu::BufferBinding {
                buffer: &self.uniforms,
                offset: 0,
                size: NonZeroU64::new(std::mem::size_of::<Params>() as u64),
            }),
        };
        let forward_group = self.device.create_bind_group(&::wgpu::BindGroupDescriptor {
            label: Some("outlier-attn forward"),
            layout: &self.forward_layout,
            entries: &[
                uniform_entry.clone(),
                q.entry(1),
                k.entry(2),
                v.entry(3),
                o.entry(4),
                lse.entry(5),
                scratch_bound.entry(6),
                param_a.entry(7),
                param_b.entry(8),
            ],
        });
        let combine_group = stats.as_ref().map(|stats| {
            self.device.create_bind_group(&::wgpu::BindGroupDescriptor {
                label: Some("outlier-attn combine"),
                layout: &self.combine_layout,
                entries: &[
                    uniform_entry.clone(),
                    scratch_bound.entry(1),
                    stats.entry(2),
                ],
            })
        });
        let key_mass_group = key_mass.as_ref().map(|km| {
            self.device.create_bind_group(&::wgpu::BindGroupDescriptor {
                label: Some("outlier-attn key mass"),
                layout: &self.key_mass_layout,
                entries: &[
                    uniform_entry.clone(),
                    q.entry(1),
                    k.entry(2),
                    scratch_bound.entry(3),
                    km.entry(4),
                ],
            })
        });
        let seqs_group = seqs_pipeline.as_ref().map(|_| {
            self.device.create_bind_group(&::wgpu::BindGroupDescriptor {
                label: Some("outlier-attn sequences"),
                layout: &self.seqs_layout,
                entries: &[
                    uniform_entry.clone(),
                    cu_q.entry(1),
                    cu_k.entry(2),
                    lens.entry(3),
                    table.entry(4),
                    scratch_bound.entry(5),
                ],
            })
        });
        let mut pass = encoder.begin_compute_pass(&::wgpu::ComputePassDescriptor {
            label: Some("outlier-attn"),
            timestamp_writes,
        });
        if let (Some(pipeline), Some(group)) = (&seqs_pipeline, &seqs_group) {
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, group, &dynamic);
            pass.dispatch_workgroups((s.batch as u32).div_ceil(SEQS_THREADS), 1, 1);
        }
        pass.set_pipeline(&forward);
        pass.set_bind_group(0, &forward_group, &dynamic);
        pass.dispatch_workgroups(
            plan.q_blocks * plan.splits,
            s.kv_heads as u32,
            s.batch as u32,
        );
        // Split-KV: the forward pass's partials to O and the LSE (the same bindings).
        if let Some(pipeline) = &split_combine {
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, &forward_group, &dynamic);
            pass.dispatch_workgroups(plan.split_combine_groups, s.kv_heads as u32, s.batch as u32);
        }
        if let (Some(pipeline), Some(group)) = (&combine, &combine_group) {
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, group, &dynamic);
            pass.dispatch_workgroups(plan.heads.div_ceil(COMBINE_THREADS), 1, 1);
        }
        if let (Some(pipeline), Some(group)) = (&key_mass_pipeline, &key_mass_group) {
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, group, &dynamic);
            pass.dispatch_workgroups(plan.key_blocks, s.q_heads as u32, s.batch as u32);
        }
        Ok(())
    }
}

/// The forward kernel's shape on a device: invocations per workgroup ([`row_lanes`] per folded
/// query row), keys per K/V tile, keys held in registers at a time, and whether keys travel by
/// subgroup shuffles.
#[derive(Clone, Copy, Debug)]
struct ForwardGeometry {
    workgroup: u32,
    tile: u32,
    /// Lanes of a shuffle chunk (the tile on the workgroup-memory path).
    chunk: u32,
    keys_held: u32,
    shuffles: bool,
    /// A short workgroup (decode): its rows are few, so each lane group serves one.
    short: bool,
}

/// What one problem runs on a device: its kernels and grids.
struct Plan {
    forward: Kernel,
    combine: Option<Kernel>,
    key_mass: Option<Kernel>,
    /// The sequence pass, for calls that are not dense.
    seqs: Option<Kernel>,
    q_len: u32,
    kv_len: u32,
    /// Folded query blocks per (batch, kv head).
    q_blocks: u32,
    key_blocks: u32,
    heads: u32,
    /// Split-KV: splits of each row's keys (1: no split), keys per split (whole tiles), and
    /// the merge of the splits with its workgroups per (batch, kv head).
    splits: u32,
    split_keys: u32,
    split_combine: Option<Kernel>,
    split_combine_groups: u32,
}

impl Plan {
    fn kernels(&self) -> impl Iterator<Item = Kernel> {
        [
            self.seqs,
            Some(self.forward),
            self.split_combine,
            self.combine,
            self.key_mass,
        ]
        .into_iter()
        .flatten()
    }
}

/// Loop iterations of one invocation of the sequence pass (`seqs.wgsl`): two passes over the
/// cumulative lengths, one over the sequence's block table, each with its exit.
fn seqs_trips(problem: &Problem) -> u64 {
    let max_pages = match problem.seqs.kv {
        KvSeqs::Paged { max_pages, .. } => max_pages as u64,
        _ => 0,
    };
    2 * (problem.shape.batch as u64 + 1) + max_pages + 1
}

/// Shared ownership for the host level.
pub(crate) type SharedAttention = Arc<WgslAttention>;
