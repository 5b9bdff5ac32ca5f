// How a lane reads the keys of a staged tile, and how the lanes of a row add, with subgroup
// operations. The subgroup is cut into chunks of CHUNK_LEN lanes (CHUNK_LEN is the adapter's
// smallest subgroup size, so a chunk never straddles two subgroups whatever size the driver
// picks; the tile of BLOCK_N keys is a whole number of chunks, taken KEYS_HELD keys a round).
// A row's ROW_LANES lanes are consecutive subgroup lanes, aligned: lane `part` of the
// row is subgroup lane ≡ part (mod ROW_LANES). A chunk thus holds KEYS_HELD = CHUNK_LEN /
// ROW_LANES keys at a time in registers: the lane at chunk position κ · ROW_LANES + part holds
// part `part` (its LANE_QUADS quads of K and of V) of key u0 + κ, and every lane reads key
// u0 + u's quads from the lane at u · ROW_LANES + its own part. A shuffle is a register
// exchange: on lavapipe about seven times cheaper than a workgroup-memory load, and each feeds
// 4 FMAs. Lanes and chunks come from the subgroup builtins, so no mapping of invocations to
// subgroups is assumed. Every invocation calls these in uniform control flow (the loops over a
// tile's keys have uniform trip counts).

const KEYS_HELD: u32 = CHUNK_LEN / ROW_LANES; // keys a chunk holds in registers at a time

struct Lane {
    @builtin(local_invocation_index) index: u32,
    @builtin(subgroup_invocation_id) subgroup_lane: u32,
}

var<private> chunk_base: u32;     // subgroup lane of this chunk's first lane
var<private> held_key: u32;       // κ: which of the held keys this lane holds a part of
var<private> lane_part: u32;      // which of its row's lanes this lane is
var<private> k_held: array<vec4<f32>, LANE_QUADS>; // registers: part of key u0 + κ of the tile
var<private> v_held: array<vec4<f32>, LANE_QUADS>;

// Rows are handed out to the lane groups by a counter, so that the block's rows have one
// group each whatever the driver's mapping of invocations to subgroups. Which group computes a
// row changes nothing in what the row computes (the same tiles, keys and order).
var<workgroup> next_row: atomic<u32>;

fn init_lane(lane: Lane) -> RowLane {
    let chunk_lane = lane.subgroup_lane % CHUNK_LEN;
    chunk_base = lane.subgroup_lane - chunk_lane;
    held_key = chunk_lane / ROW_LANES;
    let part = lane.subgroup_lane % ROW_LANES;
    lane_part = part;
    if ROW_LANES == 1u {
        return RowLane(lane.index, 0u);
    }
    if lane.index == 0u {
        atomicStore(&next_row, 0u);
    }
    workgroupBarrier();
    var row = 0u;
    if part == 0u {
        row = atomicAdd(&next_row, 1u);
    }
    return RowLane(subgroupShuffle(row, lane.subgroup_lane - part), part);
}

// Takes this lane's part of held key u0 + κ of the staged tile into registers.
fn hold_keys(u0: u32, c0: u32) {
    let at = (u0 + held_key) * D4 + c0;
    //unroll_all c < LANE_QUADS: k_held[c] = k_tile[at + c];
    //unroll_all c < LANE_QUADS: v_held[c] = v_tile[at + c];
}

// Quad c0 + c of key u0 + u of the tile (u < KEYS_HELD).
fn key_quad(u0: u32, u: u32, c0: u32, c: u32) -> vec4<f32> {
    return subgroupShuffle(k_held[c], chunk_base + u * ROW_LANES + lane_part);
}

fn value_quad(u0: u32, u: u32, c0: u32, c: u32) -> vec4<f32> {
    return subgroupShuffle(v_held[c], chunk_base + u * ROW_LANES + lane_part);
}

// x summed over the row's lanes by a butterfly: lane part gets ((x0 + x1) + (x2 + x3)) + ...,
// the same bits on every lane of the row (IEEE addition commutes), the order `sum_parts`
// (common.wgsl) writes out.
fn row_sum(rl: RowLane, x: f32) -> f32 {
    var s = x;
    if ROW_LANES >= 2u {
        s += subgroupShuffleXor(s, 1u);
    }
    if ROW_LANES >= 4u {
        s += subgroupShuffleXor(s, 2u);
    }
    if ROW_LANES >= 8u {
        s += subgroupShuffleXor(s, 4u);
    }
    return s;
}
