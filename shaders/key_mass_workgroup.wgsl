// How the key-mass lanes read a row of the Q tile without subgroup operations: every lane
// reads each quad from workgroup memory (one address for all lanes: a broadcast on GPUs).

struct MassLane {
    @builtin(local_invocation_index) index: u32,
}

fn init_mass_lane(lane: MassLane) {}

fn hold_row(q: u32) {}

// Quad c of the tile's row that starts at quad q.
fn row_quad(q: u32, c: u32) -> vec4<f32> {
    return q_tile[q + c];
}
