// Workgroup-wide reductions without subgroup operations: a fixed-order tree in workgroup
// memory (log2(WORKGROUP_SIZE) barriers each). Fixed order makes the statistics bit-identical
// from run to run. Every invocation of the workgroup must call these (uniform control flow).

struct Lane {
    @builtin(local_invocation_index) index: u32,
}

var<private> lane_index: u32;

fn init_lane(lane: Lane) {
    lane_index = lane.index;
}

var<workgroup> red_f32: array<f32, WORKGROUP_SIZE>;
var<workgroup> red_u32: array<u32, WORKGROUP_SIZE>;

// op: 0 sum, 1 max, 2 min.
fn combine_op(op: u32, a: f32, b: f32) -> f32 {
    switch op {
        case 0u: { return a + b; }
        case 1u: { return max(a, b); }
        default: { return min(a, b); }
    }
}

fn reduce_op(op: u32, x: f32) -> f32 {
    red_f32[lane_index] = x;
    workgroupBarrier();
    for (var stride = WORKGROUP_SIZE / 2u; stride > 0u; stride = stride / 2u) {
        if lane_index < stride {
            red_f32[lane_index] = combine_op(op, red_f32[lane_index], red_f32[lane_index + stride]);
        }
        workgroupBarrier();
    }
    let total = red_f32[0];
    // The next reduction overwrites red_f32.
    workgroupBarrier();
    return total;
}

fn reduce_sum(x: f32) -> f32 {
    return reduce_op(0u, x);
}

fn reduce_max(x: f32) -> f32 {
    return reduce_op(1u, x);
}

fn reduce_min(x: f32) -> f32 {
    return reduce_op(2u, x);
}

struct ArgMax {
    value: f32,
    channel: u32,
}

// The larger value; the lower channel on ties.
fn better(a: ArgMax, b: ArgMax) -> ArgMax {
    if b.value > a.value || (b.value == a.value && b.channel < a.channel) {
        return b;
    }
    return a;
}

fn reduce_argmax(x: ArgMax) -> ArgMax {
    red_f32[lane_index] = x.value;
    red_u32[lane_index] = x.channel;
    workgroupBarrier();
    for (var stride = WORKGROUP_SIZE / 2u; stride > 0u; stride = stride / 2u) {
        if lane_index < stride {
            let a = ArgMax(red_f32[lane_index], red_u32[lane_index]);
            let b = ArgMax(red_f32[lane_index + stride], red_u32[lane_index + stride]);
            let m = better(a, b);
            red_f32[lane_index] = m.value;
            red_u32[lane_index] = m.channel;
        }
        workgroupBarrier();
    }
    let total = ArgMax(red_f32[0], red_u32[0]);
    workgroupBarrier();
    return total;
}
