// Combines the forward pass's per-row statistics records, one invocation per (batch, head),
// visiting the rows in order, with the K/V record of the head's kv group: no float atomics, so
// the result is bit-identical from run to run. Writes the `[B, Hq, STAT_COUNT]` record of
// DESIGN.md section 3.

@group(0) @binding(1) var<storage, read> scratch: array<f32>;
@group(0) @binding(2) var<storage, read_write> stats_buf: array<f32>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn combine(@builtin(global_invocation_id) id: vec3<u32>) {
    let head = id.x; // b * Hq + h
    if head >= p.batch * p.q_heads {
        return;
    }
    var counted = 0u;
    var first = 0.0;
    var sink = 0.0;
    var max_score = neg_inf();
    var entropy = 0.0;
    var row_mass = 0.0;
    var gate_min = 3.4028235e38;
    var gate_max = -3.4028235e38;
    var gate_sum = 0.0;
    var gate_count = 0u;
    var q_max = -1.0;
    var q_argmax = 0.0;
    var q_sum = 0.0;
    let b = head / p.q_heads;
    let seq = seq_of(b);
    for (var row = 0u; row < seq.q_len; row++) {
        let at = p.partials_offset + row_record(b, head % p.q_heads, row) * PARTIAL_LEN;
        counted += u32(scratch[at + PART_COUNTED]);
        first += scratch[at + PART_FIRST];
        sink += scratch[at + PART_SINK];
        max_score = max_ignoring_nan(max_score, scratch[at + PART_MAX_SCORE]);
        entropy += scratch[at + PART_ENTROPY];
        row_mass += scratch[at + PART_ROW_MASS];
        gate_min = min(gate_min, scratch[at + PART_GATE_MIN]);
        gate_max = max(gate_max, scratch[at + PART_GATE_MAX]);
        gate_sum += scratch[at + PART_GATE_SUM];
        gate_count += u32(scratch[at + PART_GATE_COUNT]);
        // Larger value wins; on a tie the lower channel (rows hold each one's lowest).
        let block_max = scratch[at + PART_Q_MAX];
        let block_arg = scratch[at + PART_Q_ARGMAX];
        if block_max > q_max || (block_max == q_max && block_arg < q_argmax) {
            q_max = block_max;
            q_argmax = block_arg;
        }
        q_sum += scratch[at + PART_Q_SUM];
    }
    // The K/V record of kv head g = h / group.
    let g = (head % p.q_heads) / p.group;
    let kv = p.kv_partials_offset + (b * (p.q_heads / p.group) + g) * KV_PARTIAL_LEN;

    // Means over counted rows are NaN when no row is counted, as in the reference (0 / 0).
    let n = f32(counted);
    let none = counted == 0u;
    let q_elems = f32(seq.q_len) * f32(HEAD_DIM);
    let k_elems = f32(seq.kv_len) * f32(HEAD_DIM);
    let gate_none = gate_count == 0u;
    let out = p.stats_offset + head * STAT_COUNT;
    stats_buf[out + STAT_FIRST_KEY_MASS] = select(first / n, nan(), none);
    stats_buf[out + STAT_SINK_MASS] = select(sink / n, nan(), none);
    stats_buf[out + STAT_MAX_SCORE] = max_score;
    stats_buf[out + STAT_MEAN_ENTROPY] = select(entropy / n, nan(), none);
    stats_buf[out + STAT_Q_ABSMAX] = q_max;
    stats_buf[out + STAT_Q_ABSMEAN] = q_sum / q_elems;
    stats_buf[out + STAT_Q_ARGMAX_CHANNEL] = q_argmax;
    stats_buf[out + STAT_K_ABSMAX] = scratch[kv + KV_K_MAX];
    stats_buf[out + STAT_K_ABSMEAN] = scratch[kv + KV_K_SUM] / k_elems;
    stats_buf[out + STAT_K_ARGMAX_CHANNEL] = scratch[kv + KV_K_ARGMAX];
    stats_buf[out + STAT_V_ABSMAX] = scratch[kv + KV_V_MAX];
    stats_buf[out + STAT_V_ABSMEAN] = scratch[kv + KV_V_SUM] / k_elems;
    stats_buf[out + STAT_V0_NORM_RATIO] = scratch[kv + KV_V0_NORM]
        / (scratch[kv + KV_V_NORM_SUM] / f32(seq.kv_len));
    stats_buf[out + STAT_GATE_MIN] = select(gate_min, nan(), gate_none);
    stats_buf[out + STAT_GATE_MEAN] = select(gate_sum / f32(gate_count), nan(), gate_none);
    stats_buf[out + STAT_GATE_MAX] = select(gate_max, nan(), gate_none);
    stats_buf[out + STAT_ROW_MASS_MEAN] = select(row_mass / n, nan(), none);
    // A sequence whose index entries were bad has an all-NaN record.
    if seq.bad != 0u {
        for (var stat = 0u; stat < STAT_COUNT; stat++) {
            stats_buf[out + stat] = nan();
        }
    }
}
