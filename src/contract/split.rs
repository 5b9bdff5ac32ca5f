//! Split-KV (flash-decoding), shared by the backends: whether a call cuts each row's keys into
//! chunks run by workgroups (blocks) of their own, and the split count of the heuristic.
//!
//! A decode call has few query rows, so its forward grid may leave most of a device idle;
//! cutting each row's keys into splits multiplies the workgroups, and a combine pass merges
//! the splits' partial results (running max, sum, unnormalised output) in split order, so a
//! result stays bit-identical from run to run. Each backend decides where it can split; the
//! setting and the count heuristic are one definition here.

/// The most splits the heuristic makes of a row's keys (FlashAttention-2's bound too): past it
/// the partials and the combine cost more than the idle multiprocessors they fill.
pub const MAX_SPLITS: usize = 128;

/// Whether a call splits the keys of its rows across blocks (split-KV, for decode: a call with
/// few query rows has too few blocks to fill the device, so each row's keys are cut into
/// splits run by blocks of their own, whose partial results a combine kernel merges).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum SplitKv {
    /// The backend's heuristic ([`heuristic_splits`] on CUDA; the WGSL backend documents its
    /// own use of it): split when the blocks would leave most of the device idle.
    ///
    /// Not batch invariant, by design: the count follows the number of blocks (a batch that
    /// fills the device needs no split; that term is the heuristic) and the declared key
    /// length (the longest sequence, or a cache's capacity), and a sub-batch changes both.
    /// Counting one sequence's blocks instead would split large-batch decodes that need no
    /// split, and leave the chunk tied to the declared length; following each sequence's own
    /// length needs the count chosen on the device per sequence. For invariance fix the chunk
    /// ([`KeysPerSplit`](SplitKv::KeysPerSplit)), as FlashInfer does.
    #[default]
    Auto,
    /// Never split: every forward block finishes its rows.
    Off,
    /// Split wherever the kernels can, with the heuristic's count, at least two splits where
    /// the keys span two K/V tiles.
    On,
    /// Split into chunks of this many keys (rounded up to whole K/V tiles; 0 counts as one
    /// tile). The cut of a row then depends on its key length alone, not on the batch or the
    /// device, so a sub-batch gives bit for bit the rows of the full batch (FlashInfer's
    /// `fixed_split_size`); [`Auto`](SplitKv::Auto) and [`On`](SplitKv::On) pick the count from
    /// the number of blocks, which the batch changes.
    KeysPerSplit(usize),
}

/// The split count of FlashAttention-2's heuristic, written from its description, for `blocks`
/// blocks (workgroups) of `tiles` K/V tiles each on a device of `units` multiprocessors
/// (compute units): no split when the blocks fill 80 % of them (unless `force`); else, over the
/// split counts up to [`MAX_SPLITS`] and the key tiles that change the chunk length, the
/// efficiency of a count is its waves (blocks·splits / units) over the whole waves they take,
/// and the smallest count within 85 % of the best efficiency wins. `force`: at least two
/// splits where there are two tiles.
pub fn heuristic_splits(blocks: usize, tiles: usize, units: usize, force: bool) -> usize {
    let units = units.max(1);
    let most = tiles.min(MAX_SPLITS);
    if most < 2 || (!force && blocks * 5 >= units * 4) {
        return 1;
    }
    let efficiency = |splits: usize| {
        let waves = (blocks * splits) as f64 / units as f64;
        waves / waves.ceil()
    };
    // A count whose chunk is the previous count's chunk only adds idle splits.
    let changes_chunk =
        |splits: &usize| *splits == 1 || tiles.div_ceil(*splits) != tiles.div_ceil(*splits - 1);
    let best = (1..=most)
        .filter(changes_chunk)
        .map(efficiency)
        .fold(0.0, f64::max);
    let least = if force { 2 } else { 1 };
    (least..=most)
        .filter(changes_chunk)
        .find(|&splits| efficiency(splits) >= 0.85 * best)
        .unwrap_or(least)
}
