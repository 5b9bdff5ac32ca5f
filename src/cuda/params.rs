//! The kernel argument block, mirrored field for field from `AttnParams` in cuda/common.cuh.
//! The GPU and the emulator get the same bytes (`bytemuck::bytes_of`).

/// Offset and strides of one tensor in elements (`TensorLayout` in the kernels).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct TensorLayout {
    pub offset: u64,
    pub batch: u64,
    pub seq: u64,
    pub head: u64,
}

impl From<&crate::contract::Layout> for TensorLayout {
    fn from(l: &crate::contract::Layout) -> Self {
        TensorLayout {
            offset: l.offset,
            batch: l.strides.batch,
            seq: l.strides.seq,
            head: l.strides.head,
        }
    }
}

/// `AttnParams` of cuda/common.cuh, passed by value to every kernel. Pointers are device
/// addresses (0 where a buffer is absent); the order and types must match the C struct.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct KernelParams {
    pub q: u64,
    pub k: u64,
    pub v: u64,
    pub o: u64,
    pub lse: u64,
    pub k_sink: u64,
    pub v_param: u64,
    pub sink_logits: u64,
    pub gate: u64,
    pub stats: u64,
    pub key_mass: u64,
    pub partials: u64,
    pub row_records: u64,
    pub lq: TensorLayout,
    pub lk: TensorLayout,
    pub lv: TensorLayout,
    pub lo: TensorLayout,
    pub batch: i32,
    pub q_heads: i32,
    pub kv_heads: i32,
    pub q_len: i32,
    pub kv_len: i32,
    pub head_dim: i32,
    pub group: i32,
    pub variant: i32,
    pub causal: i32,
    pub has_softcap: i32,
    pub gate_kind: i32,
    pub gate_per_channel: i32,
    pub aligned: i32,
    pub m_blocks: i32,
    pub o_aligned: i32,
    pub scale: f32,
    pub softcap: f32,
    pub sigmoid_bias: f32,
    pub clip_zeta: f32,
    pub clip_gamma: f32,
    pub stats_on: i32,
    pub part_record: i32,
    pub cu_seqlens_q: u64,
    pub cu_seqlens_k: u64,
    pub seqlens_k: u64,
    pub block_table: u64,
    pub lgate: TensorLayout,
    pub lk_sink: TensorLayout,
    pub lv_param: TensorLayout,
    pub lsink: TensorLayout,
    pub q_seqs: i32,
    pub kv_seqs: i32,
    pub q_total: i32,
    pub kv_total: i32,
    pub pages: i32,
    pub page_size: i32,
    pub max_pages: i32,
    pub window_left: i32,
    pub window_right: i32,
    pub sigmoid_bias_per_seq: i32,
    pub paged_tiles: i32,
    pub pad: i32,
    pub split_partials: u64,
    pub fold: i32,
    pub q_rows: i32,
    pub splits: i32,
    pub tiles_per_split: i32,
    pub part_count: i32,
    pub split_record: i32,
}

#[cfg(feature = "cuda")]
// SAFETY: KernelParams is #[repr(C)], made of u64/i32/f32 fields only, and matches the layout
// of AttnParams in cuda/common.cuh (checked by the size and offset test below), so the driver
// may copy its bytes into the kernel's parameter space.
unsafe impl cudarc::driver::DeviceRepr for KernelParams {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn layout_matches_the_c_struct() {
        // 13 pointers, 4 layouts of 4 u64, 15 ints, 5 floats, 2 ints: 104 + 128 + 88 = 320;
        // then 4 index pointers, 4 parameter layouts and 12 ints (the last one padding): 528;
        // then the decode's pointer and 6 ints: 560.
        assert_eq!(size_of::<TensorLayout>(), 32);
        assert_eq!(offset_of!(KernelParams, lq), 104);
        assert_eq!(offset_of!(KernelParams, batch), 232);
        assert_eq!(offset_of!(KernelParams, scale), 292);
        assert_eq!(offset_of!(KernelParams, stats_on), 312);
        assert_eq!(offset_of!(KernelParams, part_record), 316);
        assert_eq!(offset_of!(KernelParams, cu_seqlens_q), 320);
        assert_eq!(offset_of!(KernelParams, lgate), 352);
        assert_eq!(offset_of!(KernelParams, q_seqs), 480);
        assert_eq!(offset_of!(KernelParams, paged_tiles), 520);
        assert_eq!(offset_of!(KernelParams, split_partials), 528);
        assert_eq!(offset_of!(KernelParams, split_record), 556);
        assert_eq!(size_of::<KernelParams>(), 560);
    }
}
