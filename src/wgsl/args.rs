//! Building a call's [`DeviceArgs`] in a line: dense buffers first, then what the call adds.

use super::device::{DeviceArgs, DeviceIndex, DeviceSlice, DeviceTensor};
use crate::contract::{DType, Layouts, Params, Problem, SeqIndices, Stat};

impl<'a> DeviceSlice<'a> {
    /// All of `buffer`, read as elements of `dtype` (a parameter such as k′ or θ).
    pub fn whole(buffer: &'a ::wgpu::Buffer, dtype: DType) -> DeviceSlice<'a> {
        DeviceSlice {
            buffer,
            dtype,
            offset: 0,
            len: (buffer.size() / dtype.size_bytes() as u64) as usize,
        }
    }

    /// The first `len` f32 elements of `buffer` (an output: LSE, statistics, key mass).
    pub fn f32(buffer: &'a ::wgpu::Buffer, len: usize) -> DeviceSlice<'a> {
        DeviceSlice {
            buffer,
            dtype: DType::F32,
            offset: 0,
            len,
        }
    }
}

impl<'a> DeviceIndex<'a> {
    /// All of `buffer`, read as i32 elements.
    pub fn whole(buffer: &'a ::wgpu::Buffer) -> DeviceIndex<'a> {
        DeviceIndex {
            buffer,
            offset: 0,
            len: (buffer.size() / 4) as usize,
        }
    }
}

impl<'a> DeviceArgs<'a> {
    /// Q, K, V and O contiguous in the problem's sequence layout ([`Problem::tensor_dims`]:
    /// `[B, N, H, d]` dense, `[total, H, d]` packed, `[pages, page_size, Hkv, d]` paged) in the
    /// problem's dtype, each at the start of its buffer, and the LSE at the start of `lse`; no
    /// statistics, no parameters, no index tensors (add those of a packed or paged call with
    /// [`with_indices`](Self::with_indices)).
    /// Add those with the `with_` methods below; for strided views (a KV cache with room for
    /// more tokens, a fused QKV buffer) set the tensors' `layout` or use
    /// [`with_layouts`](Self::with_layouts).
    pub fn dense(
        problem: &Problem,
        q: &'a ::wgpu::Buffer,
        k: &'a ::wgpu::Buffer,
        v: &'a ::wgpu::Buffer,
        o: &'a ::wgpu::Buffer,
        lse: &'a ::wgpu::Buffer,
    ) -> DeviceArgs<'a> {
        let layouts = problem.contiguous_layouts();
        let tensor = |buffer, layout| DeviceTensor {
            buffer,
            dtype: problem.dtype,
            layout,
        };
        DeviceArgs {
            q: tensor(q, layouts.q),
            k: tensor(k, layouts.k),
            v: tensor(v, layouts.v),
            o: tensor(o, layouts.o),
            lse: DeviceSlice::f32(lse, problem.lse_len()),
            stats: None,
            key_mass: None,
            params: Params::none(),
            indices: SeqIndices::none(),
        }
    }

    /// With the statistics `[B, Hq, Stat::COUNT]` at the start of `stats` (levels `Heads`,
    /// `HeadsAndKeys`).
    pub fn with_stats(self, problem: &Problem, stats: &'a ::wgpu::Buffer) -> DeviceArgs<'a> {
        let len = problem.shape.heads_total() * Stat::COUNT;
        DeviceArgs {
            stats: Some(DeviceSlice::f32(stats, len)),
            ..self
        }
    }

    /// With the key mass ([`Problem::key_mass_len`]) at the start of `key_mass` (level
    /// `HeadsAndKeys`).
    pub fn with_key_mass(self, problem: &Problem, key_mass: &'a ::wgpu::Buffer) -> DeviceArgs<'a> {
        let len = problem.key_mass_len();
        DeviceArgs {
            key_mass: Some(DeviceSlice::f32(key_mass, len)),
            ..self
        }
    }

    /// With the index tensors of a packed or paged call.
    pub fn with_indices(self, indices: SeqIndices<DeviceIndex<'a>>) -> DeviceArgs<'a> {
        DeviceArgs { indices, ..self }
    }

    /// With the variant's learned tensors.
    pub fn with_params(self, params: Params<DeviceSlice<'a>>) -> DeviceArgs<'a> {
        DeviceArgs { params, ..self }
    }

    /// With other offsets and strides for Q, K, V and O.
    pub fn with_layouts(mut self, layouts: Layouts) -> DeviceArgs<'a> {
        self.q.layout = layouts.q;
        self.k.layout = layouts.k;
        self.v.layout = layouts.v;
        self.o.layout = layouts.o;
        self
    }
}
