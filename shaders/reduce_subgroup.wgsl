// Workgroup-wide reductions with subgroup operations: one subgroup reduction, the subgroup
// leaders' results in workgroup memory, then every invocation combines those few values in
// subgroup order (two barriers, whatever the size). The subgroup size is read from the
// hardware, never assumed (lavapipe has 8, GPUs 16 to 128); subgroups are numbered by
// @builtin(subgroup_id), so no layout of invocations into subgroups is assumed either.
// Every invocation of the workgroup must call these (uniform control flow).

struct Lane {
    @builtin(local_invocation_index) index: u32,
    @builtin(subgroup_invocation_id) subgroup_lane: u32,
    @builtin(subgroup_id) subgroup: u32,
    @builtin(num_subgroups) subgroups: u32,
}

var<private> lane_index: u32;
var<private> subgroup_lane: u32;
var<private> subgroup_index: u32;
var<private> subgroup_count: u32;

fn init_lane(lane: Lane) {
    lane_index = lane.index;
    subgroup_lane = lane.subgroup_lane;
    subgroup_index = lane.subgroup;
    subgroup_count = lane.subgroups;
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

// Combines the subgroup leaders' partial results in subgroup order.
fn across_subgroups(op: u32, part: f32) -> f32 {
    if subgroup_lane == 0u {
        red_f32[subgroup_index] = part;
    }
    workgroupBarrier();
    var total = red_f32[0];
    for (var s = 1u; s < subgroup_count; s++) {
        total = combine_op(op, total, red_f32[s]);
    }
    // The next reduction overwrites red_f32.
    workgroupBarrier();
    return total;
}

fn reduce_sum(x: f32) -> f32 {
    return across_subgroups(0u, subgroupAdd(x));
}

fn reduce_max(x: f32) -> f32 {
    return across_subgroups(1u, subgroupMax(x));
}

fn reduce_min(x: f32) -> f32 {
    return across_subgroups(2u, subgroupMin(x));
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
    let best = subgroupMax(x.value);
    let channel = subgroupMin(select(0xffffffffu, x.channel, x.value == best));
    if subgroup_lane == 0u {
        red_f32[subgroup_index] = best;
        red_u32[subgroup_index] = channel;
    }
    workgroupBarrier();
    var total = ArgMax(red_f32[0], red_u32[0]);
    for (var s = 1u; s < subgroup_count; s++) {
        total = better(total, ArgMax(red_f32[s], red_u32[s]));
    }
    workgroupBarrier();
    return total;
}
