// How a lane reads the keys of a staged tile, and how the lanes of a row add, without subgroup
// operations: a row's lanes are invocations row · ROW_LANES + part, every lane reads key u's
// quads from workgroup memory (one address for all lanes of a part: a broadcast on GPUs), and
// the lanes of a row add their partial dot products through workgroup memory.

// No registers to hold keys in: a round is WORKGROUP_ROUND keys of the tile (its logits wait in
// private arrays of that length, forward.wgsl).
const KEYS_HELD: u32 = min(BLOCK_N, WORKGROUP_ROUND);

struct Lane {
    @builtin(local_invocation_index) index: u32,
}

fn init_lane(lane: Lane) -> RowLane {
    return RowLane(lane.index / ROW_LANES, lane.index % ROW_LANES);
}

fn hold_keys(u0: u32, c0: u32) {}

// Quad c0 + c of key u0 + u of the tile.
fn key_quad(u0: u32, u: u32, c0: u32, c: u32) -> vec4<f32> {
    return k_tile[(u0 + u) * D4 + c0 + c];
}

fn value_quad(u0: u32, u: u32, c0: u32, c: u32) -> vec4<f32> {
    return v_tile[(u0 + u) * D4 + c0 + c];
}

// Two slots per lane, used in turn: a lane writes slot k of call n + 2 only after every lane
// has passed call n + 1's barrier, so after every read of call n.
var<workgroup> row_red: array<f32, 2u * WORKGROUP_SIZE>;
var<private> red_slot: u32;

// x summed over the row's lanes, in the order `sum_parts` (common.wgsl) writes out. Called in
// uniform control flow by every invocation (it holds a barrier).
fn row_sum(rl: RowLane, x: f32) -> f32 {
    if ROW_LANES == 1u {
        return x;
    }
    let base = red_slot * WORKGROUP_SIZE + rl.row * ROW_LANES;
    red_slot ^= 1u;
    row_red[base + rl.part] = x;
    workgroupBarrier();
    var parts: array<f32, 8>;
    //unroll_all r < ROW_LANES: parts[r] = row_red[base + r];
    return sum_parts(parts);
}
