// The key-mass pass of `HeadsAndKeys`: key_mass[b, h, j] = Σ_i (probability of key j in row i),
// from the per-row state (m, l, clipped weight sum) the forward pass left in the scratch buffer.
//
// The same product as the forward pass, transposed: keys outside, rows inside. Grid: one
// workgroup per (key block, query head, batch). Invocation t owns KEYS_PER_LANE keys of the
// block, key_block · BLOCK_KEYS + r · WORKGROUP_SIZE + t for r < KEYS_PER_LANE (so that the
// lanes' loads and stores of each r are consecutive); their k rows are private arrays of
// vec4 indexed by constants only (registers). Q rows stream through workgroup memory in
// tiles of TILE_ROWS as [row][channel quad] vec4. The loop over a tile's rows has the same
// trip count on every lane, and every lane needs the same quad of the same row at once: each
// quad feeds 4 · KEYS_PER_LANE FMAs (register blocking). How a lane gets the quads is what the
// two row files differ in (key_mass_subgroup.wgsl, key_mass_workgroup.wgsl): a chunk of
// lanes loads a row between them and exchanges it by shuffles, or every lane reads every quad
// from workgroup memory. lavapipe turns each workgroup-memory load inside a loop into a loop
// over its 8 SIMD lanes, which is what this pass spent most of its time on, so the loads per
// FMA set its speed there.
//
// The score is computed in exactly the forward pass's order (quads accumulated into a vec4,
// then (x + y) + (z + w), the ROW_LANES parts added as `sum_parts` does), so that
// P = e^(x − m) / l from the stored row state weighs the same scores the forward pass
// normalised: with massive activations (scores in the thousands) any other order would shift
// them by more than the tolerance. Each invocation sums over rows in order: deterministic.

const KEYS_BLOCK_LANES: u32 = WORKGROUP_SIZE;                 // invocations per workgroup
const BLOCK_KEYS: u32 = KEYS_BLOCK_LANES * KEYS_PER_LANE;     // keys per workgroup
const TILE_ROWS: u32 = TILE_LEN;        // query rows per Q tile in workgroup memory
const D4: u32 = HEAD_DIM / 4u;          // channel quads per row
const LANE_QUADS: u32 = D4 / ROW_LANES; // channel quads per lane of a forward row

@group(0) @binding(1) var<storage, read> q_buf: array<u32>;
@group(0) @binding(2) var<storage, read> k_buf: array<u32>;
@group(0) @binding(3) var<storage, read> scratch: array<f32>;
@group(0) @binding(4) var<storage, read_write> key_mass_buf: array<f32>;

var<workgroup> q_tile: array<vec4<f32>, TILE_ROWS * D4>;         // [row][channel quad]
var<workgroup> row_state: array<f32, TILE_ROWS * ROW_STATE_LEN>; // [row, (m, l, clip mass)]

// Registers, indexed by constants only (the `//unroll_all` lines write them out): key r's
// quad c is k_rows[r * D4 + c]; the partial dot product of key r with the current row, for
// the forward row's lane `part`, is part_dot[r * ROW_LANES + part].
var<private> k_rows: array<vec4<f32>, KEYS_PER_LANE * D4>;
var<private> part_dot: array<vec4<f32>, KEYS_PER_LANE * ROW_LANES>;
var<private> mass: array<f32, KEYS_PER_LANE>;

// Quad e of the Q tile: row r0 + e / D4 of sequence b (the last row repeated past Nq_b),
// channels 4 · (e % D4) ...
fn load_q_quad(seq: Seq, b: u32, h: u32, r0: u32, e: u32) {
    if e >= TILE_ROWS * D4 {
        return;
    }
    let i = min(r0 + e / D4, max(seq.q_len, 1u) - 1u);
    let place = q_place(seq, b, i);
    let at = p.q_offset + place.x * p.q_stride_b + place.y * p.q_stride_n + h * p.q_stride_h
        + (e % D4) * 4u;
    q_tile[e] = load_q4(at);
}

// Quad c of key r of this lane, from K.
fn load_k_quad(r: u32, k_base: u32, c: u32) {
    k_rows[r * D4 + c] = load_k4(k_base + c * 4u);
}

// Quad c of the current row against quad c of every key of the lane.
fn weigh_quad(q: vec4<f32>, c: u32) {
    //unroll_all r < KEYS_PER_LANE: part_dot[r * ROW_LANES + c / LANE_QUADS] = fma(q, k_rows[r * D4 + c], part_dot[r * ROW_LANES + c / LANE_QUADS]);
}

// Row rr of the tile (row state m, l, clip mass) gives key r of the lane, key j, its
// probability: added to mass[r] when the row sees the key, after the partial dot products of
// the row were formed in part_dot.
fn add_key_prob(r: u32, j: u32, live: bool, seen: KeyRange, m: f32, l: f32, clip_mass: f32,
    sigmoid_bias: f32) {
    // The forward pass's score, bit for bit: each of its ROW_LANES lanes' partial dot product
    // (LANE_QUADS quads into a vec4, then (x + y) + (z + w)), added in `sum_parts`'s order.
    var parts: array<f32, 8>;
    //unroll_all part < ROW_LANES: parts[part] = (part_dot[r * ROW_LANES + part].x + part_dot[r * ROW_LANES + part].y) + (part_dot[r * ROW_LANES + part].z + part_dot[r * ROW_LANES + part].w);
    let s = finish_score(sum_parts(parts));
    var x = s;
    if VARIANT == VARIANT_SIGMOID {
        x = log_sigmoid(s + sigmoid_bias);
    }
    // As the forward pass weighs it: a logit of −inf weighs 0 whatever m is.
    var prob = select(exp(x - m), 0.0, is_neg_inf(x)) * select(1.0 / l, 0.0, l == 0.0);
    if VARIANT == VARIANT_CLIPPED_SOFTMAX {
        // Clipped to [0, 1] as the reference does, a NaN weight kept; a row whose weights are
        // all 0 has an all-zero distribution, a NaN row a NaN one.
        let y = (p.zeta - p.gamma) * prob + p.gamma;
        let w = clip01(select(y, nan(), is_nan(l)));
        prob = select(w / clip_mass, 0.0, clip_mass == 0.0);
    }
    // A key the row does not see (or past the sequence) weighs nothing: selected, not
    // branched on, so that the lanes stay in step.
    let weighs = live && j >= seen.start && j < seen.end;
    mass[r] += select(0.0, prob, weighs);
}

// Key r of the lane: its mass written out, 0 past the sequence's keys in the `[B, Hq, Nk]`
// layouts (packed K has no such place); a sequence whose index entries were bad has NaN key
// mass, over its whole row there, since a bad seqlens_k leaves its true length unknown.
fn store_key_mass(r: u32, seq: Seq, b: u32, h: u32, j0: u32, t: u32) {
    let j = j0 + r * KEYS_BLOCK_LANES + t;
    let live = j < seq.kv_len;
    if live || (p.kv_mode != KV_PACKED && j < p.kv_len) {
        let value = select(select(0.0, mass[r], live), nan(), seq.bad != 0u);
        key_mass_buf[p.key_mass_offset + key_mass_index(seq, b, h, j)] = value;
    }
}

// Key r of this lane, key j (clamped to the sequence's last: a key past it is read but its
// mass not written), into k_rows.
fn load_key(r: u32, seq: Seq, b: u32, g: u32, j: u32) {
    let k_at = kv_place(seq, b, min(j, max(seq.kv_len, 1u) - 1u));
    let k_base = p.k_offset + k_at.x * p.k_stride_b + k_at.y * p.k_stride_n + g * p.k_stride_h;
    //unroll_all c < D4: k_rows[r * D4 + c] = load_k4(k_base + c * 4u);
}

// The partial dot products of key r, cleared for the next row.
fn clear_parts(r: u32) {
    //unroll_all part < ROW_LANES: part_dot[r * ROW_LANES + part] = vec4<f32>(0.0);
}

// The workgroup's sequence, shared so that the loop over its rows may hold barriers.
var<workgroup> block_seq: Seq;

@compute @workgroup_size(WORKGROUP_SIZE)
fn key_mass(lane: MassLane, @builtin(workgroup_id) wg: vec3<u32>) {
    let t = lane.index;
    init_mass_lane(lane);
    let key_block = wg.x;
    let h = wg.y;
    let b = wg.z;
    let g = h / p.group;
    var seq = seq_of(b);
    if SEQ_RECORDS {
        if t == 0u {
            block_seq = seq;
        }
        seq = workgroupUniformLoad(&block_seq);
    }
    let nq = seq.q_len;
    let nk = seq.kv_len;
    let sigmoid_bias = sigmoid_bias_of(nk);
    let j0 = key_block * BLOCK_KEYS;
    // This lane's keys (key r is j0 + r · KEYS_BLOCK_LANES + t) in registers.
    var keys: array<u32, KEYS_PER_LANE>;
    // Settled (common.wgsl): 16-bit K would otherwise be decoded again for every row.
    for (var once = 0u; once < p.one; once++) {
        //unroll_all r < KEYS_PER_LANE: keys[r] = j0 + r * KEYS_BLOCK_LANES + t;
        //unroll_all r < KEYS_PER_LANE: load_key(r, seq, b, g, keys[r]);
    }
    //unroll_all r < KEYS_PER_LANE: clear_parts(r);
    //unroll_all r < KEYS_PER_LANE: mass[r] = 0.0;

    // Row i sees key j iff j is in key_range(i). A row's range moves right with i, so the
    // rows that see some key of this block [j0, j1) are [row_start, row_end): from the first
    // whose range ends past j0 (i >= j0 + Nq − Nk − right) to the last whose range starts
    // before j1 (i < j1 + Nq + left − Nk), computed as key_range is, without negatives.
    let j1 = j0 + BLOCK_KEYS;
    var row_start = 0u;
    if p.window_right != UNBOUNDED && j0 + nq > nk + p.window_right {
        row_start = j0 + nq - nk - p.window_right;
    }
    var row_end = nq;
    if p.window_left != UNBOUNDED {
        let reach = j1 + nq + p.window_left;
        row_end = select(0u, min(reach - nk, nq), reach > nk);
    }
    if j0 >= nk {
        row_end = 0u; // a block past the sequence's keys: nothing to weigh
    }
    let rows_base = p.rows_offset + row_record(b, h, 0u) * ROW_STATE_LEN;
    for (var r0 = row_start; r0 < row_end; r0 += TILE_ROWS) {
        workgroupBarrier(); // every invocation is done with the previous tile
        // Written out as in the forward pass: lavapipe's loop budget (see forward.wgsl).
        for (var e0 = t; e0 < TILE_ROWS * D4; e0 += KEYS_BLOCK_LANES * LOAD_UNROLL) {
            //unroll u < LOAD_UNROLL: load_q_quad(seq, b, h, r0, e0 + u * KEYS_BLOCK_LANES);
        }
        for (var e = t; e < TILE_ROWS * ROW_STATE_LEN; e += KEYS_BLOCK_LANES) {
            let i = min(r0 + e / ROW_STATE_LEN, max(nq, 1u) - 1u);
            row_state[e] = scratch[rows_base + i * ROW_STATE_LEN + e % ROW_STATE_LEN];
        }
        workgroupBarrier();
        let rows = min(TILE_ROWS, row_end - r0);
        for (var rr = 0u; rr < rows; rr++) {
            let q = rr * D4;
            hold_row(q);
            //unroll_all c < D4: weigh_quad(row_quad(q, c), c);
            let seen = key_range(r0 + rr, nq, nk);
            let m = row_state[rr * ROW_STATE_LEN];
            let l = row_state[rr * ROW_STATE_LEN + 1u];
            var clip_mass = 0.0;
            if VARIANT == VARIANT_CLIPPED_SOFTMAX {
                clip_mass = row_state[rr * ROW_STATE_LEN + 2u];
            }
            //unroll_all r < KEYS_PER_LANE: add_key_prob(r, keys[r], keys[r] < nk, seen, m, l, clip_mass, sigmoid_bias);
            //unroll_all r < KEYS_PER_LANE: clear_parts(r);
        }
    }
    //unroll_all r < KEYS_PER_LANE: store_key_mass(r, seq, b, h, j0, t);
}
