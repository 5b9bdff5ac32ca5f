//! The CUDA backend as an engine drives it: the engine's own context, stream and buffers, with
//! the K/V cache laid out for more tokens than a call reads, and the module loaded at start-up
//! so that the first forward does not wait for NVRTC. A prefill step (causal attention over
//! the prompt), then a decode step (the next token against the whole cache), each with its
//! per-head statistics read back.
//!
//! `cargo run --example cuda_engine --features cuda` (an NVIDIA GPU, libnvrtc on the library
//! path); elsewhere it says what is missing.

use half::bf16;
use outlier_attn::cuda::{CudaAttention, DeviceArgs, Workspace};
use outlier_attn::{DType, HeadStats, Layout, Layouts, Mask, Problem, Shape, Stat, StatsLevel};

const Q_HEADS: usize = 32;
const KV_HEADS: usize = 8;
const HEAD_DIM: usize = 128;
const PROMPT: usize = 512;
/// Tokens the K/V cache holds: the prompt and one decoded token.
const CAPACITY: usize = PROMPT + 1;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // An engine has its context already; `detect` opens device 0 or says what is missing.
    let ctx = match outlier_attn::cuda::detect() {
        Ok(ctx) => ctx,
        Err(e) => {
            println!("no CUDA device here: {e}");
            return Ok(());
        }
    };
    let stream = ctx.new_stream()?;
    let attention = CudaAttention::new(ctx)?;
    for prepared in attention.prepare_model(DType::Bf16, HEAD_DIM)? {
        println!("{}: {:?}", prepared.spec, prepared.cache);
    }
    let mut workspace = Workspace::new();

    // The cache the engine's K/V projections would have filled: [1, CAPACITY, Hkv, d].
    let cache_len = CAPACITY * KV_HEADS * HEAD_DIM;
    let k_cache = stream.clone_htod(&values(cache_len, 1))?;
    let v_cache = stream.clone_htod(&values(cache_len, 2))?;
    let cache = Layout::contiguous(CAPACITY, KV_HEADS, HEAD_DIM);

    for (step, q_len, kv_len) in [("prefill", PROMPT, PROMPT), ("decode", 1, CAPACITY)] {
        let shape = Shape::new(1, Q_HEADS, KV_HEADS, q_len, kv_len, HEAD_DIM);
        let problem = Problem::new(shape, DType::Bf16)
            .with_mask(Mask::Causal)
            .with_stats(StatsLevel::Heads);
        let q = stream.clone_htod(&values(q_len * Q_HEADS * HEAD_DIM, 3))?;
        let mut o = stream.alloc_zeros::<bf16>(q_len * Q_HEADS * HEAD_DIM)?;
        let mut lse = stream.alloc_zeros::<f32>(shape.lse_len())?;
        let mut stats = stream.alloc_zeros::<f32>(shape.heads_total() * Stat::COUNT)?;
        let (q, k, v) = (q.as_view(), k_cache.as_view(), v_cache.as_view());
        let args = DeviceArgs::dense(&problem, q, k, v, o.as_view_mut(), lse.as_view_mut())
            .with_stats(stats.as_view_mut())
            // K and V read the first `kv_len` tokens of the cache.
            .with_layouts(Layouts {
                k: cache,
                v: cache,
                ..Layouts::contiguous(&shape)
            });
        attention.forward(&stream, &problem, args, &mut workspace)?;
        let heads = HeadStats::from_buffer(&stream.clone_dtoh(&stats)?);
        println!("{step}: {q_len} queries, {kv_len} keys");
        for (h, s) in heads.iter().enumerate().take(4) {
            println!(
                "  head {h}: first_key_mass {:.3}  max_score {:.2}  entropy {:.3}",
                s.first_key_mass, s.max_score, s.mean_entropy
            );
        }
    }
    Ok(())
}

/// Deterministic inputs in [-1, 1).
fn values(len: usize, seed: u32) -> Vec<bf16> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(40_503)) % 2048)
        .map(|x| bf16::from_f32(x as f32 / 1024.0 - 1.0))
        .collect()
}
