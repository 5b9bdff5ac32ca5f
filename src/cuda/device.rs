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

use super::backend_error;
use super::kernels::{
    self, Arch, CacheOutcome, FINALIZE_ENTRY, KEY_MASS_ENTRY, NvrtcVersion, Specialization,
};
use super::plan::{Addresses, LaunchPlan, PlanOptions, SplitKv};
use super::spec::COMBINE_ENTRY;
use crate::contract::{
    Args, BufferArg, DType, Element, Layouts, Problem, Result, SeqIndices, TensorArg, validate,
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
/// key mass are dense f32. Shapes are those of the problem's sequence layout
/// ([`Problem::tensor_dims`]): packed Q is `[total_q, Hq, d]`, a paged cache `[pages,
/// page_size, Hkv, d]`, and so on (DESIGN.md section 6).
pub struct DeviceArgs<'a, T> {
    /// Q `[B, Nq, Hq, d]` (packed: `[total_q, Hq, d]`) as laid out by `layouts.q`.
    pub q: CudaView<'a, T>,
    /// K `[B, Nk, Hkv, d]` (packed `[total_k, Hkv, d]`, paged `[pages, page_size, Hkv, d]`).
    pub k: CudaView<'a, T>,
    /// V, shaped as K.
    pub v: CudaView<'a, T>,
    /// O in Q's shape, as laid out by `layouts.o`.
    pub o: CudaViewMut<'a, T>,
    /// LSE `[B, Hq, Nq]` (packed Q: `[Hq, total_q]`), or `None` when the engine does not want
    /// it ([`EngineFeature::NoLse`](crate::EngineFeature::NoLse)): statistics, key mass and
    /// split-KV need no LSE buffer (the key-mass kernel reads each row's max and 1/l from the
    /// workspace).
    pub lse: Option<CudaViewMut<'a, f32>>,
    /// Statistics `[B, Hq, Stat::COUNT]`: present iff the level is `Heads` or `HeadsAndKeys`.
    pub stats: Option<CudaViewMut<'a, f32>>,
    /// Key mass ([`Problem::key_mass_len`]): present iff the level is `HeadsAndKeys`.
    pub key_mass: Option<CudaViewMut<'a, f32>>,
    /// Offsets and strides of Q, K, V, O and of parameters given as views, in elements.
    pub layouts: Layouts,
    /// The variant's learned tensors.
    pub params: DeviceParams<'a, T>,
    /// The i32 index tensors the sequence layout reads, on the device. Their values are not
    /// checked before the kernels run: the kernels clamp every index they read, and rows that
    /// read a bad one come out NaN (crate docs, "Bad index tensors on the device").
    pub indices: SeqIndices<CudaView<'a, i32>>,
}

/// Scratch memory reused from call to call, needed with statistics and with split-KV: the
/// per-block partial statistics records, with `HeadsAndKeys` one record per query row for the
/// key-mass kernel, and with split-KV each row's split partials;
/// [`WorkspaceLayout`](super::WorkspaceLayout) gives the size formula (without split-KV it
/// never depends on Nk). A call grows it when it needs more and never shrinks it; one
/// workspace serves one stream at a time (calls take it by `&mut`).
///
/// To capture a forward pass in a CUDA graph, size it before the first call with
/// [`reserve`](Workspace::reserve) and the largest
/// [`WorkspaceLayout::for_problem`](super::WorkspaceLayout::for_problem) over the calls the
/// engine will make (at their largest key length): calls that fit allocate nothing.
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

    /// Makes it hold at least `floats` floats, allocating on `stream` if it holds fewer.
    ///
    /// # Errors
    /// [`Error::Backend`](crate::Error::Backend) when the allocation fails.
    pub fn reserve(&mut self, stream: &Arc<CudaStream>, floats: usize) -> Result<()> {
        if floats > 0 && self.buffer.as_ref().is_none_or(|b| b.len() < floats) {
            self.buffer = None;
            self.buffer = Some(
                stream
                    .alloc_zeros::<f32>(floats)
                    .map_err(|e| backend_error(format!("workspace of {floats} floats: {e}")))?,
            );
        }
        Ok(())
    }
}

/// The functions of one loaded module.
struct Kernels {
    forward: Vec<(&'static str, CudaFunction)>,
    finalize: CudaFunction,
    key_mass: CudaFunction,
    combine: Option<CudaFunction>,
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

impl Kernels {
    /// The function of a plan's launch.
    fn function(&self, entry: &str) -> Result<&CudaFunction> {
        match entry {
            FINALIZE_ENTRY => Ok(&self.finalize),
            KEY_MASS_ENTRY => Ok(&self.key_mass),
            COMBINE_ENTRY => self
                .combine
                .as_ref()
                .ok_or_else(|| backend_error(format!("no kernel {entry} in the module"))),
            other => self
                .forward
                .iter()
                .find(|(name, _)| *name == other)
                .map(|(_, f)| f)
                .ok_or_else(|| backend_error(format!("no kernel {other} in the module"))),
        }
    }
}

/// Flash attention on one CUDA device: compiles its kernels on first use (NVRTC, cached in
/// memory and on disk) and launches them on the caller's streams.
///
/// `Send + Sync`: one instance serves every thread and stream of the device.
pub struct CudaAttention {
    ctx: Arc<CudaContext>,
    arch: Arch,
    options: PlanOptions,
    nvrtc: NvrtcVersion,
    modules: Mutex<HashMap<Specialization, Arc<Kernels>>>,
}

impl CudaAttention {
    /// Attention kernels for the device of `ctx`.
    ///
    /// # Errors
    /// [`Error::Backend`](crate::Error::Backend) when libnvrtc is missing or the device cannot be queried.
    pub fn new(ctx: Arc<CudaContext>) -> Result<CudaAttention> {
        let nvrtc = kernels::nvrtc_version()
            .ok_or_else(|| backend_error(kernels::CompileError::NvrtcMissing.to_string()))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| backend_error(format!("cannot read the compute capability: {e}")))?;
        let arch = Arch {
            major: major as u32,
            minor: minor as u32,
        };
        let multiprocessors = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_err(|e| backend_error(format!("cannot read the multiprocessor count: {e}")))?;
        Ok(CudaAttention {
            ctx,
            arch,
            options: PlanOptions {
                split_kv: SplitKv::Auto,
                multiprocessors: multiprocessors.max(1) as u32,
            },
            nvrtc,
            modules: Mutex::new(HashMap::new()),
        })
    }

    /// The device's compute capability.
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// With split-KV forced on or off, or chunked ([`SplitKv`]); the automatic split by
    /// default.
    pub fn with_split_kv(self, split_kv: SplitKv) -> CudaAttention {
        CudaAttention {
            options: self.options.with_split_kv(split_kv),
            ..self
        }
    }

    /// The plan options: the split setting and the device's multiprocessors.
    pub fn plan_options(&self) -> &PlanOptions {
        &self.options
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
    /// [`Error::Backend`](crate::Error::Backend) with NVRTC's log, or the driver's message.
    pub fn prepare(&self, spec: Specialization) -> Result<Prepared> {
        self.kernels(spec).map(|k| k.prepared.clone())
    }

    /// Loads, at start-up, every module a model of this dtype and head dim runs, so that no
    /// NVRTC compile happens inside its first forward. Variant, mask, softcap, scale and
    /// statistics level are kernel arguments, so this is one module, whatever the model's
    /// layers use. A cache that could not be written is in [`Prepared::cache`].
    ///
    /// # Errors
    /// [`Error::HeadDim`](crate::Error::HeadDim) for a head dim the contract refuses (not a multiple of
    /// [`HEAD_DIM_MULTIPLE`](crate::HEAD_DIM_MULTIPLE) up to
    /// [`MAX_HEAD_DIM`](crate::MAX_HEAD_DIM)); those of [`prepare`](Self::prepare).
    pub fn prepare_model(&self, dtype: DType, head_dim: usize) -> Result<Vec<Prepared>> {
        use crate::contract::{HEAD_DIM_MULTIPLE, MAX_HEAD_DIM};
        if head_dim == 0 || head_dim % HEAD_DIM_MULTIPLE != 0 || head_dim > MAX_HEAD_DIM {
            return Err(crate::Error::HeadDim { head_dim });
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
        let forward = spec
            .forward_entries()
            .iter()
            .map(|&name| Ok((name, function(name)?)))
            .collect::<Result<Vec<_>>>()?;
        let key_mass = function(KEY_MASS_ENTRY)?;
        let smem_needs = forward
            .iter()
            .map(|(_, f)| (f, LaunchPlan::max_forward_smem(spec)))
            .chain([(&key_mass, spec.key_mass_smem_bytes())]);
        for (f, smem) in smem_needs {
            if smem > 48 * 1024 {
                f.set_attribute(
                    CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    smem as i32,
                )
                .map_err(|e| {
                    backend_error(format!("{spec}: {smem} bytes of shared memory: {e}"))
                })?;
            }
        }
        let kernels = Arc::new(Kernels {
            forward,
            finalize: function(FINALIZE_ENTRY)?,
            key_mass,
            combine: spec
                .splits_kv()
                .then(|| function(COMBINE_ENTRY))
                .transpose()?,
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

    /// Runs one forward pass on `stream`: validates, then enqueues the kernels of its
    /// [`LaunchPlan`] and returns without waiting for them. Outputs are ready when the stream
    /// reaches this point.
    ///
    /// # Errors
    /// Every refusal of [`validate`]; [`Error::Unsupported`](crate::Error::Unsupported) for more than 65535
    /// query heads or sequences; [`Error::Backend`](crate::Error::Backend) for compilation or launch failures.
    pub fn forward<T: CudaElement>(
        &self,
        stream: &Arc<CudaStream>,
        problem: &Problem,
        mut args: DeviceArgs<'_, T>,
        workspace: &mut Workspace,
    ) -> Result<()> {
        let checked = validate(problem, &describe(&args))?;
        let plan = LaunchPlan::with_options(&checked, self.arch, &self.options)?;
        let spec = plan.spec;
        let kernels = self.kernels(spec)?;

        let needed = plan.workspace.len();
        workspace.reserve(stream, needed)?;

        // Device addresses; each guard records the buffer's use on this stream when dropped,
        // after the launches below.
        let mut a = Addresses::default();
        let (q_ptr, _q) = args.q.device_ptr(stream);
        let (k_ptr, _k) = args.k.device_ptr(stream);
        let (v_ptr, _v) = args.v.device_ptr(stream);
        let (o_ptr, _o) = args.o.device_ptr_mut(stream);
        (a.q, a.k, a.v, a.o) = (q_ptr, k_ptr, v_ptr, o_ptr);
        let lse_guard = args.lse.as_mut().map(|lse| {
            let (ptr, guard) = lse.device_ptr_mut(stream);
            a.lse = ptr;
            guard
        });
        let mut guards = Vec::new();
        let params = &args.params;
        for (slot, view) in [
            (&mut a.k_sink, params.k_sink.as_ref()),
            (
                &mut a.v_param,
                params.v_sink.as_ref().or(params.v_bias.as_ref()),
            ),
            (&mut a.sink_logits, params.sink_logits.as_ref()),
        ] {
            if let Some(view) = view {
                let (ptr, guard) = view.device_ptr(stream);
                *slot = ptr;
                guards.push(guard);
            }
        }
        for (slot, view) in [
            (&mut a.cu_seqlens_q, args.indices.cu_seqlens_q.as_ref()),
            (&mut a.cu_seqlens_k, args.indices.cu_seqlens_k.as_ref()),
            (&mut a.seqlens_k, args.indices.seqlens_k.as_ref()),
            (&mut a.block_table, args.indices.block_table.as_ref()),
        ] {
            if let Some(view) = view {
                let (ptr, guard) = view.device_ptr(stream);
                *slot = ptr;
                guards.push(guard);
            }
        }
        let gate_guard = params.gate.as_ref().map(|g| {
            let (ptr, guard) = g.device_ptr(stream);
            a.gate = ptr;
            guard
        });
        let stats_guard = args.stats.as_mut().map(|st| {
            let (ptr, guard) = st.device_ptr_mut(stream);
            a.stats = ptr;
            guard
        });
        let key_mass_guard = args.key_mass.as_mut().map(|km| {
            let (ptr, guard) = km.device_ptr_mut(stream);
            a.key_mass = ptr;
            guard
        });
        let workspace_guard = match workspace.buffer.as_mut() {
            Some(buf) if needed > 0 => {
                let (ptr, guard) = buf.device_ptr_mut(stream);
                a.workspace = ptr;
                Some(guard)
            }
            _ => None,
        };
        let p = plan.arguments(&a);

        for l in &plan.launches {
            let cfg = LaunchConfig {
                grid_dim: (l.grid[0], l.grid[1], l.grid[2]),
                block_dim: (l.threads, 1, 1),
                shared_mem_bytes: l.dynamic_smem as u32,
            };
            let mut builder = stream.launch_builder(kernels.function(l.entry)?);
            builder.arg(&p);
            // SAFETY: the kernel takes one AttnParams by value, which KernelParams mirrors;
            // every address in it is a live device buffer of the size `validate` checked
            // (or 0 where the variant or level reads nothing), the workspace holds what the
            // plan lays out, and the buffers outlive the launch because `args` and the
            // workspace are borrowed for this whole call.
            unsafe { builder.launch(cfg) }
                .map(|_| ())
                .map_err(|e| backend_error(format!("launch of {} in {spec}: {e}", l.entry)))?;
        }
        drop((
            guards,
            lse_guard,
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
        lse: args.lse.as_ref().map(|x| f32_buffer(x.len())),
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
        param_layouts: args.layouts.params,
        indices: args.indices.map(CudaView::len),
    }
}
