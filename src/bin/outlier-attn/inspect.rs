//! `outlier-attn inspect`: per-head statistics of a model dump, the paper's outlier rules, and
//! a layers x heads heatmap.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use outlier_attn::safetensors_io::{Layer, ModelDump};
use outlier_attn::{
    ACTIVATION_OUTLIER_RATIO, ChannelSource, HeadStats, HostOutputs, KEY_OUTLIER_FRACTION, Problem,
    Stat, StatsLevel, find_outliers,
};
use serde_json::json;

use crate::common::{self, CliError, CliResult, MaskArg};
use crate::svg::{self, Heatmap};

/// The statistic shown in the table and the heatmap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ShownStat {
    /// Mean weight on key 0 ([CLS], <bos>): the first-token sink.
    FirstKeyMass,
    /// Mean weight on a learned sink (0 for plain softmax).
    SinkMass,
    /// q_absmax / q_absmean: activation outliers in Q.
    QRatio,
    /// k_absmax / k_absmean: activation outliers in K.
    KRatio,
    /// Largest score.
    MaxScore,
    /// Mean entropy of the rows (nats).
    Entropy,
}

impl ShownStat {
    fn of(self, s: &HeadStats) -> f64 {
        match self {
            ShownStat::FirstKeyMass => s.first_key_mass as f64,
            ShownStat::SinkMass => s.sink_mass as f64,
            ShownStat::QRatio => s.q_absmax as f64 / s.q_absmean as f64,
            ShownStat::KRatio => s.k_absmax as f64 / s.k_absmean as f64,
            ShownStat::MaxScore => s.max_score as f64,
            ShownStat::Entropy => s.mean_entropy as f64,
        }
    }

    fn title(self) -> &'static str {
        match self {
            ShownStat::FirstKeyMass => "first_key_mass",
            ShownStat::SinkMass => "sink_mass",
            ShownStat::QRatio => "q_absmax / q_absmean",
            ShownStat::KRatio => "k_absmax / k_absmean",
            ShownStat::MaxScore => "max_score",
            ShownStat::Entropy => "mean_entropy",
        }
    }
}

/// Flags of `outlier-attn inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// A safetensors model dump: `layers.{i}.q`, `layers.{i}.k`, `layers.{i}.v` ([B, N, H, d]),
    /// tokens optionally as metadata `tokens` (a JSON array of string arrays, one per batch entry).
    pub input: PathBuf,
    /// The backend computing the statistics; the best one present by default.
    #[arg(long)]
    pub backend: Option<String>,
    /// The statistic of the layer x head table and the heatmap (mean over the batch).
    #[arg(long, value_enum, default_value = "first-key-mass")]
    pub stat: ShownStat,
    /// Write every layer's statistics records, key mass and outliers as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a layers x heads heatmap of the statistic as SVG.
    #[arg(long)]
    pub heatmap: Option<PathBuf>,
    /// The model's mask (an encoder such as BERT sees every key).
    #[arg(long, value_enum, default_value = "none")]
    pub mask: MaskArg,
    /// σ (default 1/√d).
    #[arg(long)]
    pub scale: Option<f32>,
}

struct LayerResult {
    index: usize,
    problem: Problem,
    outputs: HostOutputs,
}

impl LayerResult {
    fn heads(&self) -> Vec<HeadStats> {
        HeadStats::from_buffer(self.outputs.stats.as_deref().unwrap_or_default())
    }

    /// The statistic of each query head, averaged over the batch.
    fn per_head(&self, stat: ShownStat) -> Vec<f64> {
        let s = &self.problem.shape;
        let heads = self.heads();
        (0..s.q_heads)
            .map(|h| {
                (0..s.batch)
                    // A record a backend did not return reads as NaN, never as a panic.
                    .map(|b| {
                        heads
                            .get(b * s.q_heads + h)
                            .map_or(f64::NAN, |r| stat.of(r))
                    })
                    .sum::<f64>()
                    / s.batch as f64
            })
            .collect()
    }
}

/// Runs every layer, prints the tables and outliers, writes the heatmap.
pub fn inspect(args: &InspectArgs) -> CliResult {
    let discovery = outlier_attn::discover_named(args.backend.as_slice());
    let backend = common::select_one(&discovery, args.backend.as_ref())?;
    let path = &args.input;
    let dump = ModelDump::open(path).map_err(|e| CliError::file(path, e))?;
    let first = &dump.layers[0].shape;
    let model = dump
        .metadata
        .get("model")
        .cloned()
        .unwrap_or_else(|| path.display().to_string());
    println!(
        "{model}: {} layers, B={} Hq={} Hkv={} Nq={} Nk={} d={}; statistics on {}",
        dump.layers.len(),
        first.batch,
        first.q_heads,
        first.kv_heads,
        first.q_len,
        first.kv_len,
        first.head_dim,
        backend.name()
    );

    let bar = common::progress(dump.layers.len(), "inspect");
    let mut results = Vec::with_capacity(dump.layers.len());
    for layer in &dump.layers {
        results.push(run_layer(backend, layer, args).map_err(|e| CliError::file(path, e))?);
        bar.inc(1);
    }
    bar.finish_and_clear();

    let q_heads = results
        .iter()
        .map(|r| r.problem.shape.q_heads)
        .max()
        .unwrap_or(0);
    println!(
        "\n{} (mean over the batch), layer x head:",
        args.stat.title()
    );
    print!("layer");
    for h in 0..q_heads {
        print!(" {:>7}", format!("h{h}"));
    }
    println!();
    let mut grid = Vec::with_capacity(results.len());
    for r in &results {
        let values = r.per_head(args.stat);
        print!("{:>5}", r.index);
        for v in &values {
            print!(" {:>7}", short(*v));
        }
        println!();
        grid.push(values);
    }

    print_top_keys(&dump, &results, q_heads);
    print_outliers(&dump, &results);

    if let Some(out) = &args.json {
        common::write_json(out, &to_json(&dump, &results))?;
    }
    if let Some(out) = &args.heatmap {
        let svg = svg::heatmap(&Heatmap {
            title: format!("{model}: {} per head", args.stat.title()),
            row_label: "layer",
            col_label: "head",
            rows: results.iter().map(|r| r.index.to_string()).collect(),
            cols: (0..q_heads).map(|h| h.to_string()).collect(),
            values: grid,
        });
        common::write_text(out, &svg)?;
        println!("\nwrote {}", out.display());
    }
    Ok(())
}

fn run_layer(
    backend: &dyn outlier_attn::Backend,
    layer: &Layer,
    args: &InspectArgs,
) -> outlier_attn::Result<LayerResult> {
    let mut problem = Problem::new(layer.shape, layer.dtype)
        .with_mask(args.mask.into())
        .with_stats(StatsLevel::HeadsAndKeys);
    problem.scale = args.scale;
    let outputs = backend.forward(&problem, &layer.inputs)?;
    Ok(LayerResult {
        index: layer.index,
        problem,
        outputs,
    })
}

/// Three significant figures in at most seven characters.
fn short(x: f64) -> String {
    if !x.is_finite() {
        format!("{x}")
    } else if x.abs() >= 1e4 || (x != 0.0 && x.abs() < 1e-3) {
        format!("{x:.1e}")
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.3}")
    }
}

/// For each (layer, head), the token that receives the most attention (summed over the rows,
/// averaged over the batch, as a share of the rows): where the head's mass sinks.
fn print_top_keys(dump: &ModelDump, results: &[LayerResult], q_heads: usize) {
    println!("\ntoken receiving the most attention per head (share of all rows' weight):");
    print!("layer");
    for h in 0..q_heads {
        print!(" {:>12}", format!("h{h}"));
    }
    println!();
    for r in results {
        let s = &r.problem.shape;
        let km = r.outputs.key_mass.as_deref().unwrap_or_default();
        print!("{:>5}", r.index);
        for h in 0..s.q_heads {
            // Mass per token string, so that [SEP] at different positions adds up.
            let mut by_token: BTreeMap<String, f64> = BTreeMap::new();
            for b in 0..s.batch {
                for j in 0..s.kv_len {
                    let name = dump
                        .token(b, j)
                        .map_or_else(|| format!("#{j}"), str::to_string);
                    *by_token.entry(name).or_default() += km
                        .get((b * s.q_heads + h) * s.kv_len + j)
                        .map_or(f64::NAN, |&m| m as f64);
                }
            }
            let rows = (s.batch * s.q_len) as f64;
            let (token, mass) = by_token
                .into_iter()
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .unwrap_or_default();
            let token: String = token.chars().take(7).collect();
            print!(" {:>12}", format!("{token} {:.2}", mass / rows));
        }
        println!();
    }
}

fn print_outliers(dump: &ModelDump, results: &[LayerResult]) {
    println!(
        "\nattention outliers (mean key_mass over heads >= {KEY_OUTLIER_FRACTION}·Nq), \
         activation outliers (max|x| > {ACTIVATION_OUTLIER_RATIO}·mean|x|),\n\
         and the channels holding the largest |q| and |k|:"
    );
    for r in results {
        let s = &r.problem.shape;
        let stats = r.outputs.stats.as_deref().unwrap_or_default();
        let found = find_outliers(s, stats, r.outputs.key_mass.as_deref());
        let keys: Vec<String> = found
            .keys
            .iter()
            .map(|k| {
                let token = dump
                    .token(k.batch, k.key)
                    .map(|t| format!(" {t}"))
                    .unwrap_or_default();
                format!("b{} key {}{token} ({:.2})", k.batch, k.key, k.mean_mass)
            })
            .collect();
        let channels: Vec<String> = found
            .channels
            .iter()
            .map(|c| {
                let src = if c.source == ChannelSource::Q {
                    "q"
                } else {
                    "k"
                };
                format!(
                    "b{} h{} {src} ch {} ({:.0}x)",
                    c.batch, c.head, c.channel, c.ratio
                )
            })
            .collect();
        let none = |v: Vec<String>| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        let heads = r.heads();
        let d = s.head_dim;
        println!("layer {}", r.index);
        println!("  outlier keys:     {}", none(keys));
        println!("  outlier channels: {}", none(channels));
        println!(
            "  largest |q|:      {}",
            largest(&heads, s.q_heads, d, |h| (
                h.q_absmax,
                h.q_absmean,
                h.q_argmax_channel
            ))
        );
        println!(
            "  largest |k|:      {}",
            largest(&heads, s.q_heads, d, |h| (
                h.k_absmax,
                h.k_absmean,
                h.k_argmax_channel
            ))
        );
    }
}

/// The (batch, head) whose max |x| stands highest above its mean, with its channel within the
/// head and in the model's hidden dimension (head · d + channel).
fn largest(
    heads: &[HeadStats],
    q_heads: usize,
    head_dim: usize,
    of: impl Fn(&HeadStats) -> (f32, f32, u32),
) -> String {
    heads
        .iter()
        .enumerate()
        .max_by(|a, b| {
            let r = |h: &HeadStats| {
                let (max, mean, _) = of(h);
                max as f64 / mean as f64
            };
            r(a.1).total_cmp(&r(b.1))
        })
        .map_or_else(String::new, |(i, h)| {
            let (max, mean, ch) = of(h);
            let head = i % q_heads.max(1);
            format!(
                "head {head} channel {ch} (hidden {}): {:.2}, {:.1}x the head's mean |x|",
                head * head_dim + ch as usize,
                max,
                max as f64 / mean as f64
            )
        })
}

fn to_json(dump: &ModelDump, results: &[LayerResult]) -> serde_json::Value {
    let layers: Vec<serde_json::Value> = results
        .iter()
        .map(|r| {
            let s = &r.problem.shape;
            let stats = r.outputs.stats.as_deref().unwrap_or_default();
            let found = find_outliers(s, stats, r.outputs.key_mass.as_deref());
            let heads: Vec<serde_json::Value> = stats
                .chunks_exact(Stat::COUNT)
                .enumerate()
                .map(|(i, record)| {
                    let mut head = serde_json::Map::new();
                    head.insert("batch".into(), json!(i / s.q_heads.max(1)));
                    head.insert("head".into(), json!(i % s.q_heads.max(1)));
                    for stat in Stat::ALL {
                        head.insert(stat.name().into(), json!(record[stat.index()]));
                    }
                    serde_json::Value::Object(head)
                })
                .collect();
            json!({
                "layer": r.index,
                "shape": {"batch": s.batch, "q_heads": s.q_heads, "kv_heads": s.kv_heads,
                          "q_len": s.q_len, "kv_len": s.kv_len, "head_dim": s.head_dim},
                "heads": heads,
                "key_mass": r.outputs.key_mass,
                "outlier_keys": found.keys.iter().map(|k| json!({
                    "batch": k.batch, "key": k.key, "mean_mass": k.mean_mass,
                    "token": dump.token(k.batch, k.key),
                })).collect::<Vec<_>>(),
                "outlier_channels": found.channels.iter().map(|c| json!({
                    "batch": c.batch, "head": c.head,
                    "source": if c.source == ChannelSource::Q { "q" } else { "k" },
                    "channel": c.channel, "ratio": c.ratio,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "tokens": dump.tokens, "layers": layers })
}
