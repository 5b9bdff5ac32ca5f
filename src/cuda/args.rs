//! Building a call's [`DeviceArgs`] in a line: dense buffers first, then what the call adds.

use cudarc::driver::{CudaView, CudaViewMut};

use super::device::{DeviceArgs, DeviceParams};
use crate::contract::{Layouts, Problem, SeqIndices};

impl<'a, T> DeviceArgs<'a, T> {
    /// Q, K, V and O contiguous in `problem`'s sequence layout (dense `[B, N, H, d]`, packed,
    /// paged), and the LSE (a view, or `None` for an engine that does not want it); no
    /// statistics, no parameters, no index tensors. Add those with the `with_` methods below,
    /// and give strided views (a KV cache with room for more tokens, a fused QKV buffer) with
    /// [`with_layouts`](Self::with_layouts).
    pub fn dense(
        problem: &Problem,
        q: CudaView<'a, T>,
        k: CudaView<'a, T>,
        v: CudaView<'a, T>,
        o: CudaViewMut<'a, T>,
        lse: impl Into<Option<CudaViewMut<'a, f32>>>,
    ) -> DeviceArgs<'a, T> {
        DeviceArgs {
            q,
            k,
            v,
            o,
            lse: lse.into(),
            stats: None,
            key_mass: None,
            layouts: problem.contiguous_layouts(),
            params: DeviceParams::default(),
            indices: SeqIndices::none(),
        }
    }

    /// With the statistics buffer `[B, Hq, Stat::COUNT]` (levels `Heads`, `HeadsAndKeys`).
    pub fn with_stats(self, stats: CudaViewMut<'a, f32>) -> DeviceArgs<'a, T> {
        DeviceArgs {
            stats: Some(stats),
            ..self
        }
    }

    /// With the key-mass buffer `[B, Hq, Nk]` (level `HeadsAndKeys`).
    pub fn with_key_mass(self, key_mass: CudaViewMut<'a, f32>) -> DeviceArgs<'a, T> {
        DeviceArgs {
            key_mass: Some(key_mass),
            ..self
        }
    }

    /// With the variant's learned tensors.
    pub fn with_params(self, params: DeviceParams<'a, T>) -> DeviceArgs<'a, T> {
        DeviceArgs { params, ..self }
    }

    /// With other offsets and strides for Q, K, V, O and the parameters.
    pub fn with_layouts(self, layouts: Layouts) -> DeviceArgs<'a, T> {
        DeviceArgs { layouts, ..self }
    }

    /// With the index tensors of the problem's sequence layout (DESIGN.md section 6).
    pub fn with_indices(self, indices: SeqIndices<CudaView<'a, i32>>) -> DeviceArgs<'a, T> {
        DeviceArgs { indices, ..self }
    }
}
