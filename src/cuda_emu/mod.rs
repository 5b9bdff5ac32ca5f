//! The CUDA kernels on the CPU (feature `cuda-emulator`, backend `cuda-emu`): the very sources
//! of cuda/*.cu, built for the host by the C++ compiler (g++) against an emulator of the CUDA
//! subset they use (cuda/emu), launched through the same [`LaunchPlan`] and argument bytes as
//! on a GPU. Needs neither CUDA nor a GPU, so every CI run executes the CUDA kernels.
//!
//! The emulator runs each block's threads as fibers under a deterministic scheduler, so
//! `__syncthreads` and warp collectives wait for each other as on a GPU; it implements the
//! PTX the kernels use (ldmatrix, mma.sync m16n8k16, cp.async with its groups, the cvt packs)
//! from the PTX ISA, and faults, naming the kernel, block and thread, on what a GPU would
//! fault on or silently get wrong: a global access outside the buffers of the launch, shared
//! memory out of range, a cp.async destination read before its wait_group, a `__syncthreads`
//! or a warp collective that some thread never reaches, and a shared-memory race (two threads
//! touching the same bytes, one writing, with no `__syncthreads` or `__syncwarp` of both
//! between).
//!
//! What it cannot show: speed (it is about a million times slower than a GPU), races in global
//! memory or those only a weaker memory model exposes (execution is sequential and
//! deterministic), and the driver's behaviour (module loading, resource limits, launch
//! failures). When a GPU and the emulator
//! disagree, the GPU is right. [`discover`](crate::discover) lists the backend only when it is
//! asked for by name, never as the best one.
//!
//! - [`EmuModule`]: build any kernel source for the host (cached on disk) and launch it.
//! - [`EmuAttention`]: the device-level API over host memory, as `CudaAttention` over device
//!   memory: the caller's buffers (strided views included) and a reusable [`EmuWorkspace`].
//! - [`EmuBackend`]: the host-level [`Backend`].

mod module;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub use module::{COMPILER_FLAGS, EmuBuffer, EmuError, EmuModule, compiler, compiler_version};

use crate::contract::{
    Args, Backend, BufferArg, DType, Element, Error, HostInputs, HostOutputs, HostTensor, Layouts,
    Problem, Result, SeqIndices, TensorArg, validate,
};
use crate::cuda::{Addresses, Arch, LaunchPlan, PlanOptions, Specialization};
use crate::parity;

/// The backend's name.
pub const BACKEND: &str = "cuda-emu";

fn backend_error(message: String) -> Error {
    Error::Backend {
        backend: BACKEND.to_string(),
        message,
    }
}

/// The kernels of one specialisation, built for the host.
pub fn build(spec: Specialization) -> std::result::Result<Arc<EmuModule>, EmuError> {
    EmuModule::build(&spec.name(), &spec.source(), &spec.entries())
}

/// The learned parameters in host memory; a variant reads exactly those of
/// [`Variant::params`](crate::Variant::params).
pub struct EmuParams<'a, T> {
    /// k′ `[Hq, d]`: ContextBias, KvSink.
    pub k_sink: Option<&'a [f32]>,
    /// v′ `[Hq, d]`: ContextBias, KvSink.
    pub v_sink: Option<&'a [f32]>,
    /// v′ `[Hq, d]`: ValueBias.
    pub v_bias: Option<&'a [f32]>,
    /// θ `[Hq]`: LogitSink.
    pub sink_logits: Option<&'a [f32]>,
    /// z `[B, Nq, Hq]` or `[B, Nq, Hq, d]`, dense, in the dtype of Q: ContextScale.
    pub gate: Option<&'a [T]>,
}

impl<T> Default for EmuParams<'_, T> {
    fn default() -> Self {
        EmuParams {
            k_sink: None,
            v_sink: None,
            v_bias: None,
            sink_logits: None,
            gate: None,
        }
    }
}

/// The buffers of one call, as `DeviceArgs` of the CUDA backend but in host memory, in the
/// shapes of the problem's sequence layout.
pub struct EmuArgs<'a, T> {
    /// Q `[B, Nq, Hq, d]` (packed: `[total_q, Hq, d]`) as laid out by `layouts.q`.
    pub q: &'a [T],
    /// K `[B, Nk, Hkv, d]` (packed `[total_k, Hkv, d]`, paged `[pages, page_size, Hkv, d]`).
    pub k: &'a [T],
    /// V, shaped as K.
    pub v: &'a [T],
    /// O in Q's shape, as laid out by `layouts.o`.
    pub o: &'a mut [T],
    /// LSE `[B, Hq, Nq]` (packed Q: `[Hq, total_q]`), or `None` when the caller does not want
    /// it ([`EngineFeature::NoLse`](crate::EngineFeature::NoLse)): statistics, key mass and
    /// split-KV need no LSE buffer (the key-mass kernel reads each row's max and 1/l from the
    /// workspace).
    pub lse: Option<&'a mut [f32]>,
    /// Statistics `[B, Hq, Stat::COUNT]`: present iff the level is `Heads` or `HeadsAndKeys`.
    pub stats: Option<&'a mut [f32]>,
    /// Key mass ([`Problem::key_mass_len`]): present iff the level is `HeadsAndKeys`.
    pub key_mass: Option<&'a mut [f32]>,
    /// Offsets and strides of Q, K, V, O and of parameters given as views, in elements.
    pub layouts: Layouts,
    /// The variant's learned tensors.
    pub params: EmuParams<'a, T>,
    /// The i32 index tensors the sequence layout reads, unchecked as on a device: the
    /// kernels clamp every index they read (crate docs, "Bad index tensors on the device").
    pub indices: SeqIndices<&'a [i32]>,
}

/// Scratch memory reused from call to call (the statistics' partial records, as the CUDA
/// backend's `Workspace`); grows when a call needs more, never shrinks. Sized in advance with
/// [`reserve`](EmuWorkspace::reserve) and
/// [`WorkspaceLayout::for_problem`](crate::cuda::WorkspaceLayout::for_problem), as an engine
/// sizes the CUDA one.
#[derive(Default)]
pub struct EmuWorkspace {
    buffer: Vec<f32>,
}

impl EmuWorkspace {
    /// An empty workspace.
    pub fn new() -> EmuWorkspace {
        EmuWorkspace::default()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.buffer.len() * 4
    }

    /// Makes it hold at least `floats` floats.
    pub fn reserve(&mut self, floats: usize) {
        if self.buffer.len() < floats {
            self.buffer = vec![0.0; floats];
        }
    }
}

/// The CUDA kernels on the emulator, for one emulated architecture (sm_80 by default: f16
/// and bf16 on the tensor-core kernel, f32 on the SIMT one; below sm_80 every dtype runs the
/// SIMT kernel, as on such a GPU).
pub struct EmuAttention {
    arch: Arch,
    options: PlanOptions,
    modules: Mutex<HashMap<Specialization, Arc<EmuModule>>>,
}

impl EmuAttention {
    /// The emulator for sm_80.
    ///
    /// # Errors
    /// [`Error::Backend`] when the C++ compiler is missing.
    pub fn new() -> Result<EmuAttention> {
        EmuAttention::with_arch(Arch::SM80)
    }

    /// The emulator for the kernel paths of `arch`.
    ///
    /// # Errors
    /// [`Error::Backend`] when the C++ compiler is missing.
    pub fn with_arch(arch: Arch) -> Result<EmuAttention> {
        compiler_version().map_err(|e| backend_error(e.to_string()))?;
        Ok(EmuAttention {
            arch,
            options: PlanOptions::for_arch(arch),
            modules: Mutex::new(HashMap::new()),
        })
    }

    /// With other plan options (split-KV forced on or off; the multiprocessors the split
    /// heuristic assumes, [`Arch::typical_multiprocessors`] by default).
    pub fn with_plan_options(self, options: PlanOptions) -> EmuAttention {
        EmuAttention { options, ..self }
    }

    /// The plan options.
    pub fn plan_options(&self) -> &PlanOptions {
        &self.options
    }

    /// The emulated architecture.
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// The specialisation a problem of `dtype` and head dim `d` runs.
    pub fn specialization(&self, dtype: DType, head_dim: usize) -> Specialization {
        Specialization::select(dtype, head_dim, self.arch)
    }

    /// Builds (or loads from the disk cache) the module of `spec`, once per process.
    ///
    /// # Errors
    /// [`Error::Backend`] with the compiler's output.
    pub fn prepare(&self, spec: Specialization) -> Result<()> {
        self.module(spec).map(|_| ())
    }

    fn module(&self, spec: Specialization) -> Result<Arc<EmuModule>> {
        if let Some(m) = self.lock().get(&spec) {
            return Ok(m.clone());
        }
        let m = build(spec).map_err(|e| backend_error(e.to_string()))?;
        Ok(self.lock().entry(spec).or_insert(m).clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Specialization, Arc<EmuModule>>> {
        // Inserts are single calls: a poisoned map is still consistent.
        self.modules.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs one forward pass: validates, then runs the kernels of its [`LaunchPlan`] on the
    /// emulator, in order, and returns when they are done.
    ///
    /// # Errors
    /// Every refusal of [`validate`]; [`Error::Unsupported`] for what the CUDA kernels cannot
    /// launch; [`Error::Backend`] for a build failure or a kernel fault (the message names
    /// the kernel, block and thread).
    pub fn forward<T: Element>(
        &self,
        problem: &Problem,
        args: EmuArgs<'_, T>,
        workspace: &mut EmuWorkspace,
    ) -> Result<()> {
        let checked = validate(problem, &describe(&args))?;
        let plan = LaunchPlan::with_options(&checked, self.arch, &self.options)?;
        let module = self.module(plan.spec)?;
        let needed = plan.workspace.len();
        workspace.reserve(needed);

        let p = &args.params;
        let mut buffers = vec![
            EmuBuffer::input("q", args.q),
            EmuBuffer::input("k", args.k),
            EmuBuffer::input("v", args.v),
            EmuBuffer::output("o", args.o),
        ];
        let mut a = Addresses {
            q: buffers[0].addr(),
            k: buffers[1].addr(),
            v: buffers[2].addr(),
            o: buffers[3].addr(),
            ..Addresses::default()
        };
        let mut add = |slot: &mut u64, buffer| {
            *slot = EmuBuffer::addr(&buffer);
            buffers.push(buffer);
        };
        if let Some(x) = args.lse {
            add(&mut a.lse, EmuBuffer::output("lse", x));
        }
        if let Some(x) = p.k_sink {
            add(&mut a.k_sink, EmuBuffer::input("k_sink", x));
        }
        if let Some(x) = p.v_sink {
            add(&mut a.v_param, EmuBuffer::input("v_sink", x));
        }
        if let Some(x) = p.v_bias {
            add(&mut a.v_param, EmuBuffer::input("v_bias", x));
        }
        if let Some(x) = p.sink_logits {
            add(&mut a.sink_logits, EmuBuffer::input("sink_logits", x));
        }
        if let Some(x) = p.gate {
            add(&mut a.gate, EmuBuffer::input("gate", x));
        }
        let ix = &args.indices;
        for (slot, name, x) in [
            (&mut a.cu_seqlens_q, "cu_seqlens_q", ix.cu_seqlens_q),
            (&mut a.cu_seqlens_k, "cu_seqlens_k", ix.cu_seqlens_k),
            (&mut a.seqlens_k, "seqlens_k", ix.seqlens_k),
            (&mut a.block_table, "block_table", ix.block_table),
        ] {
            if let Some(x) = x {
                add(slot, EmuBuffer::input(name, x));
            }
        }
        if let Some(x) = args.stats {
            add(&mut a.stats, EmuBuffer::output("stats", x));
        }
        if let Some(x) = args.key_mass {
            add(&mut a.key_mass, EmuBuffer::output("key_mass", x));
        }
        if needed > 0 {
            add(
                &mut a.workspace,
                EmuBuffer::output("workspace", &mut workspace.buffer[..needed]),
            );
        }
        let arguments = plan.arguments(&a);
        for l in &plan.launches {
            // SAFETY: the module holds the crate's kernels (cuda/*.cu), which reach memory only
            // through the emulator's checked pointers; the argument block is the KernelParams
            // mirror of their AttnParams, and every address in it is one of `buffers`.
            unsafe {
                module.launch(
                    l.entry,
                    l.grid,
                    [l.threads, 1, 1],
                    l.dynamic_smem,
                    bytemuck::bytes_of(&arguments),
                    &buffers,
                )
            }
            .map_err(|e| backend_error(format!("{} ({}): {e}", plan.spec, l.entry)))?;
        }
        Ok(())
    }
}

/// The validation view of host buffers.
fn describe<T: Element>(args: &EmuArgs<'_, T>) -> Args {
    let tensor = |len: usize, layout| TensorArg {
        dtype: T::DTYPE,
        len,
        layout,
    };
    let f32_buffer = |len: usize| BufferArg {
        dtype: DType::F32,
        len,
    };
    let p = &args.params;
    Args {
        q: tensor(args.q.len(), args.layouts.q),
        k: tensor(args.k.len(), args.layouts.k),
        v: tensor(args.v.len(), args.layouts.v),
        o: tensor(args.o.len(), args.layouts.o),
        lse: args.lse.as_ref().map(|x| f32_buffer(x.len())),
        stats: args.stats.as_ref().map(|s| f32_buffer(s.len())),
        key_mass: args.key_mass.as_ref().map(|s| f32_buffer(s.len())),
        params: crate::contract::Params {
            k_sink: p.k_sink.map(|x| f32_buffer(x.len())),
            v_sink: p.v_sink.map(|x| f32_buffer(x.len())),
            v_bias: p.v_bias.map(|x| f32_buffer(x.len())),
            sink_logits: p.sink_logits.map(|x| f32_buffer(x.len())),
            gate: p.gate.map(|x| BufferArg {
                dtype: T::DTYPE,
                len: x.len(),
            }),
        },
        param_layouts: args.layouts.params,
        indices: args.indices.map(|x| x.len()),
    }
}

/// The emulator at host level: copies the inputs, runs [`EmuAttention::forward`] on
/// NaN-poisoned outputs, returns them.
pub struct EmuBackend {
    attention: EmuAttention,
    workspace: Mutex<EmuWorkspace>,
}

impl EmuBackend {
    /// The backend emulating sm_80.
    ///
    /// # Errors
    /// [`Error::Backend`] when the C++ compiler is missing.
    pub fn new() -> Result<EmuBackend> {
        EmuBackend::with_arch(Arch::SM80)
    }

    /// The backend emulating the kernel paths of `arch`.
    ///
    /// # Errors
    /// [`Error::Backend`] when the C++ compiler is missing.
    pub fn with_arch(arch: Arch) -> Result<EmuBackend> {
        EmuBackend::with_plan_options(arch, PlanOptions::for_arch(arch))
    }

    /// The backend emulating `arch` with plan `options` (split-KV forced on or off).
    ///
    /// # Errors
    /// [`Error::Backend`] when the C++ compiler is missing.
    pub fn with_plan_options(arch: Arch, options: PlanOptions) -> Result<EmuBackend> {
        Ok(EmuBackend {
            attention: EmuAttention::with_arch(arch)?.with_plan_options(options),
            workspace: Mutex::new(EmuWorkspace::new()),
        })
    }

    /// The device-level API underneath.
    pub fn attention(&self) -> &EmuAttention {
        &self.attention
    }

    fn run<T: Element>(&self, problem: &Problem, inputs: &HostInputs) -> Result<HostOutputs>
    where
        HostTensor: From<Vec<T>>,
    {
        let typed = |t: &HostTensor| -> Vec<T> { bytemuck::pod_collect_to_vec(t.as_bytes()) };
        let f32s =
            |t: &HostTensor| -> Vec<f32> { t.to_f64_vec().iter().map(|&x| x as f32).collect() };
        let (q, k, v) = (typed(&inputs.q), typed(&inputs.k), typed(&inputs.v));
        let pr = &inputs.params;
        let k_sink = pr.k_sink.as_ref().map(f32s);
        let v_sink = pr.v_sink.as_ref().map(f32s);
        let v_bias = pr.v_bias.as_ref().map(f32s);
        let sink_logits = pr.sink_logits.as_ref().map(f32s);
        let gate = pr.gate.as_ref().map(typed);
        let poisoned = parity::poisoned_outputs(problem);
        let mut o: Vec<T> = typed(&poisoned.o);
        let mut lse = poisoned.lse;
        let mut stats = poisoned.stats;
        let mut key_mass = poisoned.key_mass;
        let args = EmuArgs {
            q: &q,
            k: &k,
            v: &v,
            o: &mut o,
            lse: Some(&mut lse),
            stats: stats.as_deref_mut(),
            key_mass: key_mass.as_deref_mut(),
            // Host-level O is contiguous in Q's sequence layout; the inputs keep their layouts.
            layouts: Layouts {
                o: problem.contiguous_layouts().o,
                ..inputs.layouts
            },
            params: EmuParams {
                k_sink: k_sink.as_deref(),
                v_sink: v_sink.as_deref(),
                v_bias: v_bias.as_deref(),
                sink_logits: sink_logits.as_deref(),
                gate: gate.as_deref(),
            },
            indices: SeqIndices {
                cu_seqlens_q: inputs.indices.cu_seqlens_q.as_deref(),
                cu_seqlens_k: inputs.indices.cu_seqlens_k.as_deref(),
                seqlens_k: inputs.indices.seqlens_k.as_deref(),
                block_table: inputs.indices.block_table.as_deref(),
            },
        };
        let mut workspace = self.workspace.lock().unwrap_or_else(|e| e.into_inner());
        self.attention.forward(problem, args, &mut workspace)?;
        Ok(HostOutputs {
            o: HostTensor::from(o),
            lse,
            stats,
            key_mass,
        })
    }
}

impl Backend for EmuBackend {
    fn name(&self) -> String {
        format!(
            "{BACKEND} (CUDA kernels on the CPU, {})",
            self.attention.arch
        )
    }

    fn describe(&self) -> Vec<String> {
        let path = |dtype: DType| self.attention.specialization(dtype, 128).path;
        vec![
            self.name(),
            format!(
                "compiler: {} ({})",
                compiler(),
                compiler_version().unwrap_or_default()
            ),
            format!(
                "paths: f16 {:?}, bf16 {:?}, f32 {:?} (tile follows the head dim)",
                path(DType::F16),
                path(DType::Bf16),
                path(DType::F32)
            ),
            "checks every global and shared access, shared-memory races, cp.async groups, barriers and warp collectives; shows no speed, global-memory races or driver behaviour".to_string(),
        ]
    }

    fn forward(&self, problem: &Problem, inputs: &HostInputs) -> Result<HostOutputs> {
        inputs.validate(problem)?;
        match problem.dtype {
            DType::F32 => self.run::<f32>(problem, inputs),
            DType::F16 => self.run::<half::f16>(problem, inputs),
            DType::Bf16 => self.run::<half::bf16>(problem, inputs),
        }
    }
}
