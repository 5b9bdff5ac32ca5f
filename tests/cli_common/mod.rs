//! Running the `outlier-attn` binary from the command-line tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// Runs the binary with `args`, capturing its output.
pub fn tool(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_outlier-attn"))
        .args(args)
        .output()
        .expect("the binary runs")
}

/// Output bytes as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A path in the temporary directory, unique to this test process and `name`.
pub fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("outlier-attn-{}-{name}", std::process::id()))
}

/// Runs the binary with `args` and extra environment variables, capturing its output.
pub fn tool_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_outlier-attn"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("the binary runs")
}
