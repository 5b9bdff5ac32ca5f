//! The device-level API for engines: the caller's stream and buffers, asynchronous launches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::CUfunction_attribute_enum;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr,
    DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use cudarc::nvrtc::Ptx;
use half::{bf16, f16};

use super::kernels::{
    self, Arch, CHANNEL_ENTRY, CHANNEL_RECORD, CacheOutcome, FINALIZE_ENTRY, KEY_MASS_ENTRY,
    NvrtcVersion, PARTIAL_COUNT, SCAN_ROWS, STATS_THREADS, Specialization,
};
use super::params::{KernelParams, TensorLayout};
use super::{BACKEND, backend_error};
use crate::contract::{
    Args, BufferArg, DType, Element, Error, Gate, GateGranularity, Layouts, Mask, Problem, Result,
    TensorArg, Validated, Variant, validate,
};

/// An element type the CUDA kernels take: f32, f16 or bf16.
pub trait CudaElement: Element + DeviceRepr + ValidAsZeroBits {}
impl CudaElement for f32 {}
impl CudaElement for f16 {}
impl CudaElement for bf16 {}

/// The learned parameters on the device; a variant reads exactly those of
/// [`Variant::params`](crate::Variant::params).
pub struct DeviceParams<'a, T> {
    /// k′ `[Hq, d]`: ContextBias, KvSink.
    pub k_sink: Option<CudaView<'a, f32>>,
    /// v′ `[Hq, d]`: ContextBias, KvSink.
    pub v_sink: Option<CudaView<'a, f32>>,
    /// v′ `[Hq, d]`: ValueBias.
    pub v_bias: Option<CudaView<'a, f32>>,
    /// θ `[Hq]`: LogitSink.
    pub sink_logits: Option<CudaView<'a, f32>>,
    /// z `[B, Nq, Hq]` or `[B, Nq, Hq, d]`, dense, in the dtype of Q: ContextScale.
    pub gate: Option<CudaView<'a, T>>,
}

impl<T> Default for DeviceParams<'_, T> {
    fn default() -> Self {
        DeviceParams {
            k_sink: None,
            v_sink: None,
            v_bias: None,
            sink_logits: None,
            gate: None,
        }
    }
}

/// The buffers of one call. Q, K, V and O are strided views (`layouts`); LSE, statistics and
/// key mass are dense f32.
pub struct DeviceArgs<'a, T> {
    /// Q `[B, Nq, Hq, d]` as laid out by `layouts.q`.
    pub q: CudaView<'a, T>,
    /// K `[B, Nk, Hkv, d]`.
    pub k: CudaView<'a, T>,
    /// V `[B, Nk, Hkv, d]`.
    pub v: CudaView<'a, T>,
    /// O `[B, Nq, Hq, d]` as laid out by `layouts.o`.
    pub o: CudaViewMut<'a, T>,
    /// LSE `[B, Hq, Nq]`, always written.
    pub lse: CudaViewMut<'a, f32>,
    /// Statistics `[B, Hq, Stat::COUNT]`: present iff the level is `Heads` or `HeadsAndKeys`.
    pub stats: Option<CudaViewMut<'a, f32>>,
    /// Key mass `[B, Hq, Nk]`: present iff the level is `HeadsAndKeys`.
    pub key_mass: Option<CudaViewMut<'a, f32>>,
    /// Offsets and strides of Q, K, V, O, in elements.
    pub layouts: Layouts,
    /// The variant's learned tensors.
    pub params: DeviceParams<'a, T>,
}

/// Scratch memory reused from call to call, needed only with statistics: per-query-block
/// partial records, the row weights of ClippedSoftmax and the Q/K/V channel-scan chunks
/// (about 10·B·Hq·Nq/64 + B·Hq·Nq + 780·B·Hq·max(Nq, Nk)/128 floats). It grows when a call
/// needs more and is never shrunk; one workspace serves one stream at a time (calls take it
/// by `&mut`).
#[derive(Default)]
pub struct Workspace {
    buffer: Option<CudaSlice<f32>>,
}

impl Workspace {
    /// An empty workspace; the first call with statistics allocates it.
    pub fn new() -> Workspace {
        Workspace::default()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.buffer.as_ref().map_or(0, |b| b.len() * 4)
    }
}

/// The functions of one loaded module.
struct Kernels {
    forward: CudaFunction,
    channel: CudaFunction,
    finalize: CudaFunction,
    key_mass: CudaFunction,
    _module: Arc<CudaModule>,
    prepared: Prepared,
}

/// How one module got onto the device: what [`CudaAttention::prepare`] and
/// [`CudaAttention::prepare_model`] report.
#[derive(Clone, Debug, PartialEq)]
#[must_use = "a module cache that could not be written is reported here"]
pub struct Prepared {
    /// The specialisation.
    pub spec: Specialization,
    /// Read from the disk cache, compiled and stored, or compiled with the store failing.
    pub cache: CacheOutcome,
    /// Seconds NVRTC took when this process first loaded the module (0 for a cache hit).
    pub compile_seconds: f64,
}

/// Flash attention on one CUDA device: compiles its kernels on first use (NVRTC, cached in
/// memory and on disk) and launches them on the caller's streams.
///
/// `Send + Sync`: one instance serves every thread and stream of the device.
pub struct CudaAttention {
    ctx: Arc<CudaContext>,
    arch: Arch,
    nvrtc: NvrtcVersion,
    modules: Mutex<HashMap<Specialization, Arc<Kernels>>>,
}

impl CudaAttention {
    /// Attention kernels for the device of `ctx`.
    ///
    /// # Errors
    /// [`Error::Backend`] when libnvrtc is missing or the device cannot be queried.
    pub fn new(ctx: Arc<CudaContext>) -> Result<CudaAttention> {
        let nvrtc = kernels::nvrtc_version()
            .ok_or_else(|| backend_error(kernels::CompileError::NvrtcMissing.to_string()))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| backend_error(format!("cannot read the compute capability: {e}")))?;
        Ok(CudaAttention {
            ctx,
            arch: Arch {
                major: major as u32,
                minor: minor as u32,
            },
            nvrtc,
            modules: Mutex::new(HashMap::new()),
        })
    }

    /// The device's compute capability.
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// The NVRTC version that compiles the kernels.
    pub fn nvrtc_version(&self) -> NvrtcVersion {
        self.nvrtc
    }

    /// The context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The specialisation a problem of `dtype` and head dim `d` runs on this device.
    pub fn specialization(&self, dtype: DType, head_dim: usize) -> Specialization {
        Specialization::select(dtype, head_dim, self.arch)
    }

    /// Compiles (or reads from the disk cache) and loads the module of `spec`, once per
    /// process; later calls return the loaded one and report how it was first loaded.
    ///
    /// # Errors
    /// [`Error::Backend`] with NVRTC's log, or the driver's message.
    pub fn prepare(&self, spec: Specialization) -> Result<Prepared> {
        self.kernels(spec).map(|k| k.prepared.clone())
    }

    /// Loads, at start-up, every module a model of this dtype and head dim runs, so that no
    /// NVRTC compile happens inside its first forward. Variant, mask, softcap, scale and
    /// statistics level are kernel arguments, so this is one module, whatever the model's
    /// layers use. A cache that could not be written is in [`Prepared::cache`].
    ///
    /// # Errors
    /// [`Error::HeadDim`] for a head dim the contract refuses (not a multiple of
    /// [`HEAD_DIM_MULTIPLE`](crate::HEAD_DIM_MULTIPLE) up to
    /// [`MAX_HEAD_DIM`](crate::MAX_HEAD_DIM)); those of [`prepare`](Self::prepare).
    pub fn prepare_model(&self, dtype: DType, head_dim: usize) -> Result<Vec<Prepared>> {
        use crate::contract::{HEAD_DIM_MULTIPLE, MAX_HEAD_DIM};
        if head_dim == 0 || head_dim % HEAD_DIM_MULTIPLE != 0 || head_dim > MAX_HEAD_DIM {
            return Err(Error::HeadDim { head_dim });
        }
        Ok(vec![self.prepare(self.specialization(dtype, head_dim))?])
    }

    fn kernels(&self, spec: Specialization) -> Result<Arc<Kernels>> {
        if let Some(k) = self.lock_modules().get(&spec) {
            return Ok(k.clone());
        }
        // Compile without the lock, so that other specialisations are not held up; the insert
        // below keeps whichever module got there first.
        let compiled = kernels::compile_cached(spec, self.arch, self.nvrtc)
            .map_err(|e| backend_error(e.to_string()))?;
        let module = self
            .ctx
            .load_module(Ptx::from_binary(compiled.cubin))
            .map_err(|e| backend_error(format!("loading {spec} for {}: {e}", self.arch)))?;
        let function = |name: &str| {
            module
                .load_function(name)
                .map_err(|e| backend_error(format!("{spec}: no kernel {name}: {e}")))
        };
        let forward = function(spec.entry())?;
        let smem = spec.forward_smem_bytes(256);
        if smem > 48 * 1024 {
            forward
                .set_attribute(
                    CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    smem as i32,
                )
                .map_err(|e| {
                    backend_error(format!("{spec}: {smem} bytes of shared memory: {e}"))
                })?;
        }
        let kernels = Arc::new(Kernels {
            forward,
            channel: function(CHANNEL_ENTRY)?,
            finalize: function(FINALIZE_ENTRY)?,
            key_mass: function(KEY_MASS_ENTRY)?,
            _module: module,
            prepared: Prepared {
                spec,
                cache: compiled.cache,
                compile_seconds: compiled.compile_seconds,
            },
        });
        Ok(self.lock_modules().entry(spec).or_insert(kernels).clone())
    }

    fn lock_modules(&self) -> std::sync::MutexGuard<'_, HashMap<Specialization, Arc<Kernels>>> {
        // A panic while holding the lock cannot leave the map inconsistent (inserts are
        // single calls), so a poisoned lock is still usable.
        self.modules.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs one forward pass on `stream`: validates, then enqueues the kernels and returns
    /// without waiting for them. Outputs are ready when the stream reaches this point.
    ///
    /// # Errors
    /// Every refusal of [`validate`]; [`Error::Unsupported`] for more than 65535 (batch, head)
    /// pairs; [`Error::Backend`] for compilation or launch failures.
    pub fn forward<T: CudaElement>(
        &self,
        stream: &Arc<CudaStream>,
        problem: &Problem,
        mut args: DeviceArgs<'_, T>,
        workspace: &mut Workspace,
    ) -> Result<()> {
        let checked = validate(problem, &describe(&args))?;
        let s = checked.shape();
        let spec = self.specialization(problem.dtype, s.head_dim);
        let heads = s.batch * s.q_heads;
        let unsupported = |reason: String| Error::Unsupported {
            backend: BACKEND.to_string(),
            reason,
        };
        if heads > 65535 {
            return Err(unsupported(format!(
                "batch x heads = {heads}, above the grid limit 65535"
            )));
        }
        if [s.q_len, s.kv_len].iter().any(|&n| n > i32::MAX as usize) {
            return Err(unsupported("a sequence above 2^31 tokens".to_string()));
        }
        let kernels = self.kernels(spec)?;
        let m_blocks = s.q_len.div_ceil(spec.block_m());

        // Workspace: the forward kernel's partial records, the row weights of ClippedSoftmax,
        // then the channel scan's chunk records (stats.cu lays them out the same way).
        let stats_on = problem.stats.heads();
        let partials_len = heads * m_blocks * PARTIAL_COUNT;
        let rows_len = heads * s.q_len;
        let scan_chunks = s.q_len.max(s.kv_len).div_ceil(SCAN_ROWS);
        let chunks_len = heads * scan_chunks * CHANNEL_RECORD;
        let needed = if stats_on {
            partials_len + rows_len + chunks_len
        } else {
            0
        };
        if needed > 0 && workspace.buffer.as_ref().is_none_or(|b| b.len() < needed) {
            workspace.buffer = None;
            workspace.buffer = Some(
                stream
                    .alloc_zeros::<f32>(needed)
                    .map_err(|e| backend_error(format!("workspace of {needed} floats: {e}")))?,
            );
        }

        let mut p = kernel_params(&checked, m_blocks);
        // Device addresses; each guard records the buffer's use on this stream when dropped,
        // after the launches below.
        let (q_ptr, _q) = args.q.device_ptr(stream);
        let (k_ptr, _k) = args.k.device_ptr(stream);
        let (v_ptr, _v) = args.v.device_ptr(stream);
        let (o_ptr, _o) = args.o.device_ptr_mut(stream);
        let (lse_ptr, _lse) = args.lse.device_ptr_mut(stream);
        p.q = q_ptr;
        p.k = k_ptr;
        p.v = v_ptr;
        p.o = o_ptr;
        p.lse = lse_ptr;
        let mut guards = Vec::new();
        let params = &args.params;
        for (slot, view) in [
            (&mut p.k_sink, params.k_sink.as_ref()),
            (
                &mut p.v_param,
                params.v_sink.as_ref().or(params.v_bias.as_ref()),
            ),
            (&mut p.sink_logits, params.sink_logits.as_ref()),
        ] {
            if let Some(view) = view {
                let (ptr, guard) = view.device_ptr(stream);
                *slot = ptr;
                guards.push(guard);
            }
        }
        let gate_guard = params.gate.as_ref().map(|g| {
            let (ptr, guard) = g.device_ptr(stream);
            p.gate = ptr;
            guard
        });
        let stats_guard = args.stats.as_mut().map(|st| {
            let (ptr, guard) = st.device_ptr_mut(stream);
            p.stats = ptr;
            guard
        });
        let key_mass_guard = args.key_mass.as_mut().map(|km| {
            let (ptr, guard) = km.device_ptr_mut(stream);
            p.key_mass = ptr;
            guard
        });
        let workspace_guard = match workspace.buffer.as_mut() {
            Some(buf) if stats_on => {
                let (ptr, guard) = buf.device_ptr_mut(stream);
                p.partials = ptr;
                p.row_weight_sum = ptr + (partials_len * 4) as u64;
                Some(guard)
            }
            _ => None,
        };
        // cp.async moves 16 bytes: every row of Q, K, V must start 16-byte aligned.
        let elem = problem.dtype.size_bytes() as u64;
        p.aligned = [(q_ptr, &p.lq), (k_ptr, &p.lk), (v_ptr, &p.lv)]
            .iter()
            .all(|(ptr, l)| {
                ptr % 16 == 0
                    && [l.offset, l.batch, l.seq, l.head]
                        .iter()
                        .all(|&x| x.wrapping_mul(elem) % 16 == 0)
            }) as i32;

        let launch = |func: &CudaFunction, grid: (u32, u32), threads: u32, smem: usize| {
            let cfg = LaunchConfig {
                grid_dim: (grid.0, grid.1, 1),
                block_dim: (threads, 1, 1),
                shared_mem_bytes: smem as u32,
            };
            let mut builder = stream.launch_builder(func);
            builder.arg(&p);
            // SAFETY: the kernel takes one AttnParams by value, which KernelParams mirrors;
            // every address in it is a live device buffer of the size `validate` checked
            // (or 0 where the variant or level reads nothing), and the buffers outlive the
            // launch because `args` and the workspace are borrowed for this whole call.
            unsafe { builder.launch(cfg) }
                .map(|_| ())
                .map_err(|e| backend_error(format!("launch of {spec}: {e}")))
        };
        let to_u32 = |x: usize| u32::try_from(x).map_err(|_| unsupported(format!("grid of {x}")));
        launch(
            &kernels.forward,
            (to_u32(m_blocks)?, heads as u32),
            spec.threads(),
            spec.forward_smem_bytes(s.head_dim),
        )?;
        if stats_on {
            launch(
                &kernels.channel,
                (to_u32(scan_chunks)?, heads as u32),
                STATS_THREADS,
                0,
            )?;
            launch(&kernels.finalize, (heads as u32, 1), STATS_THREADS, 0)?;
        }
        if problem.stats.keys() {
            launch(
                &kernels.key_mass,
                (
                    to_u32(s.kv_len.div_ceil(kernels::KEY_MASS_KEYS))?,
                    heads as u32,
                ),
                STATS_THREADS,
                kernels::key_mass_smem_bytes(s.head_dim),
            )?;
        }
        drop((
            guards,
            gate_guard,
            stats_guard,
            key_mass_guard,
            workspace_guard,
        ));
        Ok(())
    }
}

/// The validation view of device buffers.
fn describe<T: CudaElement>(args: &DeviceArgs<'_, T>) -> Args {
    let tensor = |len: usize, layout| TensorArg {
        dtype: T::DTYPE,
        len,
        layout,
    };
    let f32_buffer = |len: usize| BufferArg {
        dtype: DType::F32,
        len,
    };
    Args {
        q: tensor(args.q.len(), args.layouts.q),
        k: tensor(args.k.len(), args.layouts.k),
        v: tensor(args.v.len(), args.layouts.v),
        o: tensor(args.o.len(), args.layouts.o),
        lse: f32_buffer(args.lse.len()),
        stats: args.stats.as_ref().map(|s| f32_buffer(s.len())),
        key_mass: args.key_mass.as_ref().map(|s| f32_buffer(s.len())),
        params: crate::contract::Params {
            k_sink: args.params.k_sink.as_ref().map(|x| f32_buffer(x.len())),
            v_sink: args.params.v_sink.as_ref().map(|x| f32_buffer(x.len())),
            v_bias: args.params.v_bias.as_ref().map(|x| f32_buffer(x.len())),
            sink_logits: args
                .params
                .sink_logits
                .as_ref()
                .map(|x| f32_buffer(x.len())),
            gate: args.params.gate.as_ref().map(|x| BufferArg {
                dtype: T::DTYPE,
                len: x.len(),
            }),
        },
    }
}

/// The scalar part of the kernel arguments, from a validated problem.
fn kernel_params(checked: &Validated, m_blocks: usize) -> KernelParams {
    let problem = checked.problem();
    let s = checked.shape();
    let l = checked.layouts();
    let (mut zeta, mut gamma) = (1.0, 0.0);
    let (mut gate_kind, mut per_channel) = (0, 0);
    let variant = match problem.variant {
        Variant::Softmax => 0,
        Variant::ValueBias => 1,
        Variant::ContextBias => 2,
        Variant::KvSink => 3,
        Variant::ContextScale { gate, granularity } => {
            gate_kind = match gate {
                Gate::TwoSigmoid => 0,
                Gate::Sigmoid => 1,
                Gate::Identity => 2,
            };
            per_channel = (granularity == GateGranularity::PerChannel) as i32;
            4
        }
        Variant::Sigmoid { .. } => 5,
        Variant::LogitSink => 6,
        Variant::Softmax1 => 7,
        Variant::ClippedSoftmax { zeta: z, gamma: g } => {
            (zeta, gamma) = (z, g);
            8
        }
    };
    // `forward` refused sequences above 2^31; heads fit the grid limit; d <= 256.
    let int = |x: usize| x as i32;
    KernelParams {
        lq: TensorLayout::from(&l.q),
        lk: TensorLayout::from(&l.k),
        lv: TensorLayout::from(&l.v),
        lo: TensorLayout::from(&l.o),
        batch: int(s.batch),
        q_heads: int(s.q_heads),
        kv_heads: int(s.kv_heads),
        q_len: int(s.q_len),
        kv_len: int(s.kv_len),
        head_dim: int(s.head_dim),
        group: int(s.group_size()),
        variant,
        causal: (problem.mask == Mask::Causal) as i32,
        has_softcap: checked.softcap().is_some() as i32,
        gate_kind,
        gate_per_channel: per_channel,
        aligned: 0,
        m_blocks: int(m_blocks),
        scale: checked.scale(),
        softcap: checked.softcap().unwrap_or(1.0),
        sigmoid_bias: checked.sigmoid_bias(),
        clip_zeta: zeta,
        clip_gamma: gamma,
        stats_on: problem.stats.heads() as i32,
        ..KernelParams::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Shape;
    use crate::cases::{InputSpec, random_inputs};

    fn params_of(problem: &Problem) -> KernelParams {
        let inputs = random_inputs(problem, &InputSpec::default());
        let checked = inputs.validate(problem).expect("valid");
        kernel_params(&checked, 3)
    }

    /// The codes must follow `VariantCode` and `GateCode` in cuda/common.cuh.
    #[test]
    fn variants_and_scalars_reach_the_kernel_arguments() {
        let shape = Shape::new(2, 4, 2, 5, 7, 24);
        let base = Problem::new(shape, DType::F16);
        let codes: Vec<i32> = Variant::all_default()
            .iter()
            .map(|&v| params_of(&base.with_variant(v)).variant)
            .collect();
        assert_eq!(codes, (0..9).collect::<Vec<_>>());

        let p = params_of(
            &base
                .with_variant(Variant::ContextScale {
                    gate: Gate::Identity,
                    granularity: GateGranularity::PerChannel,
                })
                .with_mask(Mask::Causal)
                .with_softcap(30.0)
                .with_stats(crate::StatsLevel::Heads),
        );
        assert_eq!((p.gate_kind, p.gate_per_channel), (2, 1));
        assert_eq!((p.causal, p.has_softcap, p.softcap), (1, 1, 30.0));
        assert_eq!((p.group, p.m_blocks, p.stats_on), (2, 3, 1));
        assert_eq!(p.scale, 1.0 / 24f32.sqrt());

        let p = params_of(&base.with_variant(Variant::ClippedSoftmax {
            zeta: 1.1,
            gamma: -0.05,
        }));
        assert_eq!((p.clip_zeta, p.clip_gamma), (1.1, -0.05));
        let p = params_of(&base.with_variant(Variant::Sigmoid { bias: None }));
        assert_eq!(p.sigmoid_bias, -(7f32).ln());
        assert_eq!(
            p.lk.seq,
            (2 * 24) as u64,
            "K strides come from its own layout"
        );
    }
}
