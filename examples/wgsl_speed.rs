//! One WGSL forward timing, for side-by-side comparisons of two builds of the crate
//! (`scripts/wgsl_speed.sh` runs a grid with an old and a new build alternately):
//! `wgsl_speed D DTYPE N VARIANT STATS [REPS] [MASK]` prints the median device time in ms of
//! B = 1, Hq = 8, Hkv = 2, Nq = Nk = N, inputs resident (device timestamps around the pass).
//! VARIANT: softmax, kv_sink, logit_sink, clipped; STATS: off, heads, heads_and_keys; MASK:
//! none (the default), causal, or window:L (L keys before the diagonal, none after it:
//! gpt-oss's 128-token window is window:127).
use outlier_attn::wgsl::WgslBackend;
use outlier_attn::{Backend, DType, Mask, Problem, Shape, StatsLevel, Variant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: wgsl_speed D DTYPE N VARIANT STATS [REPS] [MASK]";
    if args.len() < 5 {
        return Err(usage.into());
    }
    let d: usize = args[0].parse()?;
    let dtype = match args[1].as_str() {
        "f32" => DType::F32,
        "f16" => DType::F16,
        "bf16" => DType::Bf16,
        _ => return Err(usage.into()),
    };
    let n: usize = args[2].parse()?;
    let variant = match args[3].as_str() {
        "softmax" => Variant::Softmax,
        "kv_sink" => Variant::KvSink,
        "logit_sink" => Variant::LogitSink,
        "clipped" => Variant::ClippedSoftmax {
            zeta: 1.1,
            gamma: -0.1,
        },
        _ => return Err(usage.into()),
    };
    let stats = match args[4].as_str() {
        "off" => StatsLevel::Off,
        "heads" => StatsLevel::Heads,
        "heads_and_keys" => StatsLevel::HeadsAndKeys,
        _ => return Err(usage.into()),
    };
    let reps: usize = args.get(5).map(|r| r.parse()).transpose()?.unwrap_or(3);
    let mask = match args.get(6).map(String::as_str) {
        None | Some("none") => Mask::None,
        Some("causal") => Mask::Causal,
        Some(w) => match w.strip_prefix("window:").map(str::parse) {
            Some(Ok(left)) => Mask::window(Some(left), Some(0)),
            _ => return Err(usage.into()),
        },
    };
    let backend = WgslBackend::new()?;
    let problem = Problem::new(Shape::new(1, 8, 2, n, n, d), dtype)
        .with_variant(variant)
        .with_mask(mask)
        .with_stats(stats);
    let inputs = outlier_attn::cases::random_inputs(&problem, &Default::default());
    let mut times = backend
        .device_times(&problem, &inputs, 1, reps)?
        .ok_or("the adapter has no TIMESTAMP_QUERY")?;
    times.sort();
    println!("{:.3}", times[reps / 2].as_secs_f64() * 1e3);
    Ok(())
}
