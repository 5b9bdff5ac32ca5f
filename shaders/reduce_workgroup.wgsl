// The workgroup-wide reduction of the statistics partial record, without subgroup
// operations: a fixed-order tree in workgroup memory (log2(WORKGROUP_SIZE) barriers). Fixed
// order makes the statistics bit-identical from run to run. Every invocation of the
// workgroup must call it (uniform control flow).

struct Lane {
    @builtin(local_invocation_index) index: u32,
}

var<private> lane_index: u32;

fn init_lane(lane: Lane) {
    lane_index = lane.index;
}

var<workgroup> red: array<Partial, WORKGROUP_SIZE>;

fn reduce_partial(x: Partial) -> Partial {
    red[lane_index] = x;
    workgroupBarrier();
    for (var stride = WORKGROUP_SIZE / 2u; stride > 0u; stride = stride / 2u) {
        if lane_index < stride {
            red[lane_index] = merge(red[lane_index], red[lane_index + stride]);
        }
        workgroupBarrier();
    }
    return red[0];
}
