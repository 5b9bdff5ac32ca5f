//! The CUDA backend (feature `cuda`): hand-written flash-attention kernels (cuda/*.cu)
//! compiled at run time by NVRTC for the device's own architecture, loaded through cudarc.
//!
//! Three layers, as in cudarc:
//! - [`spec`]: the sources and the specialisation space ([`Specialization::ALL`], nine modules
//!   per architecture); [`plan`]: the [`LaunchPlan`] of a forward pass (grids, blocks, shared
//!   memory, workspace layout, argument bytes), which every executor takes: cudarc here, the
//!   CPU emulator in `cuda_emu` (feature `cuda-emulator`). These two build without cudarc.
//! - [`kernels`]: NVRTC compilation to cubins, cached on disk (keyed by source, options and
//!   NVRTC version). Usable without a GPU: CI compiles every specialisation.
//! - [`CudaAttention`]: the device-level API for engines. It takes the caller's stream and
//!   `CudaView`/`CudaViewMut` buffers plus a reusable [`Workspace`], validates through
//!   [`validate`](crate::validate), launches asynchronously and never synchronises the host.
//! - [`CudaBackend`]: the host-level [`Backend`] used by tests and the demo.
//!
//! Paths: f16 and bf16 run on tensor cores (mma.sync m16n8k16, ldmatrix, cp.async) from
//! sm_80; f32, and 16-bit inputs before sm_80, run on a SIMT kernel in true f32 arithmetic.
//!
//! With the default features libcuda and libnvrtc are loaded at run time (cudarc's
//! `dynamic-loading`, CUDA 12.8 API), so the crate builds and its tests run where neither
//! exists, and their absence is an [`Error::Backend`]. An engine that brings its own cudarc
//! features turns the defaults off (see [`driver_present`] for what changes); [`cudarc`] is
//! re-exported so that it can name the same version.
//!
//! # CUDA versions
//! With the default features cudarc binds the CUDA 12.8 API and opens `libnvrtc.so.12` or
//! `libnvrtc.so` by name (`LD_LIBRARY_PATH` applies); `libnvrtc.so.13` is used when linked as
//! `libnvrtc.so` (scripts/h200/run.sh does this with the toolkit's own NVRTC). Verified here: NVRTC 12.9
//! (PyPI `nvidia-cuda-nvrtc-cu12`) and 13.5 (`nvidia-cuda-nvrtc`). Modules are compiled to
//! cubins (SASS) for the device's exact compute capability, never to PTX, so the driver's PTX
//! JIT and its PTX ISA limit play no part; the driver needs only to support the device
//! (CUDA 12 or 13 drivers). Without a GPU nothing here was executed: see BENCHMARKS.md.

// Shared by every executor (also built by the `cuda-emulator` feature, without cudarc).
mod params;
pub mod plan;
pub mod spec;

#[cfg(feature = "cuda")]
mod args;
#[cfg(feature = "cuda")]
mod device;
#[cfg(feature = "cuda")]
pub mod kernels;

/// The cudarc this crate is built against (0.19): an engine whose own cudarc is the same
/// semver version shares its `CudaContext`, `CudaStream` and buffers with this crate.
#[cfg(feature = "cuda")]
pub use cudarc;

#[cfg(feature = "cuda")]
use std::sync::{Arc, Mutex};
#[cfg(feature = "cuda")]
use std::time::Duration;

#[cfg(feature = "cuda")]
use cudarc::driver::sys::CUevent_flags;
#[cfg(feature = "cuda")]
use cudarc::driver::{CudaContext, CudaSlice, CudaStream};

#[cfg(feature = "cuda")]
pub use device::{CudaAttention, CudaElement, DeviceArgs, DeviceParams, Prepared, Workspace};
#[cfg(feature = "cuda")]
pub use kernels::{CacheOutcome, CompileError, CompiledModule, KernelResources, NvrtcVersion};
pub use plan::{
    Addresses, DecodeCut, Launch, LaunchPlan, MAX_SPLITS, PlanOptions, SUPPORTED, SplitKv,
    WorkspaceLayout,
};
pub use spec::{Arch, HeadDimTile, KernelPath, Specialization};

#[cfg(feature = "cuda")]
use crate::contract::{
    Backend, DType, Error, HostInputs, HostOutputs, HostTensor, Layouts, Problem, Result,
    SeqIndices,
};
#[cfg(feature = "cuda")]
use crate::parity;

/// The backend's name in messages.
#[cfg(feature = "cuda")]
pub(crate) const BACKEND: &str = "cuda";

#[cfg(feature = "cuda")]
pub(crate) fn backend_error(message: String) -> Error {
    Error::Backend {
        backend: BACKEND.to_string(),
        message,
    }
}

/// Whether libcuda can be reached.
///
/// With the feature `cuda-dynamic-loading` cudarc opens libcuda at the first driver call and
/// panics where it is missing, so this looks for it first. Without that feature the engine
/// chose how cudarc finds CUDA and this crate cannot tell which way, so it does not look and
/// answers `true`: with cudarc linking libcuda (`dynamic-linking`, `static-linking`) it is there
/// whenever the program runs; with cudarc's dynamic loading chosen by the engine alone, a
/// missing libcuda panics inside cudarc, as the engine's own first call would.
#[cfg(feature = "cuda")]
pub fn driver_present() -> bool {
    #[cfg(feature = "cuda-dynamic-loading")]
    // SAFETY: only dlopens libcuda by name and reports whether it was found.
    return unsafe { cudarc::driver::sys::is_culib_present() };
    #[cfg(not(feature = "cuda-dynamic-loading"))]
    true
}

/// Finds device 0, explaining what is missing: no libcuda, no device, no NVRTC.
///
/// # Errors
/// [`Error::Backend`] naming the missing piece; never panics with the feature
/// `cuda-dynamic-loading` (without it, see [`driver_present`]).
#[cfg(feature = "cuda")]
pub fn detect() -> Result<Arc<CudaContext>> {
    // Every driver call below happens after this check.
    if !driver_present() {
        return Err(backend_error(
            "libcuda not found (no NVIDIA driver on this machine)".to_string(),
        ));
    }
    let count = CudaContext::device_count()
        .map_err(|e| backend_error(format!("the driver cannot count devices: {e}")))?;
    if count < 1 {
        return Err(backend_error(
            "the driver reports no CUDA device".to_string(),
        ));
    }
    if !kernels::nvrtc_present() {
        return Err(backend_error(
            kernels::CompileError::NvrtcMissing.to_string(),
        ));
    }
    CudaContext::new(0).map_err(|e| backend_error(format!("cannot open device 0: {e}")))
}

/// The CUDA backend at host level: uploads, runs [`CudaAttention::forward`] on its own stream,
/// downloads. Outputs start NaN-poisoned, so an element a kernel never writes fails parity.
#[cfg(feature = "cuda")]
pub struct CudaBackend {
    attention: CudaAttention,
    stream: Arc<CudaStream>,
    device_name: String,
    workspace: Mutex<Workspace>,
}

#[cfg(feature = "cuda")]
impl CudaBackend {
    /// Opens device 0.
    ///
    /// # Errors
    /// [`Error::Backend`] when libcuda, a device or libnvrtc is missing.
    pub fn new() -> Result<CudaBackend> {
        let ctx = detect()?;
        let device_name = ctx.name().unwrap_or_else(|_| "unknown device".to_string());
        let stream = ctx
            .new_stream()
            .map_err(|e| backend_error(format!("cannot create a stream: {e}")))?;
        Ok(CudaBackend {
            attention: CudaAttention::new(ctx)?,
            stream,
            device_name,
            workspace: Mutex::new(Workspace::new()),
        })
    }

    /// Opens device 0 with split-KV set to `split_kv` ([`SplitKv`]; `new` takes the automatic
    /// split).
    ///
    /// # Errors
    /// Those of [`new`](Self::new).
    pub fn with_split_kv(split_kv: SplitKv) -> Result<CudaBackend> {
        let backend = CudaBackend::new()?;
        Ok(CudaBackend {
            attention: backend.attention.with_split_kv(split_kv),
            ..backend
        })
    }

    /// The device-level API underneath.
    pub fn attention(&self) -> &CudaAttention {
        &self.attention
    }

    /// The stream host-level calls run on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Uploads validated host inputs and allocates NaN-poisoned outputs.
    fn resident<T: CudaElement>(
        &self,
        problem: &Problem,
        inputs: &HostInputs,
    ) -> Result<Resident<T>> {
        let stream = &self.stream;
        let upload = |t: &HostTensor| -> Result<CudaSlice<T>> {
            let host: Vec<T> = bytemuck::pod_collect_to_vec(t.as_bytes());
            stream.clone_htod(&host).map_err(driver_error)
        };
        let upload_f32 = |t: &HostTensor| -> Result<CudaSlice<f32>> {
            stream
                .clone_htod(&t.to_f64_vec().iter().map(|&x| x as f32).collect::<Vec<_>>())
                .map_err(driver_error)
        };
        let upload_f32s = |x: &Vec<f32>| stream.clone_htod(x).map_err(driver_error);
        let upload_i32 = |x: &Vec<i32>| stream.clone_htod(x).map_err(driver_error);
        let ix = &inputs.indices;
        let poisoned = parity::poisoned_outputs(problem);
        let pr = &inputs.params;
        Ok(Resident {
            q: upload(&inputs.q)?,
            k: upload(&inputs.k)?,
            v: upload(&inputs.v)?,
            o: upload(&poisoned.o)?,
            lse: upload_f32s(&poisoned.lse)?,
            stats: poisoned.stats.as_ref().map(upload_f32s).transpose()?,
            key_mass: poisoned.key_mass.as_ref().map(upload_f32s).transpose()?,
            k_sink: pr.k_sink.as_ref().map(upload_f32).transpose()?,
            v_sink: pr.v_sink.as_ref().map(upload_f32).transpose()?,
            v_bias: pr.v_bias.as_ref().map(upload_f32).transpose()?,
            sink_logits: pr.sink_logits.as_ref().map(upload_f32).transpose()?,
            gate: pr.gate.as_ref().map(upload).transpose()?,
            indices: SeqIndices {
                cu_seqlens_q: ix.cu_seqlens_q.as_ref().map(upload_i32).transpose()?,
                cu_seqlens_k: ix.cu_seqlens_k.as_ref().map(upload_i32).transpose()?,
                seqlens_k: ix.seqlens_k.as_ref().map(upload_i32).transpose()?,
                block_table: ix.block_table.as_ref().map(upload_i32).transpose()?,
            },
            // Host-level O is contiguous in Q's sequence layout; the inputs keep their layouts.
            layouts: Layouts {
                o: problem.contiguous_layouts().o,
                ..inputs.layouts
            },
        })
    }

    fn run<T: CudaElement>(&self, problem: &Problem, inputs: &HostInputs) -> Result<HostOutputs>
    where
        HostTensor: From<Vec<T>>,
    {
        let stream = &self.stream;
        let mut resident = self.resident::<T>(problem, inputs)?;
        let mut workspace = self.workspace.lock().unwrap_or_else(|e| e.into_inner());
        self.attention
            .forward(stream, problem, resident.args(), &mut workspace)?;
        let r = &resident;
        let download = |x: &CudaSlice<f32>| stream.clone_dtoh(x).map_err(driver_error);
        let o_host: Vec<T> = stream.clone_dtoh(&r.o).map_err(driver_error)?;
        let out = HostOutputs {
            o: HostTensor::from(o_host),
            lse: download(&r.lse)?,
            stats: r.stats.as_ref().map(download).transpose()?,
            key_mass: r.key_mass.as_ref().map(download).transpose()?,
        };
        stream.synchronize().map_err(driver_error)?;
        Ok(out)
    }

    /// `reps` passes after `warmup`, each between two events recorded on the stream
    /// (`CU_EVENT_DEFAULT`: timing enabled), launched back to back as an engine would.
    fn times<T: CudaElement>(
        &self,
        problem: &Problem,
        inputs: &HostInputs,
        warmup: usize,
        reps: usize,
    ) -> Result<Vec<Duration>> {
        let stream = &self.stream;
        let mut resident = self.resident::<T>(problem, inputs)?;
        let mut workspace = self.workspace.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..warmup {
            self.attention
                .forward(stream, problem, resident.args(), &mut workspace)?;
        }
        let timed = Some(CUevent_flags::CU_EVENT_DEFAULT);
        let mut events = Vec::with_capacity(reps);
        for _ in 0..reps {
            let begin = stream.record_event(timed).map_err(driver_error)?;
            self.attention
                .forward(stream, problem, resident.args(), &mut workspace)?;
            let end = stream.record_event(timed).map_err(driver_error)?;
            events.push((begin, end));
        }
        stream.synchronize().map_err(driver_error)?;
        events
            .iter()
            .map(|(begin, end)| {
                let ms = begin.elapsed_ms(end).map_err(driver_error)?;
                Ok(Duration::from_secs_f64(f64::from(ms.max(0.0)) * 1e-3))
            })
            .collect()
    }
}

#[cfg(feature = "cuda")]
fn driver_error(e: cudarc::driver::DriverError) -> Error {
    backend_error(e.to_string())
}

/// One host-level call's buffers on the device.
#[cfg(feature = "cuda")]
struct Resident<T> {
    q: CudaSlice<T>,
    k: CudaSlice<T>,
    v: CudaSlice<T>,
    o: CudaSlice<T>,
    lse: CudaSlice<f32>,
    stats: Option<CudaSlice<f32>>,
    key_mass: Option<CudaSlice<f32>>,
    k_sink: Option<CudaSlice<f32>>,
    v_sink: Option<CudaSlice<f32>>,
    v_bias: Option<CudaSlice<f32>>,
    sink_logits: Option<CudaSlice<f32>>,
    gate: Option<CudaSlice<T>>,
    indices: SeqIndices<CudaSlice<i32>>,
    layouts: Layouts,
}

#[cfg(feature = "cuda")]
impl<T: CudaElement> Resident<T> {
    fn args(&mut self) -> DeviceArgs<'_, T> {
        DeviceArgs {
            q: self.q.as_view(),
            k: self.k.as_view(),
            v: self.v.as_view(),
            o: self.o.as_view_mut(),
            lse: Some(self.lse.as_view_mut()),
            stats: self.stats.as_mut().map(|x| x.as_view_mut()),
            key_mass: self.key_mass.as_mut().map(|x| x.as_view_mut()),
            layouts: self.layouts,
            params: DeviceParams {
                k_sink: self.k_sink.as_ref().map(|x| x.as_view()),
                v_sink: self.v_sink.as_ref().map(|x| x.as_view()),
                v_bias: self.v_bias.as_ref().map(|x| x.as_view()),
                sink_logits: self.sink_logits.as_ref().map(|x| x.as_view()),
                gate: self.gate.as_ref().map(|x| x.as_view()),
            },
            indices: SeqIndices {
                cu_seqlens_q: self.indices.cu_seqlens_q.as_ref().map(|x| x.as_view()),
                cu_seqlens_k: self.indices.cu_seqlens_k.as_ref().map(|x| x.as_view()),
                seqlens_k: self.indices.seqlens_k.as_ref().map(|x| x.as_view()),
                block_table: self.indices.block_table.as_ref().map(|x| x.as_view()),
            },
        }
    }
}

#[cfg(feature = "cuda")]
impl Backend for CudaBackend {
    fn name(&self) -> String {
        format!("cuda ({})", self.device_name)
    }

    fn describe(&self) -> Vec<String> {
        let arch = self.attention.arch();
        let path = |dtype: DType| self.attention.specialization(dtype, 128).path;
        vec![
            self.name(),
            format!("compute capability {}.{} ({arch})", arch.major, arch.minor),
            format!("NVRTC {}", self.attention.nvrtc_version()),
            format!(
                "paths: f16 {:?}, bf16 {:?}, f32 {:?} (tile follows the head dim)",
                path(DType::F16),
                path(DType::Bf16),
                path(DType::F32)
            ),
            match kernels::cache_dir() {
                Some(dir) => format!("module cache: {}", dir.display()),
                None => "module cache: memory only (no HOME)".to_string(),
            },
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

    fn device_times(
        &self,
        problem: &Problem,
        inputs: &HostInputs,
        warmup: usize,
        reps: usize,
    ) -> Result<Option<Vec<Duration>>> {
        inputs.validate(problem)?;
        match problem.dtype {
            DType::F32 => self.times::<f32>(problem, inputs, warmup, reps),
            DType::F16 => self.times::<half::f16>(problem, inputs, warmup, reps),
            DType::Bf16 => self.times::<half::bf16>(problem, inputs, warmup, reps),
        }
        .map(Some)
    }
}
