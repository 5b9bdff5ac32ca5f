// The fused forward pass: flash attention with an online softmax, every variant of
// DESIGN.md section 2, the LSE and the per-head statistics of section 3 in one pass.
//
// Grid: one workgroup per (query block, query head, batch) = workgroup_id (x, y, z).
// Thread layout: invocation t owns query row q_block * BLOCK_M + t whole: its q and its output
// accumulator (HEAD_DIM f32 each) stay in private memory. K and V are streamed through
// workgroup memory in tiles of BLOCK_N keys that all invocations load together and all read
// (a broadcast). The hot loop needs no communication between invocations; reductions run
// once per workgroup, for the statistics partial record.
// Scores stay in f32 whatever the dtype, so massive activations (|q|, |k| in the thousands)
// cannot overflow.
// Loops over channels inside the loops over keys are written out (`//unroll`, expanded by
// src/wgsl/kernel.rs): lavapipe stops an invocation after 65535 loop iterations in all.

const BLOCK_M: u32 = WORKGROUP_SIZE; // query rows per workgroup, one per invocation
const BLOCK_N: u32 = TILE_LEN;       // keys per K/V tile in workgroup memory

@group(0) @binding(1) var<storage, read> q_buf: array<u32>;
@group(0) @binding(2) var<storage, read> k_buf: array<u32>;
@group(0) @binding(3) var<storage, read> v_buf: array<u32>;
// Atomic words: a 16-bit row whose ends share a word with a neighbour (odd offsets) writes
// those half-words with atomicAnd/atomicOr, which commute, so no neighbour is clobbered.
@group(0) @binding(4) var<storage, read_write> o_buf: array<atomic<u32>>;
@group(0) @binding(5) var<storage, read_write> lse_buf: array<f32>;
@group(0) @binding(6) var<storage, read_write> scratch: array<f32>;
@group(0) @binding(7) var<storage, read> param_a: array<u32>;
@group(0) @binding(8) var<storage, read> param_b: array<u32>;

var<workgroup> k_tile: array<f32, BLOCK_N * HEAD_DIM>; // [key, channel]
var<workgroup> v_tile: array<f32, BLOCK_N * HEAD_DIM>; // [key, channel]

fn load_q(i: u32) -> f32 {
    return decode(q_buf[word_index(i)], i);
}

fn load_k(i: u32) -> f32 {
    return decode(k_buf[word_index(i)], i);
}

fn load_v(i: u32) -> f32 {
    return decode(v_buf[word_index(i)], i);
}

// k_sink, v_bias, sink_logits: f32.
fn param_a_f32(i: u32) -> f32 {
    return bitcast<f32>(param_a[p.param_a_offset + i]);
}

// v_sink: f32.
fn param_b_f32(i: u32) -> f32 {
    return bitcast<f32>(param_b[p.param_b_offset + i]);
}

// The gate z has the dtype of Q.
fn gate_z(i: u32) -> f32 {
    let at = p.param_a_offset + i;
    return decode(param_a[word_index(at)], at);
}

fn gate_factor(z: f32) -> f32 {
    switch GATE_FN {
        case GATE_TWO_SIGMOID: { return 2.0 * sigmoid(z); }
        case GATE_SIGMOID: { return sigmoid(z); }
        default: { return z; }
    }
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

// One block's statistics before they reach the scratch buffer (see PART_* in common.wgsl).
struct Partial {
    counted: f32,
    first: f32,
    sink: f32,
    max_score: f32,
    entropy: f32,
    row_mass: f32,
    gate_min: f32,
    gate_max: f32,
    gate_sum: f32,
    gate_count: f32,
    q_best: ArgMax,
    q_sum: f32,
    k_best: ArgMax,
    k_sum: f32,
    v_max: f32,
    v_sum: f32,
    v_norm_sum: f32,
    v0_norm: f32,
}

fn merge(a: Partial, b: Partial) -> Partial {
    var r: Partial;
    r.counted = a.counted + b.counted;
    r.first = a.first + b.first;
    r.sink = a.sink + b.sink;
    r.max_score = max(a.max_score, b.max_score);
    r.entropy = a.entropy + b.entropy;
    r.row_mass = a.row_mass + b.row_mass;
    r.gate_min = min(a.gate_min, b.gate_min);
    r.gate_max = max(a.gate_max, b.gate_max);
    r.gate_sum = a.gate_sum + b.gate_sum;
    r.gate_count = a.gate_count + b.gate_count;
    r.q_best = better(a.q_best, b.q_best);
    r.q_sum = a.q_sum + b.q_sum;
    r.k_best = better(a.k_best, b.k_best);
    r.k_sum = a.k_sum + b.k_sum;
    r.v_max = max(a.v_max, b.v_max);
    r.v_sum = a.v_sum + b.v_sum;
    r.v_norm_sum = a.v_norm_sum + b.v_norm_sum;
    r.v0_norm = a.v0_norm + b.v0_norm;
    return r;
}

fn store_partial(at: u32, x: Partial) {
    scratch[at + PART_COUNTED] = x.counted;
    scratch[at + PART_FIRST] = x.first;
    scratch[at + PART_SINK] = x.sink;
    scratch[at + PART_MAX_SCORE] = x.max_score;
    scratch[at + PART_ENTROPY] = x.entropy;
    scratch[at + PART_ROW_MASS] = x.row_mass;
    scratch[at + PART_GATE_MIN] = x.gate_min;
    scratch[at + PART_GATE_MAX] = x.gate_max;
    scratch[at + PART_GATE_SUM] = x.gate_sum;
    scratch[at + PART_GATE_COUNT] = x.gate_count;
    scratch[at + PART_Q_MAX] = x.q_best.value;
    scratch[at + PART_Q_ARGMAX] = f32(x.q_best.channel);
    scratch[at + PART_Q_SUM] = x.q_sum;
    scratch[at + PART_K_MAX] = x.k_best.value;
    scratch[at + PART_K_ARGMAX] = f32(x.k_best.channel);
    scratch[at + PART_K_SUM] = x.k_sum;
    scratch[at + PART_V_MAX] = x.v_max;
    scratch[at + PART_V_SUM] = x.v_sum;
    scratch[at + PART_V_NORM_SUM] = x.v_norm_sum;
    scratch[at + PART_V0_NORM] = x.v0_norm;
}

// Running statistics of K and V, kept by the last query block's invocations (one key row each).
var<private> k_best: ArgMax;
var<private> k_sum: f32;
var<private> v_max: f32;
var<private> v_sum: f32;
var<private> v_norm_sum: f32;
var<private> v0_norm: f32;
// The key row being measured: its largest |k| and Σ v².
var<private> k_row_best: ArgMax;
var<private> v_row_norm_sq: f32;

// Folds channel c of tile row jj into the running K/V statistics.
fn measure_kv_channel(jj: u32, c: u32) {
    let k_abs = abs(k_tile[jj * HEAD_DIM + c]);
    if k_abs > k_row_best.value {
        k_row_best = ArgMax(k_abs, c);
    }
    k_sum += k_abs;
    let v = v_tile[jj * HEAD_DIM + c];
    v_max = max(v_max, abs(v));
    v_sum += abs(v);
    v_row_norm_sq += v * v;
}

// Folds the key rows of the current tile that this invocation owns into its K/V statistics.
fn measure_kv_tile(t: u32, tile: u32) {
    for (var jj = t; jj < BLOCK_N && tile + jj < p.kv_len; jj += BLOCK_M) {
        k_row_best = ArgMax(-1.0, 0u);
        v_row_norm_sq = 0.0;
        //unroll c < HEAD_DIM: measure_kv_channel(jj, c);
        k_best = better(k_best, k_row_best);
        let norm = sqrt(v_row_norm_sq);
        v_norm_sum += norm;
        if tile + jj == 0u {
            v0_norm = norm;
        }
    }
}

// Element e of the tile: key tile + e / HEAD_DIM, channel e % HEAD_DIM; keys past Nk read 0.
fn load_kv_element(b: u32, g: u32, tile: u32, e: u32) {
    if e >= BLOCK_N * HEAD_DIM {
        return;
    }
    let j = tile + e / HEAD_DIM;
    let c = e % HEAD_DIM;
    let inside = j < p.kv_len;
    let jc = min(j, p.kv_len - 1u);
    let k_at = p.k_offset + b * p.k_stride_b + jc * p.k_stride_n + g * p.k_stride_h + c;
    let v_at = p.v_offset + b * p.v_stride_b + jc * p.v_stride_n + g * p.v_stride_h + c;
    k_tile[e] = select(0.0, load_k(k_at), inside);
    v_tile[e] = select(0.0, load_v(v_at), inside);
}

// Loads keys [tile, tile + BLOCK_N) of kv head g into k_tile and v_tile, LOAD_UNROLL elements
// per invocation and iteration.
fn load_kv_tile(t: u32, b: u32, g: u32, tile: u32) {
    for (var e0 = t; e0 < BLOCK_N * HEAD_DIM; e0 += BLOCK_M * LOAD_UNROLL) {
        //unroll u < LOAD_UNROLL: load_kv_element(b, g, tile, e0 + u * BLOCK_M);
    }
}

fn store_o_row(base: u32, row: ptr<function, array<f32, HEAD_DIM>>) {
    if ELEM == ELEM_F32 {
        for (var c = 0u; c < HEAD_DIM; c++) {
            atomicStore(&o_buf[base + c], bitcast<u32>((*row)[c]));
        }
        return;
    }
    var c = 0u;
    loop {
        if c >= HEAD_DIM {
            break;
        }
        let at = base + c;
        if (at & 1u) == 0u && c + 1u < HEAD_DIM {
            // Both halves of the word are this row's.
            let word = encode_half((*row)[c]) | (encode_half((*row)[c + 1u]) << 16u);
            atomicStore(&o_buf[at >> 1u], word);
            c += 2u;
        } else {
            // A lone half-word at either end of the row: keep the other half untouched.
            let half = encode_half((*row)[c]);
            if (at & 1u) == 1u {
                atomicAnd(&o_buf[at >> 1u], 0x0000ffffu);
                atomicOr(&o_buf[at >> 1u], half << 16u);
            } else {
                atomicAnd(&o_buf[at >> 1u], 0xffff0000u);
                atomicOr(&o_buf[at >> 1u], half);
            }
            c += 1u;
        }
    }
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn forward(lane: Lane, @builtin(workgroup_id) wg: vec3<u32>) {
    init_lane(lane);
    let t = lane.index;
    let q_block = wg.x;
    let h = wg.y;
    let b = wg.z;
    let g = h / p.group;
    let row = q_block * BLOCK_M + t;
    let live = row < p.q_len;
    // Invocations past Nq shadow the last row, so that every load stays in bounds; they
    // write nothing and count in no statistic.
    let i = min(row, p.q_len - 1u);
    let block_end = min(q_block * BLOCK_M + BLOCK_M, p.q_len);
    let key_end = visible_keys(block_end - 1u); // uniform: the tiles this workgroup visits
    let row_keys = visible_keys(i);
    let has_keys = row_keys > 0u;
    // The last block visits every key under either mask: it measures K and V.
    let kv_block = q_block + 1u == p.q_blocks;

    var q_row: array<f32, HEAD_DIM>; // registers: this row of Q
    var q_best = ArgMax(-1.0, 0u);
    var q_sum = 0.0;
    let q_base = p.q_offset + b * p.q_stride_b + i * p.q_stride_n + h * p.q_stride_h;
    for (var c = 0u; c < HEAD_DIM; c++) {
        let x = load_q(q_base + c);
        q_row[c] = x;
        if abs(x) > q_best.value {
            q_best = ArgMax(abs(x), c);
        }
        q_sum += abs(x);
    }

    // The sink's logit: s' = σ q·k' (softcapped like any score), θ_h, or 0.
    var sink_logit = 0.0;
    if VARIANT == VARIANT_CONTEXT_BIAS || VARIANT == VARIANT_KV_SINK {
        var dot = 0.0;
        for (var c = 0u; c < HEAD_DIM; c++) {
            dot += q_row[c] * param_a_f32(h * HEAD_DIM + c);
        }
        sink_logit = finish_score(dot);
    } else if VARIANT == VARIANT_LOGIT_SINK {
        sink_logit = param_a_f32(h);
    }

    // Online softmax over the row's logits x (the score s, or log sigmoid(s + β) for Sigmoid):
    // m running max, l = Σ e^(x − m) (sink included), l_keys the same over real keys only,
    // t_ent = Σ e^(x − m)·(x − m), so that the entropy is ln l − t_ent / l without cancellation.
    var m = neg_inf();
    var l = 0.0;
    var l_keys = 0.0;
    var t_ent = 0.0;
    var acc: array<f32, HEAD_DIM>; // registers: Σ weight · v
    if SINK_IN_DENOMINATOR {
        // The sink is the first outcome: weight e^0 = 1 at m = its logit, value v' or 0.
        m = sink_logit;
        l = 1.0;
        if VARIANT == VARIANT_KV_SINK {
            for (var c = 0u; c < HEAD_DIM; c++) {
                acc[c] = param_b_f32(h * HEAD_DIM + c);
            }
        }
    }
    var max_score = neg_inf();
    var logit0 = neg_inf(); // x of key 0, when the row sees it
    var sigmoid_mass = 0.0; // Σ sigmoid(s + β)

    k_best = ArgMax(-1.0, 0u);
    k_sum = 0.0;
    v_max = 0.0;
    v_sum = 0.0;
    v_norm_sum = 0.0;
    v0_norm = 0.0;

    for (var tile = 0u; tile < key_end; tile += BLOCK_N) {
        workgroupBarrier(); // every invocation is done with the previous tile
        load_kv_tile(t, b, g, tile);
        workgroupBarrier();
        if STATS && kv_block {
            measure_kv_tile(t, tile);
        }
        // The row sees a prefix of the keys: keys [tile, tile + visible) of this tile. No
        // `continue` when it is empty: the barriers ahead must stay in uniform control flow.
        let visible = min(BLOCK_N, row_keys - min(row_keys, tile));
        if visible > 0u {
            var x: array<f32, BLOCK_N>;
            var w_sigmoid: array<f32, BLOCK_N>;
            var tile_max = neg_inf();
            for (var jj = 0u; jj < visible; jj++) {
                let k = jj * HEAD_DIM;
                var dot = 0.0;
                //unroll c < HEAD_DIM: dot += q_row[c] * k_tile[k + c];
                let s = finish_score(dot);
                max_score = max(max_score, s);
                var xj = s;
                if VARIANT == VARIANT_SIGMOID {
                    let z = s + p.sigmoid_bias;
                    w_sigmoid[jj] = sigmoid(z);
                    sigmoid_mass += w_sigmoid[jj];
                    xj = log_sigmoid(z);
                }
                x[jj] = xj;
                tile_max = max(tile_max, xj);
            }
            if tile == 0u {
                logit0 = x[0];
            }
            let m_new = max(m, tile_max);
            // alpha = 0 while nothing was seen (m = −inf); the t_ent term would be −inf · 0 then.
            let alpha = exp(m - m_new);
            t_ent = select(alpha * (t_ent + (m - m_new) * l), 0.0, l == 0.0);
            l *= alpha;
            l_keys *= alpha;
            if VARIANT != VARIANT_SIGMOID && VARIANT != VARIANT_CLIPPED_SOFTMAX {
                //unroll c < HEAD_DIM: acc[c] *= alpha;
            }
            for (var jj = 0u; jj < visible; jj++) {
                let e = exp(x[jj] - m_new);
                l += e;
                l_keys += e;
                t_ent += e * (x[jj] - m_new);
                // Sigmoid weights are applied as they are; ClippedSoftmax weighs V in a second pass.
                if VARIANT != VARIANT_CLIPPED_SOFTMAX {
                    let w = select(e, w_sigmoid[jj], VARIANT == VARIANT_SIGMOID);
                    let v = jj * HEAD_DIM;
                    //unroll c < HEAD_DIM: acc[c] += w * v_tile[v + c];
                }
            }
            m = m_new;
        }
    }

    // l = 0 only for a row with no key and no sink in the denominator: LSE −inf, output 0.
    let inv_l = select(0.0, 1.0 / l, l > 0.0);
    let lse = select(neg_inf(), m + log(l), l > 0.0);

    // ClippedSoftmax: weights clip((ζ − γ)·p + γ, 0, 1) need the row's normaliser first, so
    // a second pass over the same tiles applies them.
    var clip_mass = 0.0;
    var clip_w_log_w = 0.0;
    var clip_w0 = 0.0;
    if VARIANT == VARIANT_CLIPPED_SOFTMAX {
        for (var tile = 0u; tile < key_end; tile += BLOCK_N) {
            workgroupBarrier();
            load_kv_tile(t, b, g, tile);
            workgroupBarrier();
            let visible = min(BLOCK_N, row_keys - min(row_keys, tile));
            for (var jj = 0u; jj < visible; jj++) {
                let k = jj * HEAD_DIM;
                var dot = 0.0;
                //unroll c < HEAD_DIM: dot += q_row[c] * k_tile[k + c];
                let prob = exp(finish_score(dot) - m) * inv_l;
                let w = clamp((p.zeta - p.gamma) * prob + p.gamma, 0.0, 1.0);
                //unroll c < HEAD_DIM: acc[c] += w * v_tile[k + c];
                clip_mass += w;
                if w > 0.0 {
                    clip_w_log_w += w * log(w);
                }
                if tile + jj == 0u {
                    clip_w0 = w;
                }
            }
        }
    }

    // 1 − S of ContextBias: e^s' / (e^s' + Σ e^s), 1 for a row with no key.
    var context_share = 0.0;
    if VARIANT == VARIANT_CONTEXT_BIAS {
        let top = max(m, sink_logit);
        let e_sink = exp(sink_logit - top);
        context_share = e_sink / (e_sink + l * exp(m - top));
    }

    // Epilogue: normalise and apply the variant's bias, sink value or gate.
    var gate_min = 3.4028235e38;
    var gate_max = -3.4028235e38;
    var gate_sum = 0.0;
    var gate_count = 0.0;
    let counted = live && (has_keys || HAS_SINK);
    for (var c = 0u; c < HEAD_DIM; c++) {
        var o = acc[c];
        if VARIANT != VARIANT_SIGMOID && VARIANT != VARIANT_CLIPPED_SOFTMAX {
            o *= inv_l;
        }
        if VARIANT == VARIANT_VALUE_BIAS {
            o += param_a_f32(h * HEAD_DIM + c);
        } else if VARIANT == VARIANT_CONTEXT_BIAS {
            o += context_share * param_b_f32(h * HEAD_DIM + c);
        } else if VARIANT == VARIANT_CONTEXT_SCALE {
            let token = (b * p.q_len + i) * p.q_heads + h;
            let z_at = select(token, token * HEAD_DIM + c, GATE_PER_CHANNEL);
            let gamma = gate_factor(gate_z(z_at));
            o *= gamma;
            if counted && (GATE_PER_CHANNEL || c == 0u) {
                gate_min = min(gate_min, gamma);
                gate_max = max(gate_max, gamma);
                gate_sum += gamma;
                gate_count += 1.0;
            }
        }
        acc[c] = o;
    }

    if live {
        let o_base = p.o_offset + b * p.o_stride_b + i * p.o_stride_n + h * p.o_stride_h;
        store_o_row(o_base, &acc);
        let row_index = (b * p.q_heads + h) * p.q_len + i;
        lse_buf[p.lse_offset + row_index] = lse;
        if KEY_MASS {
            let at = p.rows_offset + row_index * ROW_STATE_LEN;
            scratch[at] = m;
            scratch[at + 1u] = l;
            scratch[at + 2u] = clip_mass;
        }
    }

    if STATS {
        // This row's share of the head's statistics (zero for rows that are not counted).
        var first = 0.0;
        var sink_mass = 0.0;
        var entropy = 0.0;
        var row_mass = 0.0;
        if counted {
            if VARIANT == VARIANT_CLIPPED_SOFTMAX {
                row_mass = clip_mass;
                if clip_mass > 0.0 {
                    first = select(0.0, clip_w0 / clip_mass, has_keys);
                    entropy = log(clip_mass) - clip_w_log_w / clip_mass;
                }
            } else {
                if has_keys {
                    first = exp(logit0 - m) * inv_l;
                }
                if l > 0.0 {
                    entropy = log(l) - t_ent * inv_l;
                }
                row_mass = select(l_keys * inv_l, sigmoid_mass, VARIANT == VARIANT_SIGMOID);
                if SINK_IN_DENOMINATOR {
                    sink_mass = exp(sink_logit - m) * inv_l;
                } else if VARIANT == VARIANT_CONTEXT_BIAS {
                    sink_mass = context_share;
                }
            }
        }
        if !live {
            max_score = neg_inf();
            q_best = ArgMax(-1.0, 0u);
            q_sum = 0.0;
        }

        var mine: Partial;
        mine.counted = select(0.0, 1.0, counted);
        mine.first = first;
        mine.sink = sink_mass;
        mine.max_score = max_score;
        mine.entropy = entropy;
        mine.row_mass = row_mass;
        mine.gate_min = gate_min;
        mine.gate_max = gate_max;
        mine.gate_sum = gate_sum;
        mine.gate_count = gate_count;
        mine.q_best = q_best;
        mine.q_sum = q_sum;
        mine.k_best = k_best;
        mine.k_sum = k_sum;
        mine.v_max = v_max;
        mine.v_sum = v_sum;
        mine.v_norm_sum = v_norm_sum;
        mine.v0_norm = v0_norm;
        let block = reduce_partial(mine);
        if t == 0u {
            store_partial(p.partials_offset + ((b * p.q_heads + h) * p.q_blocks + q_block) * PARTIAL_LEN, block);
        }
    }
}
