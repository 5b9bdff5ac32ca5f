//! The calls an inference engine launches (DESIGN.md section 6), each in a few lines: packed
//! prefill of sequences of different lengths, batched decode over a paged KV cache, a gpt-oss
//! layer (learned sinks, causal 128-token window, GQA 64/8), and Qwen3-Next's per-channel
//! sigmoid gate read as a view of the q projection.
//!
//! `cargo run --release --example engine_calls` runs them on the f64 reference; with
//! `--features wgpu` or `cuda` each also goes to that backend, which says by name what it does
//! not implement yet (`Error::Unsupported`), never returning a wrong answer.

use outlier_attn::cases::{InputSpec, Rng};
use outlier_attn::reference::Reference;
use outlier_attn::{
    Backend, DType, Error, Gate, GateGranularity, HostInputs, HostTensor, KvSeqs, Layout, Mask,
    Params, Problem, QuerySeqs, SeqIndices, Sequences, Shape, Stat, StatsLevel, Strides, Variant,
};

/// `n` values uniform in [−1, 1) in `dtype`.
fn random(rng: &mut Rng, dtype: DType, n: usize) -> HostTensor {
    let values: Vec<f64> = (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect();
    HostTensor::from_f64(dtype, &values)
}

/// Packed prefill: three prompts of 5, 1 and 17 new tokens after 0, 39 and 0 cached ones,
/// Q `[total_q, Hq, d]` and K/V `[total_k, Hkv, d]` with cumulative lengths.
fn packed_prefill(rng: &mut Rng) -> (Problem, HostInputs) {
    let (hq, hkv, d) = (8, 2, 64);
    let cu_q = vec![0, 5, 6, 23];
    let cu_k = vec![0, 5, 45, 62];
    // Nq and Nk of the shape are the longest sequences (FlashAttention's max_seqlen).
    let problem = Problem::new(Shape::new(3, hq, hkv, 17, 40, d), DType::F16)
        .with_mask(Mask::Causal)
        .with_seqs(Sequences {
            q: QuerySeqs::Packed { total: 23 },
            kv: KvSeqs::Packed { total: 62 },
        })
        .with_stats(StatsLevel::Heads);
    let inputs = HostInputs::dense(
        &problem,
        random(rng, DType::F16, 23 * hq * d),
        random(rng, DType::F16, 62 * hkv * d),
        random(rng, DType::F16, 62 * hkv * d),
    )
    .with_indices(SeqIndices {
        cu_seqlens_q: Some(cu_q),
        cu_seqlens_k: Some(cu_k),
        ..SeqIndices::none()
    });
    (problem, inputs)
}

/// Batched decode: one new token for each of four sequences of 1, 16, 77 and 190 keys, in a
/// cache of 40 pages of 16 tokens; `block_table[b, p]` is the page holding keys 16p..16p+15
/// of sequence b (−1 past the pages a sequence uses).
fn paged_decode(rng: &mut Rng) -> (Problem, HostInputs) {
    let (hq, hkv, d, page_size, pages, max_pages) = (8, 2, 64, 16, 40, 12);
    let seqlens_k = vec![1, 16, 77, 190];
    let mut block_table = vec![-1; 4 * max_pages];
    let mut next = 0;
    for (b, &len) in seqlens_k.iter().enumerate() {
        for p in 0..(len as usize).div_ceil(page_size) {
            block_table[b * max_pages + p] = (pages - 1 - next) as i32;
            next += 1;
        }
    }
    let problem = Problem::new(Shape::new(4, hq, hkv, 1, 190, d), DType::Bf16)
        .with_seqs(Sequences {
            q: QuerySeqs::Dense,
            kv: KvSeqs::Paged {
                pages,
                page_size,
                max_pages,
            },
        })
        .with_stats(StatsLevel::Heads);
    let cache = pages * page_size * hkv * d;
    let inputs = HostInputs::dense(
        &problem,
        random(rng, DType::Bf16, 4 * hq * d),
        random(rng, DType::Bf16, cache),
        random(rng, DType::Bf16, cache),
    )
    .with_indices(SeqIndices {
        seqlens_k: Some(seqlens_k),
        block_table: Some(block_table),
        ..SeqIndices::none()
    });
    (problem, inputs)
}

/// A gpt-oss sliding-window layer: learned sink logits θ per head, causal with 127 keys
/// before the diagonal, GQA 64/8.
fn gpt_oss_layer(rng: &mut Rng) -> (Problem, HostInputs) {
    let (n, hq, hkv, d) = (300, 64, 8, 64);
    let problem = Problem::new(Shape::new(1, hq, hkv, n, n, d), DType::Bf16)
        .with_variant(Variant::LogitSink)
        .with_mask(Mask::window(Some(127), Some(0)))
        .with_stats(StatsLevel::Heads);
    let theta: Vec<f64> = (0..hq).map(|_| rng.uniform(-3.0, 3.0)).collect();
    let inputs = HostInputs::dense(
        &problem,
        random(rng, DType::Bf16, n * hq * d),
        random(rng, DType::Bf16, n * hkv * d),
        random(rng, DType::Bf16, n * hkv * d),
    )
    .with_params(Params {
        sink_logits: Some(HostTensor::from_f64(DType::F32, &theta)),
        ..Params::none()
    });
    (problem, inputs)
}

/// Qwen3-Next's gated attention: the q projection `[tokens, Hq, 2d]` holds q (channels 0..d)
/// and the gate g (channels d..2d); both are read as views of it, and o = sigmoid(g) ⊙
/// attention per channel.
fn qwen3_next_gate(rng: &mut Rng) -> (Problem, HostInputs) {
    let (n, hq, hkv, d) = (32, 16, 2, 64);
    let problem = Problem::new(Shape::new(1, hq, hkv, n, n, d), DType::Bf16)
        .with_variant(Variant::ContextScale {
            gate: Gate::Sigmoid,
            granularity: GateGranularity::PerChannel,
        })
        .with_mask(Mask::Causal)
        .with_stats(StatsLevel::Heads);
    let projection = random(rng, DType::Bf16, n * hq * 2 * d);
    let half = |offset: u64| Layout {
        offset,
        strides: Strides {
            batch: (n * hq * 2 * d) as u64,
            seq: (hq * 2 * d) as u64,
            head: (2 * d) as u64,
            channel: 1,
        },
    };
    let mut inputs = HostInputs::dense(
        &problem,
        projection.clone(),
        random(rng, DType::Bf16, n * hkv * d),
        random(rng, DType::Bf16, n * hkv * d),
    )
    .with_params(Params {
        gate: Some(projection),
        ..Params::none()
    });
    inputs.layouts.q = half(0);
    inputs.layouts.params.gate = Some(half(d as u64));
    (problem, inputs)
}

fn main() -> Result<(), Error> {
    let mut rng = Rng::new(InputSpec::default().seed);
    let found = outlier_attn::discover();
    for (name, (problem, inputs)) in [
        ("packed prefill", packed_prefill(&mut rng)),
        ("paged decode", paged_decode(&mut rng)),
        ("gpt-oss layer", gpt_oss_layer(&mut rng)),
        ("Qwen3-Next gate view", qwen3_next_gate(&mut rng)),
    ] {
        let out = Reference.forward(&problem, &inputs)?;
        let stats = out.stats.as_deref().unwrap_or_default();
        let fkm: Vec<String> = stats
            .chunks_exact(Stat::COUNT)
            .take(4)
            .map(|r| format!("{:.3}", r[Stat::FirstKeyMass.index()]))
            .collect();
        println!(
            "{name}: {} query rows, lse[0] = {:.4}, first_key_mass of the first records: {}",
            problem.q_tokens(),
            out.lse[0],
            fkm.join(" ")
        );
        for backend in found
            .backends
            .iter()
            .filter(|b| !b.name().starts_with("reference"))
        {
            match backend.forward(&problem, &inputs) {
                Ok(_) => println!("  {}: ran", backend.name()),
                Err(Error::Unsupported { reason, .. }) => {
                    println!("  {}: {reason}", backend.name())
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}
