//! Pipeline build time per specialisation of the WGSL kernels on this machine's adapter:
//! `cargo run --release --features wgpu --example wgsl_build_times [d ...] [f32|f16|bf16 ...]
//! [--row-block N]` (head dims 64, 128 and 256 and every dtype unless named; `--row-block`
//! forces `WgslOptions::row_block`, the register blocking a large call gets, on these small
//! problems). Set `MESA_SHADER_CACHE_DISABLE=true` to measure lavapipe cold (no shader cache).
//! lavapipe compiles a pipeline's machine code at its first dispatch, so the time is that of a
//! first call on a small problem (its run takes a few milliseconds), pipelines built inside it.
use std::time::Instant;

use outlier_attn::wgsl::{WgslBackend, WgslOptions};
use outlier_attn::{Backend, DType, Problem, Shape, StatsLevel, Variant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let row_block = match args.iter().position(|a| a == "--row-block") {
        Some(at) => {
            let n = args
                .get(at + 1)
                .ok_or("--row-block takes a number")?
                .parse()?;
            args.drain(at..at + 2);
            Some(n)
        }
        None => None,
    };
    let (named_dtypes, dims): (Vec<String>, Vec<String>) = args
        .into_iter()
        .partition(|a| DType::ALL.iter().any(|t| t.name() == a));
    let dims: Vec<usize> = dims.iter().map(|a| a.parse()).collect::<Result<_, _>>()?;
    let dtypes: Vec<DType> = DType::ALL
        .into_iter()
        .filter(|t| named_dtypes.is_empty() || named_dtypes.iter().any(|n| n == t.name()))
        .collect();
    let dims = if dims.is_empty() {
        vec![64, 128, 256]
    } else {
        dims
    };
    let backend = WgslBackend::with_options(WgslOptions {
        row_block,
        ..Default::default()
    })?;
    println!("{}", backend.describe().join("\n  "));
    println!("| d | dtype | variant | statistics | first call (ms) |");
    println!("| ---: | --- | --- | --- | ---: |");
    for d in dims {
        for &dtype in &dtypes {
            for (variant, stats) in [
                (Variant::Softmax, StatsLevel::Off),
                (Variant::Softmax, StatsLevel::Heads),
                (Variant::Softmax, StatsLevel::HeadsAndKeys),
                (Variant::KvSink, StatsLevel::Off),
                (Variant::KvSink, StatsLevel::HeadsAndKeys),
                (
                    Variant::ContextScale {
                        gate: outlier_attn::Gate::Sigmoid,
                        granularity: outlier_attn::GateGranularity::PerChannel,
                    },
                    StatsLevel::HeadsAndKeys,
                ),
                (
                    Variant::ClippedSoftmax {
                        zeta: 1.1,
                        gamma: -0.1,
                    },
                    StatsLevel::Off,
                ),
            ] {
                let problem = Problem::new(Shape::new(1, 2, 1, 32, 32, d), dtype)
                    .with_variant(variant)
                    .with_stats(stats);
                let inputs = outlier_attn::cases::random_inputs(&problem, &Default::default());
                let start = Instant::now();
                backend.forward(&problem, &inputs)?;
                println!(
                    "| {d} | {dtype} | {} | {} | {:.0} |",
                    variant.name(),
                    stats.name(),
                    start.elapsed().as_secs_f64() * 1e3
                );
            }
        }
    }
    Ok(())
}
