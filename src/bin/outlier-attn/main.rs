//! `outlier-attn`: check attention kernels against the reference, time them, replay an engine's
//! tensors and inspect a model's heads for attention sinks and activation outliers.
//!
//! Exit status: 0 on success, 1 when a parity check failed, 2 for bad input (flags, files).

mod bench;
mod common;
mod info;
mod inspect;
mod parity;
mod run;
mod svg;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Fused attention kernels and outlier statistics: parity, timing, replay and inspection.
#[derive(Parser, Debug)]
#[command(name = "outlier-attn", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the backends found, their devices, features and kernel paths.
    Info,
    /// Hold every backend present to the reference on a sweep of problems.
    Parity(parity::ParityArgs),
    /// Time the forward pass of every backend present.
    Bench(bench::BenchArgs),
    /// Replay one call read from a safetensors file and write its outputs.
    Run(run::RunArgs),
    /// Per-head statistics of a model dump: attention sinks and outlier channels.
    Inspect(inspect::InspectArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info => info::info(),
        Command::Parity(args) => parity::parity(&args),
        Command::Bench(args) => bench::bench(&args),
        Command::Run(args) => run::run(&args),
        Command::Inspect(args) => inspect::inspect(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
