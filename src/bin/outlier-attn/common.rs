//! What the subcommands share: errors and exit codes, backend selection, the problem flags,
//! progress bars and JSON output.

use std::fmt;
use std::io::IsTerminal;
use std::path::Path;

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use outlier_attn::{Backend, Discovery, Gate, GateGranularity, Mask, StatsLevel, Variant};

/// Exit status for bad input: flags, files, refused problems.
pub const EXIT_INPUT: u8 = 2;
/// Exit status when a backend failed a parity check.
pub const EXIT_FAILED: u8 = 1;

/// Why a subcommand stopped.
#[derive(Debug)]
pub enum CliError {
    /// Bad input; exit status 2.
    Input(String),
    /// A check failed; exit status 1.
    Failed(String),
}

impl CliError {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Input(_) => EXIT_INPUT,
            CliError::Failed(_) => EXIT_FAILED,
        }
    }

    /// A bad input concerning `path`.
    pub fn file(path: &Path, e: impl fmt::Display) -> CliError {
        CliError::Input(format!("{}: {e}", path.display()))
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Input(m) | CliError::Failed(m) => f.write_str(m),
        }
    }
}

/// Result of a subcommand.
pub type CliResult<T = ()> = Result<T, CliError>;

/// The first word of a backend's name (`wgsl`, `cuda`, `reference`), used to select it.
pub fn short_name(backend: &dyn Backend) -> String {
    short_name_of(&backend.name())
}

/// The first word of a backend name.
pub fn short_name_of(name: &str) -> String {
    name.split([' ', '('])
        .next()
        .unwrap_or_default()
        .to_lowercase()
}

/// The backends named by `wanted` (all present ones when empty), in discovery order.
///
/// # Errors
/// A name that matches no backend present, with the reason when it is a known backend.
pub fn select<'a>(discovery: &'a Discovery, wanted: &[String]) -> CliResult<Vec<&'a dyn Backend>> {
    if wanted.is_empty() {
        return Ok(discovery.backends.iter().map(|b| b.as_ref()).collect());
    }
    let mut out: Vec<&dyn Backend> = Vec::new();
    for name in wanted {
        let name = name.to_lowercase();
        let found = discovery
            .backends
            .iter()
            .find(|b| short_name(b.as_ref()) == name || b.name().to_lowercase().starts_with(&name));
        match found {
            Some(b) => {
                if !out.iter().any(|o| o.name() == b.name()) {
                    out.push(b.as_ref());
                }
            }
            None => {
                let present: Vec<String> = discovery
                    .backends
                    .iter()
                    .map(|b| short_name(b.as_ref()))
                    .collect();
                let why = discovery
                    .missing
                    .iter()
                    .find(|(n, _)| n.to_lowercase() == name)
                    .map(|(_, why)| format!(": {why}"))
                    .unwrap_or_default();
                return Err(CliError::Input(format!(
                    "backend `{name}` is not available{why} (present: {})",
                    present.join(", ")
                )));
            }
        }
    }
    Ok(out)
}

/// The one backend named by `wanted`, or the best one present.
pub fn select_one<'a>(
    discovery: &'a Discovery,
    wanted: Option<&String>,
) -> CliResult<&'a dyn Backend> {
    match wanted {
        None => Ok(discovery.best()),
        Some(name) => Ok(select(discovery, std::slice::from_ref(name))?[0]),
    }
}

/// A progress bar on stderr, hidden when stderr is not a terminal (CI logs, pipes).
pub fn progress(len: usize, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    let template = format!("{what} {{bar:40}} {{pos}}/{{len}} {{msg}}");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style);
    }
    bar
}

/// Writes `value` as pretty JSON to `path`.
///
/// # Errors
/// A write failure, as bad input (the path).
pub fn write_json(path: &Path, value: &serde_json::Value) -> CliResult {
    let text = serde_json::to_string_pretty(value).map_err(|e| CliError::file(path, e))?;
    std::fs::write(path, text + "\n").map_err(|e| CliError::file(path, e))
}

/// Writes a text file (an SVG).
///
/// # Errors
/// A write failure, as bad input (the path).
pub fn write_text(path: &Path, text: &str) -> CliResult {
    std::fs::write(path, text).map_err(|e| CliError::file(path, e))
}

/// The attention variants, as flags name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum VariantArg {
    /// (a) plain softmax.
    Softmax,
    /// (b) value bias (`v_bias`).
    ValueBias,
    /// (c) context-aware bias (`k_sink`, `v_sink`).
    ContextBias,
    /// (d) key/value sink token (`k_sink`, `v_sink`).
    KvSink,
    /// (e) context-aware scaling γ = gate(z) (`gate`).
    ContextScale,
    /// (f) sigmoid attention.
    Sigmoid,
    /// (g) learned sink logits (`sink_logits`).
    LogitSink,
    /// (h) softmax off by one.
    Softmax1,
    /// (i) clipped softmax.
    ClippedSoftmax,
}

/// The gate functions of `context-scale`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum GateArg {
    /// 2·sigmoid(z), the paper's factor.
    TwoSigmoid,
    /// sigmoid(z), gated attention.
    Sigmoid,
    /// z itself.
    Identity,
}

/// Which keys each query sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MaskArg {
    /// Every key.
    None,
    /// Bottom-right causal.
    Causal,
}

impl From<MaskArg> for Mask {
    fn from(m: MaskArg) -> Mask {
        match m {
            MaskArg::None => Mask::None,
            MaskArg::Causal => Mask::Causal,
        }
    }
}

/// Statistics levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StatsArg {
    /// None.
    Off,
    /// Per-head statistics.
    Heads,
    /// Per-head statistics and the key mass.
    HeadsAndKeys,
}

impl From<StatsArg> for StatsLevel {
    fn from(s: StatsArg) -> StatsLevel {
        match s {
            StatsArg::Off => StatsLevel::Off,
            StatsArg::Heads => StatsLevel::Heads,
            StatsArg::HeadsAndKeys => StatsLevel::HeadsAndKeys,
        }
    }
}

/// The flags that define one problem besides its shapes.
#[derive(Args, Debug, Clone)]
pub struct ProblemArgs {
    /// The attention variant.
    #[arg(long, value_enum, default_value = "softmax")]
    pub variant: VariantArg,
    /// The gate of `context-scale` (its granularity comes from the rank of `gate`).
    #[arg(long, value_enum, default_value = "two-sigmoid")]
    pub gate: GateArg,
    /// β of `sigmoid` (default −ln Nk).
    #[arg(long, allow_negative_numbers = true)]
    pub sigmoid_bias: Option<f32>,
    /// ζ ≥ 1 of `clipped-softmax`.
    #[arg(long, default_value_t = 1.003)]
    pub zeta: f32,
    /// γ ≤ 0 of `clipped-softmax`.
    #[arg(long, default_value_t = -0.003, allow_negative_numbers = true)]
    pub gamma: f32,
    /// Which keys each query sees (aligned bottom-right per sequence).
    #[arg(long, value_enum, default_value = "none")]
    pub mask: MaskArg,
    /// A sliding window: keys visible before the diagonal (gpt-oss: 127 with `--mask
    /// causal`); −1 or absent for no bound.
    #[arg(long, allow_negative_numbers = true)]
    pub window_left: Option<i64>,
    /// Keys visible after the diagonal; −1 or absent for no bound (`--mask causal` is 0).
    #[arg(long, allow_negative_numbers = true)]
    pub window_right: Option<i64>,
    /// σ (default 1/√d).
    #[arg(long, allow_negative_numbers = true)]
    pub scale: Option<f32>,
    /// Softcap c: s ← c·tanh(s/c).
    #[arg(long, allow_negative_numbers = true)]
    pub softcap: Option<f32>,
    /// Which statistics to compute.
    #[arg(long, value_enum, default_value = "heads-and-keys")]
    pub stats: StatsArg,
}

impl ProblemArgs {
    /// The mask: `--mask` with the window's bounds (FlashAttention's convention).
    ///
    /// # Errors
    /// A bound below −1, or `--window-right` other than 0 with `--mask causal`.
    pub fn mask(&self) -> CliResult<Mask> {
        let right = match (self.mask, self.window_right) {
            (MaskArg::Causal, None | Some(0)) => 0,
            (MaskArg::Causal, Some(r)) => {
                return Err(CliError::Input(format!(
                    "--window-right {r} with --mask causal: causal attention sees no key after the diagonal (window right = 0)"
                )));
            }
            (MaskArg::None, r) => r.unwrap_or(-1),
        };
        Mask::from_signed(self.window_left.unwrap_or(-1), right)
            .map_err(|e| CliError::Input(e.to_string()))
    }

    /// The variant with its scalar settings (a `context-scale` gate is per head until the
    /// file says otherwise).
    pub fn variant(&self) -> Variant {
        match self.variant {
            VariantArg::Softmax => Variant::Softmax,
            VariantArg::ValueBias => Variant::ValueBias,
            VariantArg::ContextBias => Variant::ContextBias,
            VariantArg::KvSink => Variant::KvSink,
            VariantArg::ContextScale => Variant::ContextScale {
                gate: match self.gate {
                    GateArg::TwoSigmoid => Gate::TwoSigmoid,
                    GateArg::Sigmoid => Gate::Sigmoid,
                    GateArg::Identity => Gate::Identity,
                },
                granularity: GateGranularity::PerHead,
            },
            VariantArg::Sigmoid => Variant::Sigmoid {
                bias: self.sigmoid_bias,
            },
            VariantArg::LogitSink => Variant::LogitSink,
            VariantArg::Softmax1 => Variant::Softmax1,
            VariantArg::ClippedSoftmax => Variant::ClippedSoftmax {
                zeta: self.zeta,
                gamma: self.gamma,
            },
        }
    }
}

/// A float for tables: fixed for moderate magnitudes, scientific otherwise.
pub fn num(x: f64) -> String {
    if x == 0.0 {
        "0".to_string()
    } else if !x.is_finite() || x.abs() >= 1e4 || x.abs() < 1e-3 {
        format!("{x:.2e}")
    } else {
        format!("{x:.4}")
    }
}
