//! Attention sinks, found by the statistics the kernels compute.
//!
//! 1. A real model: the Q/K/V of all-MiniLM-L6-v2 (the fixture in tests/fixtures, dumped from
//!    PyTorch) run through the best backend present; per layer, how much weight each head puts
//!    on the first token, and which keys the paper's rule flags as attention outliers.
//! 2. The paper's mechanism in a small problem: token 0's key carries a massive channel and its
//!    value is near zero, so the heads whose queries read that channel park their attention on
//!    it. Every variant runs on it, and a per-head table shows where the weight went.
//!
//! Run with `cargo run --release --example demo` from the repository's root (add `--features
//! wgpu` or `--features cuda` to use a GPU backend where one is present); elsewhere give the
//! fixture's path: `cargo run --release --example demo -- PATH`.

use outlier_attn::cases::Rng;
use outlier_attn::{
    DType, Gate, GateGranularity, HostInputs, HostTensor, Mask, Params, Problem, Shape, StatsLevel,
    Variant, discover, find_outliers,
};

const HEADS: usize = 8;
/// Heads 0..SINK_HEADS read the massive channel and sink onto token 0.
const SINK_HEADS: usize = 6;
const TOKENS: usize = 64;
const HEAD_DIM: usize = 64;
/// The channel that carries the massive activation (the paper finds fixed channels).
const MASSIVE_CHANNEL: usize = 13;
/// |k_0| on the massive channel: hundreds to thousands in real models after normalisation.
const MASSIVE_KEY: f64 = 60.0;
/// q on the massive channel in the sink heads.
const SINK_QUERY: f64 = 8.0;
/// A learned sink scores above the first token, so it takes the weight over.
const LEARNED_SINK: f64 = 80.0;

fn main() -> Result<(), outlier_attn::Error> {
    let found = discover();
    let backend = found.best();
    println!("backend: {}", backend.name());
    for line in backend.describe().iter().skip(1) {
        println!("  {line}");
    }
    for (name, why) in &found.missing {
        println!("  (not used: {name}: {why})");
    }

    #[cfg(feature = "safetensors")]
    real_model(backend)?;

    let shape = Shape::new(1, HEADS, HEADS, TOKENS, TOKENS, HEAD_DIM);
    let base = Problem::new(shape, DType::F16)
        .with_mask(Mask::Causal)
        .with_stats(StatsLevel::HeadsAndKeys);
    let inputs = sink_inputs(&base);
    println!("\n== A planted sink, every variant ==");
    println!(
        "{TOKENS} tokens, {HEADS} heads of dim {HEAD_DIM}, f16, causal. Token 0's key has {MASSIVE_KEY} on channel \
         {MASSIVE_CHANNEL} and its value is ~0; heads 0-{} read that channel.",
        SINK_HEADS - 1
    );

    for variant in variants() {
        let problem = base.with_variant(variant);
        let inputs = HostInputs {
            params: params_for(&problem),
            ..inputs.clone()
        };
        let out = backend.forward(&problem, &inputs)?;
        println!("\n({}) {}", variant.letter(), variant.name());
        println!(
            "  head  first_key_mass  sink_mass  max_score  entropy  row_mass  q_max/mean (ch)  v0_norm_ratio  gate_mean"
        );
        for h in 0..HEADS {
            let s = out
                .head_stats(&problem, 0, h)
                .expect("statistics were requested");
            println!(
                "  {h:>4}  {:>14.3}  {:>9.3}  {:>9.2}  {:>7.3}  {:>8.3}  {:>9.1} ({:>2})  {:>13.4}  {:>9.3}",
                s.first_key_mass,
                s.sink_mass,
                s.max_score,
                s.mean_entropy,
                s.row_mass_mean,
                s.q_absmax / s.q_absmean,
                s.q_argmax_channel,
                s.v0_norm_ratio,
                s.gate_mean,
            );
        }
        let outliers = find_outliers(
            &shape,
            out.stats.as_deref().unwrap_or(&[]),
            out.key_mass.as_deref(),
        );
        let keys: Vec<String> = outliers
            .keys
            .iter()
            .map(|k| format!("token {} (mean mass {:.1})", k.key, k.mean_mass))
            .collect();
        println!(
            "  attention outliers (head-mean key mass >= 0.1·Nq): {}",
            if keys.is_empty() {
                "none".to_string()
            } else {
                keys.join(", ")
            }
        );
    }
    Ok(())
}

/// Softmax attention of each layer of all-MiniLM-L6-v2, as PyTorch fed it.
#[cfg(feature = "safetensors")]
fn real_model(backend: &dyn outlier_attn::Backend) -> Result<(), outlier_attn::Error> {
    use outlier_attn::safetensors_io::{MINILM_FIXTURE, ModelDump};

    // The fixture ships with the repository, not with the published crate.
    let path = std::env::args()
        .nth(1)
        .unwrap_or(MINILM_FIXTURE.to_string());
    let dump = match ModelDump::open(&path) {
        Ok(dump) => dump,
        Err(e) => {
            println!(
                "\n(real model skipped: {path}: {e}; run from a checkout of the repository, \
                 or pass the path of its {MINILM_FIXTURE})"
            );
            return Ok(());
        }
    };
    let first = &dump.layers[0].shape;
    println!(
        "\n== all-MiniLM-L6-v2: {} layers, {} heads of dim {}, {} sentences of {} tokens ==",
        dump.layers.len(),
        first.q_heads,
        first.head_dim,
        first.batch,
        first.q_len
    );
    println!("first_key_mass per head (the weight on [CLS]), and the keys the paper's rule flags:");
    for layer in &dump.layers {
        let problem = Problem::new(layer.shape, layer.dtype).with_stats(StatsLevel::HeadsAndKeys);
        let out = backend.forward(&problem, &layer.inputs)?;
        let per_head: Vec<String> = (0..layer.shape.q_heads)
            .map(|h| {
                let mean = (0..layer.shape.batch)
                    .filter_map(|b| out.head_stats(&problem, b, h))
                    .map(|s| s.first_key_mass)
                    .sum::<f32>()
                    / layer.shape.batch as f32;
                format!("{mean:.2}")
            })
            .collect();
        let outliers = find_outliers(
            &layer.shape,
            out.stats.as_deref().unwrap_or(&[]),
            out.key_mass.as_deref(),
        );
        let keys: Vec<String> = outliers
            .keys
            .iter()
            .map(|k| {
                let token = dump.token(k.batch, k.key).unwrap_or("?");
                format!("{token} ({:.1}/{})", k.mean_mass, layer.shape.q_len)
            })
            .collect();
        println!(
            "  layer {}: {}  outliers: {}",
            layer.index,
            per_head.join(" "),
            keys.join(", ")
        );
    }
    Ok(())
}

fn variants() -> Vec<Variant> {
    let mut v = Variant::all_default().to_vec();
    v[4] = Variant::ContextScale {
        gate: Gate::TwoSigmoid,
        granularity: GateGranularity::PerHead,
    };
    v
}

/// Q, K, V with the sink mechanism planted.
fn sink_inputs(problem: &Problem) -> HostInputs {
    let s = problem.shape;
    let d = s.head_dim;
    let mut rng = Rng::new(2025);
    let mut q = vec![0.0; TOKENS * HEADS * d];
    let mut k = vec![0.0; TOKENS * HEADS * d];
    let mut v = vec![0.0; TOKENS * HEADS * d];
    for t in 0..TOKENS {
        for h in 0..HEADS {
            let at = (t * HEADS + h) * d;
            for c in 0..d {
                q[at + c] = rng.uniform(-1.0, 1.0);
                k[at + c] = rng.uniform(-1.0, 1.0);
                v[at + c] = rng.uniform(-1.0, 1.0);
            }
            // Sink heads read the massive channel; the others ignore it.
            q[at + MASSIVE_CHANNEL] = if h < SINK_HEADS { SINK_QUERY } else { 0.0 };
            k[at + MASSIVE_CHANNEL] = if t == 0 { MASSIVE_KEY } else { 0.0 };
            if t == 0 {
                for c in 0..d {
                    v[at + c] *= 0.01;
                }
            }
        }
    }
    let dt = problem.dtype;
    HostInputs::dense(
        problem,
        HostTensor::from_f64(dt, &q),
        HostTensor::from_f64(dt, &k),
        HostTensor::from_f64(dt, &v),
    )
}

/// Parameters that a model trained with each variant could have learned: sinks that outscore
/// token 0 in the sink heads, and gates that scale those heads down instead.
fn params_for(problem: &Problem) -> Params<HostTensor> {
    let d = HEAD_DIM;
    let f32s = |x: Vec<f64>| Some(HostTensor::from_f64(DType::F32, &x));
    let per_head = |f: &dyn Fn(usize, usize) -> f64| -> Vec<f64> {
        (0..HEADS * d).map(|i| f(i / d, i % d)).collect()
    };
    let sink_head = |h: usize| h < SINK_HEADS;
    let mut p = Params::none();
    match problem.variant {
        Variant::ValueBias => p.v_bias = f32s(per_head(&|_, _| 0.05)),
        Variant::ContextBias | Variant::KvSink => {
            p.k_sink = f32s(per_head(&|h, c| {
                if c == MASSIVE_CHANNEL && sink_head(h) {
                    LEARNED_SINK
                } else {
                    0.0
                }
            }));
            p.v_sink = f32s(per_head(&|_, _| 0.0));
        }
        Variant::LogitSink => {
            let theta = (0..HEADS)
                .map(|h| {
                    if sink_head(h) {
                        LEARNED_SINK * SINK_QUERY / (d as f64).sqrt()
                    } else {
                        -10.0
                    }
                })
                .collect();
            p.sink_logits = f32s(theta);
        }
        Variant::ContextScale { .. } => {
            // One factor per token and head: small where the head wants to do nothing.
            let z: Vec<f64> = (0..TOKENS * HEADS)
                .map(|i| if sink_head(i % HEADS) { -3.0 } else { 1.0 })
                .collect();
            p.gate = Some(HostTensor::from_f64(problem.dtype, &z));
        }
        _ => {}
    }
    p
}
