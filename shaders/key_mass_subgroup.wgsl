// How the key-mass lanes read a row of the Q tile, with subgroup operations. The subgroup is
// cut into chunks of CHUNK_LEN lanes (the adapter's smallest subgroup size, so that a chunk
// never straddles two subgroups); the lanes of a chunk load the row's D4 quads between them,
// ROW_QUADS_HELD each (lane κ of the chunk quads κ, κ + CHUNK_LEN, ...), and every lane takes
// quad c from the lane that holds it by a shuffle: one workgroup-memory load per CHUNK_LEN
// quads rather than one per quad. On lavapipe each load is a loop over the SIMD lanes and a
// shuffle a register permute; the quads' bits are the tile's either way. Every invocation
// calls these in uniform control flow (the loop over a tile's rows has a uniform trip count).

const ROW_QUADS_HELD: u32 = (D4 + CHUNK_LEN - 1u) / CHUNK_LEN; // quads of a row per lane

struct MassLane {
    @builtin(local_invocation_index) index: u32,
    @builtin(subgroup_invocation_id) subgroup_lane: u32,
}

var<private> chunk_base: u32; // subgroup lane of this chunk's first lane
var<private> chunk_lane: u32; // κ: this lane's place in its chunk
var<private> q_held: array<vec4<f32>, ROW_QUADS_HELD>; // registers: this lane's quads of the row

fn init_mass_lane(lane: MassLane) {
    chunk_lane = lane.subgroup_lane % CHUNK_LEN;
    chunk_base = lane.subgroup_lane - chunk_lane;
}

// This lane's quads of the tile's row that starts at quad q (a quad past the row's last reads
// the last: its value is never asked for).
fn hold_row(q: u32) {
    //unroll_all s < ROW_QUADS_HELD: q_held[s] = q_tile[q + min(s * CHUNK_LEN + chunk_lane, D4 - 1u)];
}

// Quad c of the held row.
fn row_quad(q: u32, c: u32) -> vec4<f32> {
    return subgroupShuffle(q_held[c / CHUNK_LEN], chunk_base + c % CHUNK_LEN);
}
