//! A CUDA engine with cudarc features of its own (see Cargo.toml) that runs outlier-attn on its
//! own stream and buffers. Its attention layer reads Q, K and V straight out of the fused QKV
//! projection output `[B, T, Hq + 2·Hkv, d]` (three strided views of one buffer, no copies), as
//! engines hold it, and writes O where its output projection reads it.
//!
//! CI only checks that this builds with each feature set (no GPU there); on a machine with an
//! NVIDIA GPU, `cargo run -p cuda-engine` runs it.

use std::sync::Arc;

// The engine's own cudarc: the same crate outlier-attn is built against, so its streams and
// buffers are the ones `CudaAttention` takes.
use cudarc::driver::{CudaContext, CudaSlice, CudaStream};
use half::bf16;
use outlier_attn::cuda::{CudaAttention, DeviceArgs, Workspace};
use outlier_attn::{
    DType, HeadStats, Layout, Layouts, Mask, Params, Problem, Shape, Stat, StatsLevel,
};

/// One attention layer of the engine, with its buffers.
struct AttentionLayer {
    q_heads: usize,
    kv_heads: usize,
    head_dim: usize,
    attention: Arc<CudaAttention>,
    workspace: Workspace,
}

impl AttentionLayer {
    /// Causal attention over the fused QKV output of `tokens` tokens; returns O `[1, T, Hq, d]`
    /// and the per-head statistics. Everything is enqueued on `stream`; reading the statistics
    /// back is the only synchronisation.
    fn prefill(
        &mut self,
        stream: &Arc<CudaStream>,
        qkv: &CudaSlice<bf16>,
        tokens: usize,
    ) -> Result<(CudaSlice<bf16>, Vec<HeadStats>), Box<dyn std::error::Error>> {
        let (hq, hkv, d) = (self.q_heads, self.kv_heads, self.head_dim);
        let shape = Shape::new(1, hq, hkv, tokens, tokens, d);
        let problem = Problem::new(shape, DType::Bf16)
            .with_mask(Mask::Causal)
            .with_stats(StatsLevel::Heads);
        // Q, K and V are head ranges of each token's row of the fused buffer.
        let fused = Layout::contiguous(tokens, hq + 2 * hkv, d);
        let at = |head: usize| Layout {
            offset: (head * d) as u64,
            ..fused
        };
        let layouts = Layouts {
            q: at(0),
            k: at(hq),
            v: at(hq + hkv),
            o: Layout::contiguous(tokens, hq, d),
            params: Params::none(),
        };
        let mut o = stream.alloc_zeros::<bf16>(tokens * hq * d)?;
        let mut lse = stream.alloc_zeros::<f32>(shape.lse_len())?;
        let mut stats = stream.alloc_zeros::<f32>(shape.heads_total() * Stat::COUNT)?;
        let (q, k, v) = (qkv.as_view(), qkv.as_view(), qkv.as_view());
        let args = DeviceArgs::dense(&problem, q, k, v, o.as_view_mut(), lse.as_view_mut())
            .with_stats(stats.as_view_mut())
            .with_layouts(layouts);
        self.attention
            .forward(stream, &problem, args, &mut self.workspace)?;
        let heads = HeadStats::from_buffer(&stream.clone_dtoh(&stats)?);
        Ok((o, heads))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (hq, hkv, d, tokens) = (16, 4, 128, 256);
    let ctx = CudaContext::new(0)?;
    let stream = ctx.new_stream()?;
    let attention = Arc::new(CudaAttention::new(ctx)?);
    // At start-up, so that the first forward does not wait for NVRTC.
    for prepared in attention.prepare_model(DType::Bf16, d)? {
        if let Some(warning) = prepared.cache.write_error() {
            eprintln!("warning: {warning}");
        }
    }
    let mut layer = AttentionLayer {
        q_heads: hq,
        kv_heads: hkv,
        head_dim: d,
        attention,
        workspace: Workspace::new(),
    };
    // Stands in for the QKV projection's output.
    let qkv: Vec<bf16> = (0..tokens * (hq + 2 * hkv) * d)
        .map(|i| bf16::from_f32(((i * 7919) % 2001) as f32 / 1000.0 - 1.0))
        .collect();
    let qkv = stream.clone_htod(&qkv)?;
    let (_o, heads) = layer.prefill(&stream, &qkv, tokens)?;
    for (h, s) in heads.iter().enumerate() {
        println!(
            "head {h}: first_key_mass {:.3} max_score {:.2}",
            s.first_key_mass, s.max_score
        );
    }
    Ok(())
}
