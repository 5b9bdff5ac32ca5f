// Split-KV's combine: merges the partials that the forward kernel's splits left for each row
// (forward.wgsl, SPLIT) into the row's O and LSE, and applies what the forward epilogue applies
// once per row. This file follows forward.wgsl in its module, for the bindings, the O stores
// and the variant's parameters.
//
// Lanes. One lane per (folded row, channel quad) of kv head g of batch b (grid: blocks of
// WORKGROUP_SIZE lanes, kv head, batch; rows folded as in the forward pass). Each lane reads the
// splits' (m_s, l_s) itself and merges them in split order s = 0, 1, …, so every lane of a row
// gets the same M and L bits, and a result never depends on the dispatch:
//   M = max m_s,  w_s = e^(m_s − M) (0 for a split that saw no key: m_s = −inf),
//   L = Σ w_s · l_s,  O = Σ w_s · acc_s.
// When every m_s is −inf (no key seen, no sink) nothing is weighed, so no −inf − (−inf) is
// taken; L = 0 and the row gets what the unsplit kernel gives such a row (NaN when the row has
// keys or a sink in the denominator, else O = 0 and LSE = −inf).

@compute @workgroup_size(WORKGROUP_SIZE)
fn split_combine(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let g = wg.y;
    let b = wg.z;
    let seq = seq_of(b);
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
    let first = p.split_offset + row_record(b, h, i) * p.splits * SPLIT_RECORD;

    var top = neg_inf();
    var poisoned = false;
    for (var s = 0u; s < p.splits; s++) {
        let at = first + s * SPLIT_RECORD;
        top = max(top, scratch[at]);
        poisoned = poisoned || (bitcast<u32>(scratch[at + 2u]) & SPLIT_POISONED) != 0u;
    }
    var l = 0.0;
    var o = vec4<f32>(0.0);
    for (var s = 0u; s < p.splits; s++) {
        let at = first + s * SPLIT_RECORD;
        let m_s = scratch[at];
        // A split that saw nothing (m_s = −inf, l_s = 0, acc_s = 0) weighs 0, even when M is
        // −inf too.
        let w = select(exp(m_s - top), 0.0, is_neg_inf(m_s));
        l = fma(w, scratch[at + 1u], l);
        let q = at + SPLIT_HEAD + c * 4u;
        o = fma(vec4<f32>(w), vec4<f32>(scratch[q], scratch[q + 1u], scratch[q + 2u], scratch[q + 3u]), o);
    }

    // The forward epilogue (forward.wgsl), for the variants that split.
    if poisoned {
        l = nan();
    }
    // Every logit −inf (and no finite sink): the reference's e^(−inf − (−inf)) is NaN.
    if is_neg_inf(top) && (has_keys || SINK_IN_DENOMINATOR) {
        l = nan();
    }
    let inv_l = select(1.0 / l, 0.0, l == 0.0);
    let lse = select(select(top + log(l), nan(), is_nan(l)), neg_inf(), l == 0.0);
    // A row with no key has nothing of the keys to normalise; KvSink's accumulator holds the
    // sink's value too.
    // (Exactly 0, as the unsplit kernel's empty accumulator, even when a NaN sink logit made
    // the weights NaN.)
    let key_scale = select(inv_l, 0.0, !has_keys && VARIANT != VARIANT_KV_SINK);
    o = select(o * key_scale, vec4<f32>(0.0), vec4<bool>(key_scale == 0.0 && !has_keys));
    if VARIANT == VARIANT_VALUE_BIAS {
        o += param_a4(h * HEAD_DIM + c * 4u);
    }
    let bad = seq.bad != 0u;
    if bad {
        o = vec4<f32>(nan());
    }
    let q_at = q_place(seq, b, i);
    let o_base = p.o_offset + q_at.x * p.o_stride_b + q_at.y * p.o_stride_n + h * p.o_stride_h;
    store_o_quad(o_base + c * 4u, o);
    if c == 0u {
        lse_buf[p.lse_offset + lse_index(seq, b, h, i)] = select(lse, nan(), bad);
    }
}
