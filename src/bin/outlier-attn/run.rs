//! `outlier-attn run`: replay one call dumped from an engine.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Args;
use outlier_attn::safetensors_io::{self, read_call_at};
use outlier_attn::{cases, parity, reference};

use crate::common::{self, CliError, CliResult, ProblemArgs};

/// Flags of `outlier-attn run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// A safetensors file with `q`, `k`, `v` ([B, N, H, d]; f32, f16 or bf16) and the
    /// variant's parameters (`k_sink`, `v_sink`, `v_bias`, `sink_logits`, `gate`); or an
    /// engine-shaped call: packed `q` [total_q, Hq, d] with `cu_seqlens_q`, packed `k`, `v`
    /// [total_k, Hkv, d] with `cu_seqlens_k`, `seqlens_k` for a dense cache with lengths, or
    /// a paged `k_cache`, `v_cache` [pages, page_size, Hkv, d] with `block_table` and
    /// `seqlens_k` (index tensors i32).
    pub input: PathBuf,
    /// Read `{prefix}q`, `{prefix}k`, … instead: `layers.3.` replays layer 3 of a model dump.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Where to write `o`, `lse`, `stats` and `key_mass` (safetensors).
    #[arg(long, short)]
    pub out: Option<PathBuf>,
    /// The backend to run (first word of its name); the best one present by default.
    #[arg(long)]
    pub backend: Option<String>,
    /// Skip the f64 reference and the parity report: a large engine dump replays in seconds
    /// instead of minutes. The outputs are still written with `--out`.
    #[arg(long)]
    pub no_reference: bool,
    #[command(flatten)]
    pub problem: ProblemArgs,
}

/// Reads the call, runs it, writes the outputs and prints the parity report.
pub fn run(args: &RunArgs) -> CliResult {
    let discovery = outlier_attn::discover_named(args.backend.as_slice());
    let backend = common::select_one(&discovery, args.backend.as_ref())?;
    let path = &args.input;
    let bytes = safetensors_io::read_file(path).map_err(|e| CliError::file(path, e))?;
    let call = read_call_at(&bytes, &args.prefix, args.problem.variant())
        .map_err(|e| CliError::file(path, e))?;
    for name in &call.ignored {
        eprintln!(
            "note: tensor `{name}` is not read by this {} call; ignored",
            call.variant
        );
    }
    let p = &args.problem;
    let mut problem = call
        .problem()
        .with_mask(p.mask()?)
        .with_stats(p.stats.into());
    problem.scale = p.scale;
    problem.softcap = p.softcap;
    // The contract's refusals (shapes, head dim, scalars, index tensors) are bad input,
    // reported before anything runs.
    call.inputs
        .validate(&problem)
        .map_err(|e| CliError::file(path, e))?;

    let label = cases::label(&problem);
    println!("{label} on {}", backend.name());
    let outputs = backend
        .forward(&problem, &call.inputs)
        .map_err(|e| CliError::Failed(e.to_string()))?;
    let report = if args.no_reference {
        println!("not checked against the reference (--no-reference)");
        None
    } else {
        let exact = reference::forward(&problem, &call.inputs)
            .map_err(|e| CliError::Failed(format!("reference: {e}")))?;
        let baseline = reference::baseline(&problem, &call.inputs)
            .map_err(|e| CliError::Failed(format!("baseline: {e}")))?;
        let report = parity::compare(&problem, &outputs, &exact, &baseline);
        print!("{report}");
        Some(report)
    };

    if let Some(out) = &args.out {
        let meta = BTreeMap::from([
            ("problem".to_string(), label.clone()),
            ("backend".to_string(), backend.name()),
            ("source".to_string(), path.display().to_string()),
        ]);
        let written = safetensors_io::write_outputs(&problem, &outputs, meta)
            .map_err(|e| CliError::file(out, e))?;
        std::fs::write(out, written).map_err(|e| CliError::file(out, e))?;
        println!("wrote {}", out.display());
    }
    if report.is_none_or(|r| r.passed()) {
        Ok(())
    } else {
        Err(CliError::Failed(format!(
            "{} disagrees with the reference on {label}",
            backend.name()
        )))
    }
}
