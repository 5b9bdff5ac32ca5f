// How a lane reads the keys of a staged tile, with subgroup shuffles. The subgroup is cut into
// chunks of BLOCK_N lanes (BLOCK_N is the adapter's smallest subgroup size, so a chunk never
// straddles two subgroups whatever size the driver picks); lane λ of a chunk holds key λ of the
// tile (its quads of K and V, in registers) and every lane reads key u's quad from lane u of its
// chunk. A shuffle is a register exchange: on lavapipe about twenty times cheaper than a
// workgroup-memory load, and each feeds 4 FMAs. Lanes and chunks come from the subgroup
// builtins, so no mapping of invocations to subgroups is assumed. Every invocation calls
// these in uniform control flow (the loops over a tile's keys have uniform trip counts).

struct Lane {
    @builtin(local_invocation_index) index: u32,
    @builtin(subgroup_invocation_id) subgroup_lane: u32,
}

var<private> chunk_base: u32; // subgroup lane of this chunk's first lane
var<private> chunk_lane: u32; // this lane's key in each tile
var<private> k_held: array<vec4<f32>, D4>; // registers: key chunk_lane of the tile
var<private> v_held: array<vec4<f32>, D4>;

fn init_lane(lane: Lane) {
    chunk_lane = lane.subgroup_lane % BLOCK_N;
    chunk_base = lane.subgroup_lane - chunk_lane;
}

// After a tile is staged: take this lane's key into registers.
fn hold_tile() {
    let at = chunk_lane * D4;
    //unroll_all c < D4: k_held[c] = k_tile[at + c];
    //unroll_all c < D4: v_held[c] = v_tile[at + c];
}

fn key_quad(u: u32, c: u32) -> vec4<f32> {
    return subgroupShuffle(k_held[c], chunk_base + u);
}

fn value_quad(u: u32, c: u32) -> vec4<f32> {
    return subgroupShuffle(v_held[c], chunk_base + u);
}

// Whether any lane of the subgroup needs a (rare) branch: a uniform test, so the others skip it.
fn any_lane(x: bool) -> bool {
    return subgroupAny(x);
}
