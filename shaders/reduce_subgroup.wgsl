// The workgroup-wide reduction of the statistics partial record with subgroup operations:
// each field reduced across the subgroup, the subgroup leaders' records in workgroup memory,
// then every invocation merges those few records in subgroup order (two barriers, whatever
// the size). The subgroup size is read from the hardware, never assumed (lavapipe has 8, GPUs
// 16 to 128), and subgroups are numbered by @builtin(subgroup_id), so no mapping of
// invocations to subgroups is assumed either. Every invocation must call it (uniform control
// flow).

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

var<workgroup> red: array<Partial, WORKGROUP_SIZE>;

// The largest value in the subgroup, with the lowest channel holding it.
fn subgroup_argmax(x: ArgMax) -> ArgMax {
    let best = subgroupMax(x.value);
    return ArgMax(best, subgroupMin(select(0xffffffffu, x.channel, x.value == best)));
}

fn reduce_partial(x: Partial) -> Partial {
    var r: Partial;
    r.counted = subgroupAdd(x.counted);
    r.first = subgroupAdd(x.first);
    r.sink = subgroupAdd(x.sink);
    r.max_score = subgroupMax(x.max_score);
    r.entropy = subgroupAdd(x.entropy);
    r.row_mass = subgroupAdd(x.row_mass);
    r.gate_min = subgroupMin(x.gate_min);
    r.gate_max = subgroupMax(x.gate_max);
    r.gate_sum = subgroupAdd(x.gate_sum);
    r.gate_count = subgroupAdd(x.gate_count);
    r.q_best = subgroup_argmax(x.q_best);
    r.q_sum = subgroupAdd(x.q_sum);
    r.k_best = subgroup_argmax(x.k_best);
    r.k_sum = subgroupAdd(x.k_sum);
    r.v_max = subgroupMax(x.v_max);
    r.v_sum = subgroupAdd(x.v_sum);
    r.v_norm_sum = subgroupAdd(x.v_norm_sum);
    r.v0_norm = subgroupAdd(x.v0_norm);
    if subgroup_lane == 0u {
        red[subgroup_index] = r;
    }
    workgroupBarrier();
    var total = red[0];
    for (var s = 1u; s < subgroup_count; s++) {
        total = merge(total, red[s]);
    }
    return total;
}
