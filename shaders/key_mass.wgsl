// The key-mass pass of `HeadsAndKeys`: key_mass[b, h, j] = Σ_i (probability of key j in row i),
// from the per-row state (m, l, clipped weight sum) the forward pass left in the scratch buffer.
//
// Grid: one workgroup per (key block, query head, batch). Thread layout: invocation t owns key
// j = key_block * BLOCK_KEYS + t (its k row in private memory); Q rows stream through workgroup
// memory in tiles of TILE_ROWS. Each invocation sums over rows in order: deterministic.

const BLOCK_KEYS: u32 = WORKGROUP_SIZE; // keys per workgroup, one per invocation
const TILE_ROWS: u32 = TILE_LEN;        // query rows per Q tile in workgroup memory

@group(0) @binding(1) var<storage, read> q_buf: array<u32>;
@group(0) @binding(2) var<storage, read> k_buf: array<u32>;
@group(0) @binding(3) var<storage, read> scratch: array<f32>;
@group(0) @binding(4) var<storage, read_write> key_mass_buf: array<f32>;

var<workgroup> q_tile: array<f32, TILE_ROWS * HEAD_DIM>;         // [row, channel]
var<workgroup> row_state: array<f32, TILE_ROWS * ROW_STATE_LEN>; // [row, (m, l, clip mass)]

fn load_q(i: u32) -> f32 {
    return decode(q_buf[word_index(i)], i);
}

fn load_k(i: u32) -> f32 {
    return decode(k_buf[word_index(i)], i);
}

// Element e of the Q tile: row r0 + e / HEAD_DIM (the last row repeated past Nq), channel
// e % HEAD_DIM.
fn load_q_element(b: u32, h: u32, r0: u32, e: u32) {
    if e >= TILE_ROWS * HEAD_DIM {
        return;
    }
    let i = min(r0 + e / HEAD_DIM, p.q_len - 1u);
    let c = e % HEAD_DIM;
    q_tile[e] = load_q(p.q_offset + b * p.q_stride_b + i * p.q_stride_n + h * p.q_stride_h + c);
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn key_mass(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let key_block = wg.x;
    let h = wg.y;
    let b = wg.z;
    let g = h / p.group;
    let j = key_block * BLOCK_KEYS + t;
    let live = j < p.kv_len;
    let jc = min(j, p.kv_len - 1u);

    var k_row: array<f32, HEAD_DIM>; // registers: this key
    let k_base = p.k_offset + b * p.k_stride_b + jc * p.k_stride_n + g * p.k_stride_h;
    for (var c = 0u; c < HEAD_DIM; c++) {
        k_row[c] = load_k(k_base + c);
    }

    // Row i sees key j iff j < visible_keys(i); under the causal mask the first row that can
    // see this block's first key is j0 + Nq − Nk.
    let j0 = key_block * BLOCK_KEYS;
    var row_start = 0u;
    if CAUSAL && j0 + p.q_len > p.kv_len {
        row_start = j0 + p.q_len - p.kv_len;
    }
    let rows_base = p.rows_offset + (b * p.q_heads + h) * p.q_len * ROW_STATE_LEN;
    var mass = 0.0;
    for (var r0 = row_start; r0 < p.q_len; r0 += TILE_ROWS) {
        workgroupBarrier(); // every invocation is done with the previous tile
        // Written out as in the forward pass: lavapipe's loop budget (see forward.wgsl).
        for (var e0 = t; e0 < TILE_ROWS * HEAD_DIM; e0 += BLOCK_KEYS * LOAD_UNROLL) {
            //unroll u < LOAD_UNROLL: load_q_element(b, h, r0, e0 + u * BLOCK_KEYS);
        }
        for (var e = t; e < TILE_ROWS * ROW_STATE_LEN; e += BLOCK_KEYS) {
            let i = min(r0 + e / ROW_STATE_LEN, p.q_len - 1u);
            row_state[e] = scratch[rows_base + i * ROW_STATE_LEN + e % ROW_STATE_LEN];
        }
        workgroupBarrier();
        let rows = min(TILE_ROWS, p.q_len - r0);
        for (var rr = 0u; rr < rows; rr++) {
            if !live || j >= visible_keys(r0 + rr) {
                continue;
            }
            let q = rr * HEAD_DIM;
            var dot = 0.0;
            //unroll c < HEAD_DIM: dot += q_tile[q + c] * k_row[c];
            let s = finish_score(dot);
            var x = s;
            if VARIANT == VARIANT_SIGMOID {
                x = log_sigmoid(s + p.sigmoid_bias);
            }
            let m = row_state[rr * ROW_STATE_LEN];
            let l = row_state[rr * ROW_STATE_LEN + 1u];
            var prob = exp(x - m) / l;
            if VARIANT == VARIANT_CLIPPED_SOFTMAX {
                let w = clamp((p.zeta - p.gamma) * prob + p.gamma, 0.0, 1.0);
                let clip_mass = row_state[rr * ROW_STATE_LEN + 2u];
                prob = select(0.0, w / clip_mass, clip_mass > 0.0);
            }
            mass += prob;
        }
    }
    if live {
        key_mass_buf[p.key_mass_offset + (b * p.q_heads + h) * p.kv_len + j] = mass;
    }
}
