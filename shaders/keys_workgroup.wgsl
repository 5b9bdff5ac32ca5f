// How a lane reads the keys of a staged tile, without subgroup operations: every lane reads
// key u's quad from workgroup memory, the same address for all lanes (a broadcast on GPUs).

struct Lane {
    @builtin(local_invocation_index) index: u32,
}

fn init_lane(lane: Lane) {}

fn hold_tile() {}

fn key_quad(u: u32, c: u32) -> vec4<f32> {
    return k_tile[u * D4 + c];
}

fn value_quad(u: u32, c: u32) -> vec4<f32> {
    return v_tile[u * D4 + c];
}

// Without subgroup operations a lane cannot know what the others need: it takes the branch
// itself when it needs it.
fn any_lane(x: bool) -> bool {
    return true;
}
