// The key-mass pass of `HeadsAndKeys`: key_mass[b, h, j] = Σ_i (probability of key j in row i),
// from the per-row state (m, l, clipped weight sum) the forward pass left in the scratch buffer.
//
// The same product as the forward pass, transposed: keys outside, rows inside. Grid: one
// workgroup per (key block, query head, batch). Invocation t owns key j = key_block ·
// BLOCK_KEYS + t: its k row is a private array of D4 vec4 in registers; Q rows stream through
// workgroup memory in tiles of TILE_ROWS as [row][channel quad] vec4, each quad one broadcast
// load feeding 4 FMAs. The score is computed in exactly the forward pass's order (quads
// accumulated into a vec4, then (x + y) + (z + w)), so that P = e^(x − m) / l from the stored
// row state weighs the same scores the forward pass normalised: with massive activations
// (scores in the thousands) any other order would shift them by more than the tolerance.
// Each invocation sums over rows in order: deterministic.

const BLOCK_KEYS: u32 = WORKGROUP_SIZE; // keys per workgroup, one per invocation
const TILE_ROWS: u32 = TILE_LEN;        // query rows per Q tile in workgroup memory
const D4: u32 = HEAD_DIM / 4u;          // channel quads per row
const LANE_QUADS: u32 = D4 / ROW_LANES; // channel quads per lane of a forward row

@group(0) @binding(1) var<storage, read> q_buf: array<u32>;
@group(0) @binding(2) var<storage, read> k_buf: array<u32>;
@group(0) @binding(3) var<storage, read> scratch: array<f32>;
@group(0) @binding(4) var<storage, read_write> key_mass_buf: array<f32>;

var<workgroup> q_tile: array<vec4<f32>, TILE_ROWS * D4>;         // [row][channel quad]
var<workgroup> row_state: array<f32, TILE_ROWS * ROW_STATE_LEN>; // [row, (m, l, clip mass)]

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

// The workgroup's sequence, shared so that the loop over its rows may hold barriers.
var<workgroup> block_seq: Seq;

@compute @workgroup_size(WORKGROUP_SIZE)
fn key_mass(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wg: vec3<u32>) {
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
    let j = key_block * BLOCK_KEYS + t;
    let live = j < nk;
    let k_at = kv_place(seq, b, min(j, max(nk, 1u) - 1u));
    let sigmoid_bias = sigmoid_bias_of(nk);

    var k_row: array<vec4<f32>, D4>; // registers: this key
    let k_base = p.k_offset + k_at.x * p.k_stride_b + k_at.y * p.k_stride_n + g * p.k_stride_h;
    //unroll_all c < D4: k_row[c] = load_k4(k_base + c * 4u);

    // Row i sees key j iff j is in key_range(i). A row's range moves right with i, so the
    // rows that see some key of this block [j0, j1) are [row_start, row_end): from the first
    // whose range ends past j0 (i >= j0 + Nq − Nk − right) to the last whose range starts
    // before j1 (i < j1 + Nq + left − Nk), computed as key_range is, without negatives.
    let j0 = key_block * BLOCK_KEYS;
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
    var mass = 0.0;
    for (var r0 = row_start; r0 < row_end; r0 += TILE_ROWS) {
        workgroupBarrier(); // every invocation is done with the previous tile
        // Written out as in the forward pass: lavapipe's loop budget (see forward.wgsl).
        for (var e0 = t; e0 < TILE_ROWS * D4; e0 += BLOCK_KEYS * LOAD_UNROLL) {
            //unroll u < LOAD_UNROLL: load_q_quad(seq, b, h, r0, e0 + u * BLOCK_KEYS);
        }
        for (var e = t; e < TILE_ROWS * ROW_STATE_LEN; e += BLOCK_KEYS) {
            let i = min(r0 + e / ROW_STATE_LEN, max(nq, 1u) - 1u);
            row_state[e] = scratch[rows_base + i * ROW_STATE_LEN + e % ROW_STATE_LEN];
        }
        workgroupBarrier();
        let rows = min(TILE_ROWS, row_end - r0);
        for (var rr = 0u; rr < rows; rr++) {
            let seen = key_range(r0 + rr, nq, nk);
            if !live || j < seen.start || j >= seen.end {
                continue;
            }
            // The forward pass's score, bit for bit: each of its ROW_LANES lanes' partial dot
            // product (LANE_QUADS quads into a vec4, then (x + y) + (z + w)), added in the
            // order `sum_parts` writes out.
            let q = rr * D4;
            var part_dot: array<vec4<f32>, ROW_LANES>;
            //unroll_all c < D4: part_dot[c / LANE_QUADS] = fma(q_tile[q + c], k_row[c], part_dot[c / LANE_QUADS]);
            var parts: array<f32, 8>;
            //unroll_all r < ROW_LANES: parts[r] = (part_dot[r].x + part_dot[r].y) + (part_dot[r].z + part_dot[r].w);
            let s = finish_score(sum_parts(parts));
            var x = s;
            if VARIANT == VARIANT_SIGMOID {
                x = log_sigmoid(s + sigmoid_bias);
            }
            let m = row_state[rr * ROW_STATE_LEN];
            let l = row_state[rr * ROW_STATE_LEN + 1u];
            // As the forward pass weighs it: a logit of −inf weighs 0 whatever m is.
            var prob = select(exp(x - m), 0.0, is_neg_inf(x)) * select(1.0 / l, 0.0, l == 0.0);
            if VARIANT == VARIANT_CLIPPED_SOFTMAX {
                // Clipped to [0, 1] as the reference does, a NaN weight kept; a row whose
                // weights are all 0 has an all-zero distribution, a NaN row a NaN one.
                let y = (p.zeta - p.gamma) * prob + p.gamma;
                let w = clip01(select(y, nan(), is_nan(l)));
                let clip_mass = row_state[rr * ROW_STATE_LEN + 2u];
                prob = select(w / clip_mass, 0.0, clip_mass == 0.0);
            }
            mass += prob;
        }
    }
    // Keys past a sequence's length have mass 0 in the `[B, Hq, Nk]` layouts (packed K has
    // no such place); a sequence whose index entries were bad has NaN key mass, over its
    // whole row there, since a bad seqlens_k leaves its true length unknown.
    let bad = seq.bad != 0u;
    if live || (p.kv_mode != KV_PACKED && j < p.kv_len) {
        let value = select(select(0.0, mass, live), nan(), bad);
        key_mass_buf[p.key_mass_offset + key_mass_index(seq, b, h, j)] = value;
    }
}
