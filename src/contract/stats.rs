//! Per-head outlier statistics: the level, the record layout and the paper's outlier rules.

use std::fmt;

use super::shape::Shape;

/// How many statistics a forward pass computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum StatsLevel {
    /// No statistics.
    #[default]
    Off,
    /// One [`HeadStats`] record per (batch, query head), fused into the forward pass.
    Heads,
    /// `Heads` plus `key_mass` `[B, Hq, Nk]`, the attention every key receives.
    HeadsAndKeys,
}

impl StatsLevel {
    /// The level's name.
    pub fn name(self) -> &'static str {
        match self {
            StatsLevel::Off => "Off",
            StatsLevel::Heads => "Heads",
            StatsLevel::HeadsAndKeys => "HeadsAndKeys",
        }
    }

    /// Whether the per-head record is written.
    pub fn heads(self) -> bool {
        self != StatsLevel::Off
    }

    /// Whether `key_mass` is written.
    pub fn keys(self) -> bool {
        self == StatsLevel::HeadsAndKeys
    }
}

impl fmt::Display for StatsLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One statistic; its discriminant is its index in a record of [`Stat::COUNT`] f32 values,
/// which is also the layout of the stats buffer every backend writes: `[B, Hq, Stat::COUNT]`.
///
/// "Probability" below is the weight the variant applies to key j, divided by the row's weight
/// sum for `Sigmoid` and `ClippedSoftmax`; a row's sink share is part of the distribution for
/// `KvSink`, `LogitSink` and `Softmax1`. Means run over the rows that see a key or a sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Stat {
    /// Mean over rows of the probability of key 0: the first-token sink.
    FirstKeyMass = 0,
    /// Mean over rows of the sink's share (`ContextBias`: 1 − S; 0 without a sink).
    SinkMass,
    /// Max over visible (i, j) of the score s_ij (after softcap).
    MaxScore,
    /// Mean over rows of −Σ p ln p, the sink one more outcome.
    MeanEntropy,
    /// max |q| over this head's Q.
    QAbsMax,
    /// mean |q| over this head's Q.
    QAbsMean,
    /// Channel of max |q| (lowest on ties), stored as f32.
    QArgmaxChannel,
    /// max |k| over the kv head this head reads.
    KAbsMax,
    /// mean |k| over that kv head.
    KAbsMean,
    /// Channel of max |k| (lowest on ties), stored as f32.
    KArgmaxChannel,
    /// max |v| over that kv head.
    VAbsMax,
    /// mean |v| over that kv head.
    VAbsMean,
    /// ‖v_0‖ / mean_j ‖v_j‖ over that kv head.
    V0NormRatio,
    /// Smallest applied gate factor γ (`ContextScale`; NaN otherwise).
    GateMin,
    /// Mean applied gate factor γ (`ContextScale`; NaN otherwise).
    GateMean,
    /// Largest applied gate factor γ (`ContextScale`; NaN otherwise).
    GateMax,
    /// Mean over rows of the weight on real keys: below 1 where a sink takes mass.
    RowMassMean,
}

impl Stat {
    /// Values in one record.
    pub const COUNT: usize = 17;

    /// Every statistic in record order.
    pub const ALL: [Stat; Stat::COUNT] = [
        Stat::FirstKeyMass,
        Stat::SinkMass,
        Stat::MaxScore,
        Stat::MeanEntropy,
        Stat::QAbsMax,
        Stat::QAbsMean,
        Stat::QArgmaxChannel,
        Stat::KAbsMax,
        Stat::KAbsMean,
        Stat::KArgmaxChannel,
        Stat::VAbsMax,
        Stat::VAbsMean,
        Stat::V0NormRatio,
        Stat::GateMin,
        Stat::GateMean,
        Stat::GateMax,
        Stat::RowMassMean,
    ];

    /// Index in the record.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The snake_case name (`first_key_mass`, …).
    pub fn name(self) -> &'static str {
        match self {
            Stat::FirstKeyMass => "first_key_mass",
            Stat::SinkMass => "sink_mass",
            Stat::MaxScore => "max_score",
            Stat::MeanEntropy => "mean_entropy",
            Stat::QAbsMax => "q_absmax",
            Stat::QAbsMean => "q_absmean",
            Stat::QArgmaxChannel => "q_argmax_channel",
            Stat::KAbsMax => "k_absmax",
            Stat::KAbsMean => "k_absmean",
            Stat::KArgmaxChannel => "k_argmax_channel",
            Stat::VAbsMax => "v_absmax",
            Stat::VAbsMean => "v_absmean",
            Stat::V0NormRatio => "v0_norm_ratio",
            Stat::GateMin => "gate_min",
            Stat::GateMean => "gate_mean",
            Stat::GateMax => "gate_max",
            Stat::RowMassMean => "row_mass_mean",
        }
    }

    /// Whether the value is a channel index rather than a measurement.
    pub fn is_argmax(self) -> bool {
        matches!(self, Stat::QArgmaxChannel | Stat::KArgmaxChannel)
    }
}

/// The statistics of one (batch, query head), read from a `[Stat::COUNT]` record.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HeadStats {
    /// See [`Stat::FirstKeyMass`].
    pub first_key_mass: f32,
    /// See [`Stat::SinkMass`].
    pub sink_mass: f32,
    /// See [`Stat::MaxScore`].
    pub max_score: f32,
    /// See [`Stat::MeanEntropy`].
    pub mean_entropy: f32,
    /// See [`Stat::QAbsMax`].
    pub q_absmax: f32,
    /// See [`Stat::QAbsMean`].
    pub q_absmean: f32,
    /// See [`Stat::QArgmaxChannel`].
    pub q_argmax_channel: u32,
    /// See [`Stat::KAbsMax`].
    pub k_absmax: f32,
    /// See [`Stat::KAbsMean`].
    pub k_absmean: f32,
    /// See [`Stat::KArgmaxChannel`].
    pub k_argmax_channel: u32,
    /// See [`Stat::VAbsMax`].
    pub v_absmax: f32,
    /// See [`Stat::VAbsMean`].
    pub v_absmean: f32,
    /// See [`Stat::V0NormRatio`].
    pub v0_norm_ratio: f32,
    /// See [`Stat::GateMin`].
    pub gate_min: f32,
    /// See [`Stat::GateMean`].
    pub gate_mean: f32,
    /// See [`Stat::GateMax`].
    pub gate_max: f32,
    /// See [`Stat::RowMassMean`].
    pub row_mass_mean: f32,
}

impl HeadStats {
    /// Reads one record laid out as [`Stat::ALL`].
    pub fn from_record(r: &[f32; Stat::COUNT]) -> HeadStats {
        let at = |s: Stat| r[s.index()];
        HeadStats {
            first_key_mass: at(Stat::FirstKeyMass),
            sink_mass: at(Stat::SinkMass),
            max_score: at(Stat::MaxScore),
            mean_entropy: at(Stat::MeanEntropy),
            q_absmax: at(Stat::QAbsMax),
            q_absmean: at(Stat::QAbsMean),
            q_argmax_channel: at(Stat::QArgmaxChannel) as u32,
            k_absmax: at(Stat::KAbsMax),
            k_absmean: at(Stat::KAbsMean),
            k_argmax_channel: at(Stat::KArgmaxChannel) as u32,
            v_absmax: at(Stat::VAbsMax),
            v_absmean: at(Stat::VAbsMean),
            v0_norm_ratio: at(Stat::V0NormRatio),
            gate_min: at(Stat::GateMin),
            gate_mean: at(Stat::GateMean),
            gate_max: at(Stat::GateMax),
            row_mass_mean: at(Stat::RowMassMean),
        }
    }

    /// The records of a `[B, Hq, Stat::COUNT]` buffer, in (batch, head) order.
    pub fn from_buffer(stats: &[f32]) -> Vec<HeadStats> {
        stats
            .chunks_exact(Stat::COUNT)
            .map(|c| {
                let mut r = [0.0; Stat::COUNT];
                r.copy_from_slice(c);
                HeadStats::from_record(&r)
            })
            .collect()
    }
}

/// The paper's rule for attention outliers: a key is one when the mean over heads of its
/// `key_mass` is at least this fraction of Nq.
pub const KEY_OUTLIER_FRACTION: f64 = 0.1;
/// The paper's rule for activation outliers (τ): max |x| above this multiple of mean |x|.
pub const ACTIVATION_OUTLIER_RATIO: f64 = 1000.0;

/// A key flagged by the attention-outlier rule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OutlierKey {
    /// Batch.
    pub batch: usize,
    /// Key index.
    pub key: usize,
    /// Mean over query heads of its key mass.
    pub mean_mass: f64,
}

/// Which tensor an outlier channel was found in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelSource {
    /// Q of the head.
    Q,
    /// K of the kv head the head reads.
    K,
}

/// A channel flagged by the τ rule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OutlierChannel {
    /// Batch.
    pub batch: usize,
    /// Query head.
    pub head: usize,
    /// Q or K.
    pub source: ChannelSource,
    /// The channel holding max |x|.
    pub channel: u32,
    /// max |x| / mean |x|.
    pub ratio: f64,
}

/// What the paper's two rules find in one layer's statistics.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Outliers {
    /// Keys whose head-averaged key mass is at least [`KEY_OUTLIER_FRACTION`]·Nq.
    pub keys: Vec<OutlierKey>,
    /// Q/K channels whose max |x| exceeds [`ACTIVATION_OUTLIER_RATIO`] times the mean |x|.
    pub channels: Vec<OutlierChannel>,
}

/// Applies the attention-outlier rule (when `key_mass` is given) and the τ rule to one layer's
/// statistics (`[B, Hq, Stat::COUNT]`) and key mass (`[B, Hq, Nk]`).
pub fn find_outliers(shape: &Shape, stats: &[f32], key_mass: Option<&[f32]>) -> Outliers {
    let mut out = Outliers::default();
    if let Some(km) = key_mass {
        let threshold = KEY_OUTLIER_FRACTION * shape.q_len as f64;
        for b in 0..shape.batch {
            for j in 0..shape.kv_len {
                let sum: f64 = (0..shape.q_heads)
                    .filter_map(|h| km.get((b * shape.q_heads + h) * shape.kv_len + j))
                    .map(|&x| x as f64)
                    .sum();
                let mean_mass = sum / shape.q_heads as f64;
                if mean_mass >= threshold {
                    out.keys.push(OutlierKey {
                        batch: b,
                        key: j,
                        mean_mass,
                    });
                }
            }
        }
    }
    for (idx, s) in HeadStats::from_buffer(stats).iter().enumerate() {
        let (batch, head) = (idx / shape.q_heads.max(1), idx % shape.q_heads.max(1));
        for (source, max, mean, channel) in [
            (
                ChannelSource::Q,
                s.q_absmax,
                s.q_absmean,
                s.q_argmax_channel,
            ),
            (
                ChannelSource::K,
                s.k_absmax,
                s.k_absmean,
                s.k_argmax_channel,
            ),
        ] {
            let ratio = max as f64 / mean as f64;
            if ratio > ACTIVATION_OUTLIER_RATIO {
                out.channels.push(OutlierChannel {
                    batch,
                    head,
                    source,
                    channel,
                    ratio,
                });
            }
        }
    }
    out
}
