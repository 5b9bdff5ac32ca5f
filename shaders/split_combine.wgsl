// Split-KV's combine: merges the partials that the forward kernel's splits left for each row
// (forward.wgsl, SPLIT) into the row's O, LSE and statistics record, and applies what the
// forward epilogue applies once per row, with the forward file's own functions (`end_row`,
// `finish_quad`, `row_shares`, ...). This file follows forward.wgsl in its module, for the
// bindings, the O stores and the variant's parameters.
//
// Lanes. One lane per (folded row, channel quad) of kv head g of batch b (grid: blocks of
// WORKGROUP_SIZE lanes, kv head, batch; rows folded as in the forward pass). Each lane reads the
// splits' heads itself and merges them in split order s = 0, 1, …, so every lane of a row
// gets the same M and L bits, and a result never depends on the dispatch:
//   M = max m_s,  w_s = e^(m_s − M) (0 for a split that saw no key: m_s = −inf),
//   L = Σ w_s · l_s,  L_keys = Σ w_s · lk_s,  O = Σ w_s · acc_s,
//   T = Σ w_s · (t_s + (m_s − M) · l_s)   (t_s = Σ e^(x − m_s)(x − m_s): the entropy's sum
//                                          moved to M),
// the largest score and Σ sigmoid over the splits; Sigmoid's weights are absolute, so its O
// is Σ acc_s unweighted. When every m_s is −inf (no key seen, no sink) nothing is weighed, so
// no −inf − (−inf) is taken; L = 0 and the row gets what the unsplit kernel gives such a row
// (NaN when the row has keys or a sink in the denominator, else O = 0 and LSE = −inf).
//
// Lane (row 0, quad 0) of the first workgroup of (b, g) also folds the splits' K/V statistics
// partials, in split order, into the (b, g) record the statistics combine reads.

@compute @workgroup_size(WORKGROUP_SIZE)
fn split_combine(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let g = wg.y;
    let b = wg.z;
    let seq = seq_of(b);
    if STATS && wg.x == 0u && t == 0u {
        var r = load_kv(kv_split_record(b, g, 0u));
        for (var s = 1u; s < p.splits; s++) {
            r = merge_kv(r, load_kv(kv_split_record(b, g, s)));
        }
        store_kv(p.kv_partials_offset + (b * (p.q_heads / p.group) + g) * KV_PARTIAL_LEN, r);
    }
    let nq = seq.q_len;
    let folded = nq * p.group;
    let e = wg.x * WORKGROUP_SIZE + t;
    let f = e / D4;
    let c = e % D4; // this lane's channel quad
    if f >= folded {
        return;
    }
    let i = f / p.group;
    let h = g * p.group + f % p.group;
    let row_keys = key_range(i, nq, seq.kv_len);
    let has_keys = row_keys.end > row_keys.start;
    let first = split_record(b, h, i, 0u);

    var top = neg_inf();
    var poisoned = false;
    var max_score = neg_inf();
    var sigmoid_mass = 0.0;
    for (var s = 0u; s < p.splits; s++) {
        let at = first + s * SPLIT_RECORD;
        top = max(top, scratch[at + SPLIT_M]);
        poisoned = poisoned || (bitcast<u32>(scratch[at + SPLIT_FLAGS]) & SPLIT_POISONED) != 0u;
        max_score = max_ignoring_nan(max_score, scratch[at + SPLIT_MAX_SCORE]);
        sigmoid_mass += scratch[at + SPLIT_SIGMOID_MASS];
    }
    var l = 0.0;
    var l_keys = 0.0;
    var t_ent = 0.0;
    var o = vec4<f32>(0.0);
    for (var s = 0u; s < p.splits; s++) {
        let at = first + s * SPLIT_RECORD;
        let m_s = scratch[at + SPLIT_M];
        let l_s = scratch[at + SPLIT_L];
        // A split that saw nothing (m_s = −inf, l_s = 0, acc_s = 0) weighs 0, even when M is
        // −inf too.
        let w = select(exp(m_s - top), 0.0, is_neg_inf(m_s));
        l = fma(w, l_s, l);
        l_keys = fma(w, scratch[at + SPLIT_L_KEYS], l_keys);
        t_ent += select(0.0, w * (scratch[at + SPLIT_T_ENT] + (m_s - top) * l_s), w != 0.0);
        let q = at + SPLIT_HEAD + c * 4u;
        let acc = vec4<f32>(scratch[q], scratch[q + 1u], scratch[q + 2u], scratch[q + 3u]);
        o = select(fma(vec4<f32>(w), acc, o), o + acc, VARIANT == VARIANT_SIGMOID);
    }
    // The row's own terms, the same in every split: split 0's.
    let sink_logit = scratch[first + SPLIT_SINK_LOGIT];
    let end = end_row(top, l, poisoned, sink_logit, has_keys);
    let key_scale = key_scale_of(end.inv_l, has_keys);
    // A row with no key: exactly 0, as the unsplit kernel's empty accumulator, even when a NaN
    // sink logit made the weights NaN (KvSink's accumulator holds the sink's value).
    o = select(o, vec4<f32>(0.0), vec4<bool>(!has_keys && VARIANT != VARIANT_KV_SINK));

    let counted = has_keys || HAS_SINK;
    let token = q_row(seq, b, i) * p.q_heads + h;
    var gate_min = 3.4028235e38;
    var gate_max = -3.4028235e38;
    var gate_sum = 0.0;
    var gate_count = 0.0;
    var gamma_row = 1.0;
    if VARIANT == VARIANT_CONTEXT_SCALE && !GATE_PER_CHANNEL {
        gamma_row = gate_factor(gate_z(token));
    }
    o = finish_quad(o, o_scale(key_scale), h, c, end.context_share,
        quad_gate(token, c, gamma_row, false, &gate_min, &gate_max, &gate_sum, &gate_count));
    let bad = seq.bad != 0u;
    if bad {
        o = vec4<f32>(nan());
    }
    let q_at = q_place(seq, b, i);
    let o_base = p.o_offset + q_at.x * p.o_stride_b + q_at.y * p.o_stride_n + h * p.o_stride_h;
    store_o_quad(o_base + c * 4u, o);
    if c != 0u {
        return;
    }
    // The row's one record, from its quad-0 lane.
    lse_buf[p.lse_offset + lse_index(seq, b, h, i)] = select(end.lse, nan(), bad);
    let row_index = row_record(b, h, i);
    if KEY_MASS {
        store_row_state(row_index, top, end.l, 0.0);
    }
    if STATS {
        // The gate statistics of a counted row, over its channels in order.
        if VARIANT == VARIANT_CONTEXT_SCALE && counted {
            if GATE_PER_CHANNEL {
                for (var q = 0u; q < D4; q++) {
                    _ = gate_quad(token * HEAD_DIM + q * 4u, true, &gate_min, &gate_max,
                        &gate_sum, &gate_count);
                }
            } else {
                gate_min = gamma_row;
                gate_max = gamma_row;
                gate_sum = gamma_row;
                gate_count = 1.0;
            }
        }
        var shares = vec4<f32>(0.0);
        if counted {
            shares = row_shares(end, top, has_keys, key_scale, t_ent, l_keys,
                scratch[first + SPLIT_LOGIT0], sink_logit, sigmoid_mass);
        }
        let q_best = ArgMax(scratch[first + SPLIT_Q_MAX], u32(scratch[first + SPLIT_Q_ARGMAX]));
        store_row_partial(row_index, counted, shares, max_score,
            vec4<f32>(gate_min, gate_max, gate_sum, gate_count), q_best,
            scratch[first + SPLIT_Q_SUM]);
    }
}
