//! The contract every backend implements (DESIGN.md): element types, shapes and layouts,
//! sequence layouts of engine-shaped calls, variants and their parameters, statistics, the
//! errors, and the one validation function.

mod dtype;
mod error;
mod host;
mod problem;
mod seqs;
mod shape;
mod split;
mod stats;
mod variant;

pub use dtype::{DType, Element, HostTensor};
pub use error::{Error, Result};
pub use host::{Backend, HostInputs, HostOutputs};
pub use problem::{Args, BufferArg, EngineFeature, Mask, Problem, TensorArg, Validated, validate};
pub use seqs::{KvSeqs, QuerySeqs, SeqIndices, SeqMap, SeqSpan, Sequences, validate_indices};
pub use shape::{
    Dim, HEAD_DIM_MULTIPLE, Layout, Layouts, MAX_HEAD_DIM, Shape, Strides, TensorName,
};
pub use split::{MAX_SPLITS, SplitKv, heuristic_splits};
pub use stats::{
    ACTIVATION_OUTLIER_RATIO, ChannelSource, HeadStats, KEY_OUTLIER_FRACTION, OutlierChannel,
    OutlierKey, Outliers, Stat, StatsLevel, find_outliers,
};
pub use variant::{Gate, GateGranularity, Params, Variant};
