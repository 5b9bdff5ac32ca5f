// The fused forward pass: flash attention with an online softmax, every variant of DESIGN.md
// section 2, the LSE and the per-row parts of the statistics of section 3 in one pass.
//
// Rows. The query heads of a GQA group are folded into one space of Nq · group rows,
// position-major: folded row f is query position i = f / group of head h = g · group + f % group.
// A workgroup owns BLOCK_M consecutive folded rows of kv head g of batch b (grid: folded block,
// kv head, batch), so each K/V tile it stages serves the whole group; a decode step (Nq = 1)
// still fills `group` rows.
//
// Lanes. A row belongs to ROW_LANES lanes (1, 2, 4 or 8: kernel.rs picks it from the head dim
// so that no lane owns more than a fixed number of channels); lane `part` of a row owns its
// LANE_QUADS channel quads from c0 = part · LANE_QUADS. A lane's slice of q and of the output
// accumulator are private arrays of LANE_QUADS vec4 that only constants index (every loop over
// them is written out, `//unroll_all`), so the compiler keeps them in registers, and the code
// written out per key is the same length at every head dim (pipeline builds stay short). For
// Q·Kᵀ each lane forms the partial dot product of its channels and the row's lanes add them
// (`row_sum`, in a fixed tree order: every lane of the row gets the same bits, and the
// key-mass pass adds the same parts in the same order); for P·V each lane weighs its own
// channels. The online softmax is computed alike by every lane of the row; the row's
// statistics record is written by its lane 0. A row's lanes form a lane group, which serves
// ROW_BLOCK rows (register blocking, see `RowSlot`).
//
// Keys. Tiles of BLOCK_N keys of K and V are staged in workgroup memory as [key][channel quad]
// vec4 by all lanes together (each global word read once per workgroup). How a lane then gets
// key u's quads is what the two key files differ in (keys_subgroup.wgsl, keys_workgroup.wgsl):
// lanes exchange registers by subgroup shuffles, or every lane reads the quad from workgroup
// memory. They also say how the lanes of a row are chosen and how `row_sum` adds across them.
// Either way each quad feeds 4 FMAs per lane. Keys go in rounds of KEYS_HELD (the subgroup
// path holds that many keys of the tile in registers at a time), each round two loops: the
// scores, one trip per key, then the weights of V, two keys a trip (`score_key`; lavapipe's
// loop budget, kernel.rs).
//
// Split-KV (SPLIT, for decode): the grid's x is split · q_blocks + folded block, and a
// workgroup visits only keys [split · split_keys, (split + 1) · split_keys) of its span
// (split_keys is whole tiles, so tiles stay aligned to BLOCK_N). Instead of O and the LSE each
// row leaves its partial (the online softmax's state and the statistics' sums, SPLIT_*, then
// the unnormalised accumulator of HEAD_DIM channels) at record (row, split) in the scratch
// buffer, and the last block of each split its K/V statistics over the split's keys;
// split_combine.wgsl merges a row's splits in split order and ends the row with this file's
// epilogue functions (`end_row`, `finish_quad`, `row_shares`). The sink, an outcome of the row
// and not of a key, joins split 0 only. Every variant but ClippedSoftmax splits (its weights
// need the row's final normaliser before the first of them).
//
// Keys a row does not see (the causal mask, the tail of the last tile) are skipped by selects,
// never by multiplying by 0: a NaN or Inf in a key the row does not see must not reach it.
// Scores stay in f32 whatever the dtype, so massive activations cannot overflow.

const D4: u32 = HEAD_DIM / 4u;                  // channel quads per row
const LANE_QUADS: u32 = D4 / ROW_LANES;         // channel quads per lane of a row
const BLOCK_M: u32 = WORKGROUP_SIZE / ROW_LANES * ROW_BLOCK; // folded rows per workgroup
const BLOCK_N: u32 = TILE_LEN;                  // keys per K/V tile in workgroup memory

// The running max m moves only when a logit passes it by more than this (natural-log units),
// so the accumulator is rescaled a few times per row rather than at every new maximum; the
// weights e^(x − m) then stay below e^8 ≈ 3000, far from f32 overflow. The result is the same
// softmax: m cancels between the numerator and l.
const RESCALE_SLACK: f32 = 8.0;

// A split-KV partial of a row: SPLIT_HEAD words of the split's online-softmax state, then the
// row's HEAD_DIM channels of its unnormalised accumulator. The q statistics and the sink's
// logit are the row's, the same in every split; the combine reads them from split 0.
const SPLIT_M: u32 = 0u;             // running max (−inf: the split saw nothing)
const SPLIT_L: u32 = 1u;             // Σ e^(x − m), the sink's term included in split 0
const SPLIT_FLAGS: u32 = 2u;         // SPLIT_POISONED, as bits
const SPLIT_SINK_LOGIT: u32 = 3u;
const SPLIT_L_KEYS: u32 = 4u;        // Σ e^(x − m) over real keys only
const SPLIT_T_ENT: u32 = 5u;         // Σ e^(x − m) · (x − m)
const SPLIT_MAX_SCORE: u32 = 6u;     // largest score the split's keys gave the row
const SPLIT_LOGIT0: u32 = 7u;        // x of key 0 (split 0 only; −inf elsewhere)
const SPLIT_SIGMOID_MASS: u32 = 8u;  // Σ sigmoid(s + β)
const SPLIT_Q_MAX: u32 = 9u;         // the row's largest |q|, its channel and Σ|q|
const SPLIT_Q_ARGMAX: u32 = 10u;
const SPLIT_Q_SUM: u32 = 11u;
const SPLIT_HEAD: u32 = 12u;
const SPLIT_RECORD: u32 = SPLIT_HEAD + HEAD_DIM;
const SPLIT_POISONED: u32 = 1u; // a NaN among the split's logits (or x − m undefined)

// Record `split` of row (b, h, i), and the K/V statistics partial of split `split` of (b, g),
// which follow every row's records.
fn split_record(b: u32, h: u32, i: u32, split: u32) -> u32 {
    return p.split_offset + (row_record(b, h, i) * p.splits + split) * SPLIT_RECORD;
}

fn kv_split_record(b: u32, g: u32, split: u32) -> u32 {
    let rows_end = p.split_offset + p.batch * p.q_heads * p.q_len * p.splits * SPLIT_RECORD;
    return rows_end + ((b * (p.q_heads / p.group) + g) * p.splits + split) * KV_PARTIAL_LEN;
}

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

var<workgroup> k_tile: array<vec4<f32>, BLOCK_N * D4>; // [key][channel quad]
var<workgroup> v_tile: array<vec4<f32>, BLOCK_N * D4>; // [key][channel quad]
// One vec4 per lane, [row][part]: what the lanes of a row combine once per call (`row_parts`).
var<workgroup> row_share: array<vec4<f32>, WORKGROUP_SIZE>;

// Which row of the workgroup's block a lane serves, and which of the row's lanes it is.
struct RowLane {
    row: u32,
    part: u32,
}

// Every lane's v, as the lanes of its row hold it, in part order. Called in uniform control
// flow by every invocation.
fn row_parts(rl: RowLane, v: vec4<f32>) -> array<vec4<f32>, ROW_LANES> {
    var parts: array<vec4<f32>, ROW_LANES>;
    if ROW_LANES == 1u {
        // A row of one lane has nothing to exchange, and no barrier to wait at (on lavapipe
        // each is a coroutine suspension, per row slot).
        parts[0] = v;
        return parts;
    }
    workgroupBarrier(); // row_share is free again
    row_share[rl.row * ROW_LANES + rl.part] = v;
    workgroupBarrier();
    //unroll_all r < ROW_LANES: parts[r] = row_share[rl.row * ROW_LANES + r];
    return parts;
}

// As load_q4 (qk_loads.wgsl), from V.
fn load_v4(i: u32) -> vec4<f32> {
    if ELEM == ELEM_F32 {
        return bitcast<vec4<f32>>(vec4<u32>(v_buf[i], v_buf[i + 1u], v_buf[i + 2u], v_buf[i + 3u]));
    }
    let w = i >> 1u;
    return decode_half_quad(v_buf[w], v_buf[w + 1u], v_buf[min(w + 2u, arrayLength(&v_buf) - 1u)], i);
}

// k_sink, v_bias, sink_logits, v_sink: f32, dense per head.
fn param_a_f32(i: u32) -> f32 {
    return bitcast<f32>(param_a[p.param_a_offset + i]);
}

fn param_a4(i: u32) -> vec4<f32> {
    return vec4<f32>(param_a_f32(i), param_a_f32(i + 1u), param_a_f32(i + 2u), param_a_f32(i + 3u));
}

fn param_b4(i: u32) -> vec4<f32> {
    let at = p.param_b_offset + i;
    return bitcast<vec4<f32>>(vec4<u32>(param_b[at], param_b[at + 1u], param_b[at + 2u], param_b[at + 3u]));
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

// Folds channel quad c of x into the largest |x| (lowest channel on ties; NaN never wins, as
// in the reference) and the sum of |x|.
fn fold_abs(best: ptr<function, ArgMax>, sum: ptr<function, f32>, x: vec4<f32>, c: u32) {
    let a = abs(x);
    // Written out: a loop here would cost lavapipe's loop budget four trips per quad.
    if a.x > (*best).value {
        *best = ArgMax(a.x, c * 4u);
    }
    if a.y > (*best).value {
        *best = ArgMax(a.y, c * 4u + 1u);
    }
    if a.z > (*best).value {
        *best = ArgMax(a.z, c * 4u + 2u);
    }
    if a.w > (*best).value {
        *best = ArgMax(a.w, c * 4u + 3u);
    }
    *sum += (a.x + a.y) + (a.z + a.w);
}

// Stages keys [tile, tile + BLOCK_N) of sequence b, kv head g into k_tile and v_tile: quad e
// of the tile is key e / D4, channels 4 · (e % D4) ..; keys past the sequence's Nk_b read 0.
// STAGE_UNROLL quads of each tensor per lane and loop trip.
fn stage_quad(seq: Seq, b: u32, g: u32, tile: u32, e: u32) {
    if e >= BLOCK_N * D4 {
        return;
    }
    let j = tile + e / D4;
    let c = (e % D4) * 4u;
    let inside = j < seq.kv_len;
    let at = kv_place(seq, b, min(j, max(seq.kv_len, 1u) - 1u));
    let k = load_k4(p.k_offset + at.x * p.k_stride_b + at.y * p.k_stride_n + g * p.k_stride_h + c);
    let v = load_v4(p.v_offset + at.x * p.v_stride_b + at.y * p.v_stride_n + g * p.v_stride_h + c);
    k_tile[e] = select(vec4<f32>(0.0), k, inside);
    v_tile[e] = select(vec4<f32>(0.0), v, inside);
}

fn stage_tile(t: u32, seq: Seq, b: u32, g: u32, tile: u32) {
    for (var e0 = t; e0 < BLOCK_N * D4; e0 += WORKGROUP_SIZE * STAGE_UNROLL) {
        //unroll u < STAGE_UNROLL: stage_quad(seq, b, g, tile, e0 + u * WORKGROUP_SIZE);
    }
}

// The workgroup's sequence, read once by one lane and shared: a value every lane holds
// alike, so that loops over its keys may hold barriers (WGSL's uniformity rules).
var<workgroup> block_seq: Seq;

// Running K/V statistics of the keys this lane measures (lanes t < BLOCK_N of the last
// block, key tile + t of every tile).
var<private> k_best: ArgMax;
var<private> k_sum: f32;
var<private> v_max: f32;
var<private> v_sum: f32;
var<private> v_norm_sum: f32;
var<private> v0_norm: f32;

fn measure_kv_quad(at: u32, c: u32, v_norm_sq: ptr<function, f32>) {
    var best = k_best;
    var sum = k_sum;
    fold_abs(&best, &sum, k_tile[at + c], c);
    k_best = best;
    k_sum = sum;
    let v = v_tile[at + c];
    let a = abs(v);
    v_max = max_ignoring_nan(max_ignoring_nan(v_max, a.x), a.y);
    v_max = max_ignoring_nan(max_ignoring_nan(v_max, a.z), a.w);
    v_sum += (a.x + a.y) + (a.z + a.w);
    *v_norm_sq += dot(v, v);
}

fn measure_key(u: u32, j: u32) {
    let at = u * D4;
    var v_norm_sq = 0.0;
    //unroll(8) c < D4: measure_kv_quad(at, c, &v_norm_sq);
    let norm = sqrt(v_norm_sq);
    v_norm_sum += norm;
    if j == 0u {
        v0_norm = norm;
    }
}

struct KvPartial {
    k_best: ArgMax,
    k_sum: f32,
    v_max: f32,
    v_sum: f32,
    v_norm_sum: f32,
    v0_norm: f32,
}

var<workgroup> kv_red: array<KvPartial, BLOCK_N>;

// r with x folded in after it (the lower channel wins a tie of |k|; NaN never wins).
fn merge_kv(r: KvPartial, x: KvPartial) -> KvPartial {
    var out = r;
    if x.k_best.value > r.k_best.value
        || (x.k_best.value == r.k_best.value && x.k_best.channel < r.k_best.channel) {
        out.k_best = x.k_best;
    }
    out.k_sum += x.k_sum;
    out.v_max = max_ignoring_nan(r.v_max, x.v_max);
    out.v_sum += x.v_sum;
    out.v_norm_sum += x.v_norm_sum;
    out.v0_norm += x.v0_norm;
    return out;
}

// A K/V statistics record (KV_* of common.wgsl) at `at` of the scratch buffer.
fn store_kv(at: u32, r: KvPartial) {
    scratch[at + KV_K_MAX] = r.k_best.value;
    scratch[at + KV_K_ARGMAX] = f32(r.k_best.channel);
    scratch[at + KV_K_SUM] = r.k_sum;
    scratch[at + KV_V_MAX] = r.v_max;
    scratch[at + KV_V_SUM] = r.v_sum;
    scratch[at + KV_V_NORM_SUM] = r.v_norm_sum;
    scratch[at + KV_V0_NORM] = r.v0_norm;
}

fn load_kv(at: u32) -> KvPartial {
    return KvPartial(ArgMax(scratch[at + KV_K_MAX], u32(scratch[at + KV_K_ARGMAX])),
        scratch[at + KV_K_SUM], scratch[at + KV_V_MAX], scratch[at + KV_V_SUM],
        scratch[at + KV_V_NORM_SUM], scratch[at + KV_V0_NORM]);
}

// The measuring lanes' partials folded in lane order into the record at `at`. Called in
// uniform control flow by every invocation of the workgroup.
fn fold_kv_partials(t: u32, at: u32) {
    if t < BLOCK_N {
        kv_red[t] = KvPartial(k_best, k_sum, v_max, v_sum, v_norm_sum, v0_norm);
    }
    workgroupBarrier();
    if t == 0u {
        var r = kv_red[0];
        for (var u = 1u; u < BLOCK_N; u++) {
            r = merge_kv(r, kv_red[u]);
        }
        store_kv(at, r);
    }
}

// Writes a quad of the row's O: 4 words for f32, 2 for an even 16-bit start, and half-word
// atomics for the two ends of an odd one (they share words with the neighbours).
fn store_o_quad(at: u32, o: vec4<f32>) {
    if ELEM == ELEM_F32 {
        atomicStore(&o_buf[at], bitcast<u32>(o.x));
        atomicStore(&o_buf[at + 1u], bitcast<u32>(o.y));
        atomicStore(&o_buf[at + 2u], bitcast<u32>(o.z));
        atomicStore(&o_buf[at + 3u], bitcast<u32>(o.w));
        return;
    }
    let h = vec4<u32>(encode_half(o.x), encode_half(o.y), encode_half(o.z), encode_half(o.w));
    let w = at >> 1u;
    if (at & 1u) == 0u {
        atomicStore(&o_buf[w], h.x | (h.y << 16u));
        atomicStore(&o_buf[w + 1u], h.z | (h.w << 16u));
        return;
    }
    // Odd start: the quad's first and last elements share words with its neighbours, so
    // those halves are written with atomics that leave the other half untouched.
    atomicAnd(&o_buf[w], 0x0000ffffu);
    atomicOr(&o_buf[w], h.x << 16u);
    atomicStore(&o_buf[w + 1u], h.y | (h.z << 16u));
    atomicAnd(&o_buf[w + 2u], 0xffff0000u);
    atomicOr(&o_buf[w + 2u], h.w);
}

fn store_split_quad(at: u32, o: vec4<f32>) {
    scratch[at] = o.x;
    scratch[at + 1u] = o.y;
    scratch[at + 2u] = o.z;
    scratch[at + 3u] = o.w;
}

// Register blocking: a lane group serves ROW_BLOCK rows of the block, rows
// f0 + rl.row · ROW_BLOCK + r, so that every key quad it loads or shuffles feeds the FMAs of
// ROW_BLOCK rows. kernel.rs picks 2 on CPU adapters, where each load and shuffle of workgroup
// memory costs a loop over the SIMD lanes (lavapipe) and registers spill cheaply to the
// stack, and 1 on GPUs, where registers are the limit. A row's state lives in the private
// arrays below, which only the constants `//unroll_all r < ROW_BLOCK` writes index (so they
// stay in registers); each row computes exactly what it computes alone.
struct RowSlot {
    live: bool,      // a row of the block (lanes past the last row shadow it)
    i: u32,          // query position
    h: u32,          // query head
    q_at: vec2<u32>, // (outer, token) of the row in Q, O and the gate
    keys: KeyRange,
    has_keys: bool,
    sink_logit: f32,
    q_best: ArgMax,
    q_sum: f32,
}

// The online softmax over the row's logits x (the score s, or log sigmoid(s + β) for
// Sigmoid): m the running max (up to RESCALE_SLACK stale), l_keys = Σ e^(x − m) over real keys
// and l_sink the sink's term e^(s' − m), so that l = l_keys + l_sink (`run_l`); then what only
// the statistics read (STATS; left at their start otherwise): t_ent = Σ e^(x − m)·(x − m) over
// every outcome, so that the entropy is ln l − t_ent / l without cancellation, the largest
// score, x of key 0 (when the row sees it) and Σ sigmoid(s + β); whether a NaN poisoned the row.
struct RowRun {
    m: f32,
    l_keys: f32,
    l_sink: f32,
    t_ent: f32,
    max_score: f32,
    logit0: f32,
    poisoned: bool,
    sigmoid_mass: f32,
}

fn run_l(run: RowRun) -> f32 {
    return run.l_keys + run.l_sink;
}

// ClippedSoftmax's second pass, what the statistics and the key mass read of it (STATS; left
// at their start otherwise): the weights' sum, Σ w ln w, key 0's weight, a NaN weight.
struct ClipRun {
    mass: f32,
    w_log_w: f32,
    w0: f32,
    poisoned: bool,
}

var<private> slots: array<RowSlot, ROW_BLOCK>;
var<private> runs: array<RowRun, ROW_BLOCK>;
var<private> ends: array<RowEnd, ROW_BLOCK>;
var<private> clips: array<ClipRun, ROW_BLOCK>;
// Registers: each row's slice of Q (this lane's channels) and its Σ weight · v.
var<private> q_reg: array<array<vec4<f32>, LANE_QUADS>, ROW_BLOCK>;
var<private> acc: array<array<vec4<f32>, LANE_QUADS>, ROW_BLOCK>;
// Registers: the current key's quads of this lane's channels, fetched once for the rows.
var<private> k_cur: array<vec4<f32>, LANE_QUADS>;
var<private> v_cur: array<vec4<f32>, LANE_QUADS>;
var<private> v_next: array<vec4<f32>, LANE_QUADS>; // the next key's, when two go together

// Row slot r of this lane group: its place, its slice of q, the q statistics, the sink's
// logit s' = σ q·k' (softcapped like any score), θ_h or 0, and the start of its online
// softmax: the sink is the first outcome, weight e^0 = 1 at m = its logit, value v' or 0 (a
// sink logit of −inf weighs nothing, and must not make m = −inf carry a weight of 1; under
// split-KV the sink joins split 0 only). Called in uniform control flow (the q statistics and
// the sink's dot product combine the row's lanes).
fn init_slot(r: u32, rl: RowLane, seq: Seq, b: u32, g: u32, f0: u32, split: u32) {
    let folded = seq.q_len * p.group;
    let local = rl.row * ROW_BLOCK + r;
    // Lanes past the last row shadow it, so that every load stays in bounds; they write
    // nothing and count in no statistic.
    let f = min(f0 + local, max(folded, 1u) - 1u);
    var slot: RowSlot;
    slot.live = f0 + local < folded;
    slot.i = f / p.group;
    slot.h = g * p.group + f % p.group;
    // The keys the row sees: `key_range` (common.wgsl), the one place that says.
    slot.keys = key_range(slot.i, seq.q_len, seq.kv_len);
    slot.has_keys = slot.keys.end > slot.keys.start;
    slot.q_at = q_place(seq, b, slot.i);
    let c0 = rl.part * LANE_QUADS;
    let q_base = p.q_offset + slot.q_at.x * p.q_stride_b + slot.q_at.y * p.q_stride_n
        + slot.h * p.q_stride_h + c0 * 4u;
    //unroll_all c < LANE_QUADS: q_reg[r][c] = load_q4(q_base + c * 4u);
    var q_best = ArgMax(-1.0, 0u);
    var q_sum = 0.0;
    if STATS {
        //unroll_all c < LANE_QUADS: fold_abs(&q_best, &q_sum, q_reg[r][c], c0 + c);
        // The row's largest |q| and Σ|q| from its lanes' slices, in channel order (the lowest
        // channel wins a tie: each part holds its own lowest).
        let parts = row_parts(rl, vec4<f32>(q_best.value, f32(q_best.channel), q_sum, 0.0));
        q_best = ArgMax(parts[0].x, u32(parts[0].y));
        q_sum = parts[0].z;
        //unroll_all k < ROW_LANES: fold_part_abs(&q_best, &q_sum, parts[k], k);
    }
    slot.q_best = q_best;
    slot.q_sum = q_sum;
    var sink_logit = 0.0;
    if VARIANT == VARIANT_CONTEXT_BIAS || VARIANT == VARIANT_KV_SINK {
        var dot4 = vec4<f32>(0.0);
        //unroll_all c < LANE_QUADS: dot4 = fma(q_reg[r][c], param_a4(slot.h * HEAD_DIM + (c0 + c) * 4u), dot4);
        sink_logit = finish_score(row_sum(rl, (dot4.x + dot4.y) + (dot4.z + dot4.w)));
    } else if VARIANT == VARIANT_LOGIT_SINK {
        sink_logit = param_a_f32(slot.h);
    }
    slot.sink_logit = sink_logit;
    slots[r] = slot;

    var run = RowRun(neg_inf(), 0.0, 0.0, 0.0, neg_inf(), neg_inf(), false, 0.0);
    //unroll_all c < LANE_QUADS: acc[r][c] = vec4<f32>(0.0);
    let with_sink = SINK_IN_DENOMINATOR && split == 0u;
    if with_sink && !is_neg_inf(sink_logit) {
        run.m = sink_logit;
        run.l_sink = 1.0;
        if VARIANT == VARIANT_KV_SINK {
            //unroll_all c < LANE_QUADS: acc[r][c] = param_b4(slot.h * HEAD_DIM + (c0 + c) * 4u);
        }
    }
    // A NaN among the row's logits (or x − m undefined: x = m = ±inf) poisons it. exp() need
    // not return NaN for a NaN argument (lavapipe clamps it), so the row is poisoned
    // explicitly, as the reference's sums are by any NaN term. A sink logit of +inf is the
    // row's max, and its own term e^(+inf − (+inf)) is NaN.
    run.poisoned = is_nan(run.m) || (with_sink && is_pos_inf(sink_logit));
    runs[r] = run;
    round_max[r] = neg_inf();
}

// Keys are visited in rounds of the KEYS_HELD keys a lane group holds. A first loop over the
// round's keys forms each row's logits (`score_key`) and keeps them in `round_x`; the row's
// running max then moves once for the round (`lift_row`); a second loop weighs V by them
// (`weigh_keys`, two keys a trip). One rescale of the accumulator per round rather than a test
// per key: lavapipe (Mesa 22.3) runs both sides of every branch, uniform or not, so a rare
// branch per key cost as much as taking it (BENCHMARKS.md). A round's logits live in private
// arrays that the loop counter indexes (memory, not registers: one store and one load per row
// and key).
var<private> round_x: array<array<f32, KEYS_HELD>, ROW_BLOCK>; // x of the round's key u
var<private> round_w: array<array<f32, KEYS_HELD>, ROW_BLOCK>; // Sigmoid's weight of key u
var<private> round_max: array<f32, ROW_BLOCK>; // the largest x of the round the row sees

// Key j, the round's key u (its quads in k_cur), for row slot r: the score, the logit x (the
// score, or log sigmoid(s + β) for Sigmoid) and what the statistics take from them. Called in
// uniform control flow (the score's parts are added over the row's lanes).
fn score_key(r: u32, rl: RowLane, j: u32, u: u32, sigmoid_bias: f32) {
    let keys = slots[r].keys;
    let seen = j >= keys.start && j < keys.end;
    var run = runs[r];
    var dot4 = vec4<f32>(0.0);
    //unroll_all c < LANE_QUADS: dot4 = fma(q_reg[r][c], k_cur[c], dot4);
    let s = finish_score(row_sum(rl, (dot4.x + dot4.y) + (dot4.z + dot4.w)));
    var x = s;
    if VARIANT == VARIANT_SIGMOID {
        // The other variants' largest score is the largest logit, taken once a round.
        if STATS && seen {
            run.max_score = max_ignoring_nan(run.max_score, s);
        }
        let z = s + sigmoid_bias;
        let w = select(0.0, select(sigmoid(z), nan(), is_nan(z)), seen);
        if STATS {
            run.sigmoid_mass += w;
        }
        round_w[r][u] = w;
        x = log_sigmoid(z);
    }
    round_x[r][u] = x;
    if seen {
        round_max[r] = max_ignoring_nan(round_max[r], x);
    }
    runs[r] = run;
}

// Row slot r after the scores of a round whose first key is j0: m moves to the round's largest
// logit when that passes it by more than the slack, and what was summed so far is rescaled
// (alpha = 0 while nothing was seen, m = −inf; t_ent, still 0 then, must not become
// 0 · (−inf)). No branch: a row that does not move multiplies by alpha = 1, which leaves every
// bit as it was. Key 0, when the row sees it, is key 0 of the first round (tiles start at
// multiples of BLOCK_N).
fn lift_row(r: u32, j0: u32) {
    var run = runs[r];
    let x = round_max[r];
    round_max[r] = neg_inf();
    if STATS {
        if VARIANT != VARIANT_SIGMOID {
            run.max_score = max_ignoring_nan(run.max_score, x);
        }
        let keys = slots[r].keys;
        if j0 == 0u && keys.start == 0u && keys.end > 0u {
            run.logit0 = round_x[r][0];
        }
    }
    let lift = x > run.m + RESCALE_SLACK;
    let alpha = select(1.0, exp(run.m - x), lift);
    if STATS {
        let l = run_l(run);
        let lifted_t_ent = select(alpha * (run.t_ent + (run.m - x) * l), 0.0, l == 0.0);
        run.t_ent = select(run.t_ent, lifted_t_ent, lift);
    }
    run.l_keys *= alpha;
    run.l_sink *= alpha;
    if VARIANT != VARIANT_SIGMOID && VARIANT != VARIANT_CLIPPED_SOFTMAX {
        let a = vec4<f32>(alpha);
        //unroll_all c < LANE_QUADS: acc[r][c] *= a;
    }
    run.m = select(run.m, x, lift);
    runs[r] = run;
}

// One step of the online softmax at the round's m for logit x of a key the row sees (`seen`)
// or not: its weight e^(x − m), added to the row's sums.
fn weigh_logit(run: ptr<function, RowRun>, x: f32, seen: bool) -> f32 {
    let d = x - (*run).m;
    // A NaN among the row's logits (or x − m undefined: x = m = +inf) poisons it; a logit of
    // −inf weighs 0 whatever m is (−inf − (−inf) would be NaN).
    (*run).poisoned = (*run).poisoned || (seen && is_nan(d) && !is_neg_inf(x));
    let e = select(0.0, exp(d), seen && !is_neg_inf(x));
    (*run).l_keys += e;
    if STATS {
        (*run).t_ent += select(0.0, e * d, bitcast<u32>(e) != 0u);
    }
    return e;
}

// Keys j and j + 1, the round's keys u and u1 = u + 1 (their quads in v_cur and v_next), for
// row slot r, in key order; with `second` false the round has no key u + 1 (u1 is clamped into
// the round's arrays, its key counts as unseen). Two keys a loop trip because lavapipe writes
// a value carried around a loop through a blend with the loop's mask, one per component: the
// accumulator is written once for both keys (the same operations in the same order as one
// key a trip, so the same bits).
fn weigh_keys(r: u32, j: u32, u: u32, u1: u32, second: bool) {
    let keys = slots[r].keys;
    let seen0 = j >= keys.start && j < keys.end;
    let seen1 = second && j + 1u >= keys.start && j + 1u < keys.end;
    var run = runs[r];
    let e0 = weigh_logit(&run, round_x[r][u], seen0);
    let e1 = weigh_logit(&run, round_x[r][u1], seen1);
    // Sigmoid weights are applied as they are; ClippedSoftmax weighs V in a second pass.
    if VARIANT != VARIANT_CLIPPED_SOFTMAX {
        var w0 = vec4<f32>(e0);
        var w1 = vec4<f32>(e1);
        if VARIANT == VARIANT_SIGMOID {
            w0 = vec4<f32>(round_w[r][u]);
            w1 = vec4<f32>(select(0.0, round_w[r][u1], seen1));
        }
        let hide0 = vec4<bool>(!seen0);
        let hide1 = vec4<bool>(!seen1);
        //unroll_all c < LANE_QUADS: acc[r][c] = fma(w1, select(v_next[c], vec4<f32>(0.0), hide1), fma(w0, select(v_cur[c], vec4<f32>(0.0), hide0), acc[r][c]));
    }
    runs[r] = run;
}

// ClippedSoftmax's second pass, key j for row slot r: weights clip((ζ − γ)·p + γ, 0, 1)
// from the row's final normaliser. Called in uniform control flow.
fn clip_key(r: u32, rl: RowLane, j: u32) {
    let keys = slots[r].keys;
    let seen = j >= keys.start && j < keys.end;
    var dot4 = vec4<f32>(0.0);
    //unroll_all c < LANE_QUADS: dot4 = fma(q_reg[r][c], k_cur[c], dot4);
    let x = finish_score(row_sum(rl, (dot4.x + dot4.y) + (dot4.z + dot4.w)));
    let m = runs[r].m;
    let end = ends[r];
    // A NaN row (l = NaN: a NaN logit, or every logit −inf) has NaN probabilities, read from
    // l rather than from exp(), which need not return NaN (lavapipe).
    let prob = select(select(exp(x - m), 0.0, is_neg_inf(x)) * end.inv_l, nan(), is_nan(end.l));
    // Clipped to [0, 1] as the reference does; a NaN weight stays NaN.
    let y = (p.zeta - p.gamma) * prob + p.gamma;
    let w = select(0.0, clip01(y), seen);
    let wv = vec4<f32>(w);
    let hide = vec4<bool>(!seen);
    //unroll_all c < LANE_QUADS: acc[r][c] = fma(wv, select(v_cur[c], vec4<f32>(0.0), hide), acc[r][c]);
    // What only the statistics and the key mass read.
    if STATS {
        var clip = clips[r];
        clip.poisoned = clip.poisoned || (seen && is_nan(y));
        clip.mass += w;
        clip.w_log_w += select(0.0, w * log(w), w > 0.0);
        if j == 0u {
            clip.w0 = w;
        }
        clips[r] = clip;
    }
}

// Split-KV: row slot r's partial, to be merged by split_combine.wgsl.
fn store_split_slot(r: u32, rl: RowLane, b: u32, split: u32) {
    let slot = slots[r];
    if !slot.live {
        return;
    }
    let run = runs[r];
    let at = split_record(b, slot.h, slot.i, split);
    if rl.part == 0u {
        scratch[at + SPLIT_M] = run.m;
        scratch[at + SPLIT_L] = run_l(run);
        scratch[at + SPLIT_FLAGS] = bitcast<f32>(select(0u, SPLIT_POISONED, run.poisoned));
        scratch[at + SPLIT_SINK_LOGIT] = slot.sink_logit;
        scratch[at + SPLIT_L_KEYS] = run.l_keys;
        scratch[at + SPLIT_T_ENT] = run.t_ent;
        scratch[at + SPLIT_MAX_SCORE] = run.max_score;
        scratch[at + SPLIT_LOGIT0] = run.logit0;
        scratch[at + SPLIT_SIGMOID_MASS] = run.sigmoid_mass;
        scratch[at + SPLIT_Q_MAX] = slot.q_best.value;
        scratch[at + SPLIT_Q_ARGMAX] = f32(slot.q_best.channel);
        scratch[at + SPLIT_Q_SUM] = slot.q_sum;
    }
    let c0 = rl.part * LANE_QUADS;
    //unroll_all c < LANE_QUADS: store_split_quad(at + SPLIT_HEAD + (c0 + c) * 4u, acc[r][c]);
}

// Row slot r's epilogue: normalise, apply the variant's bias, sink value or gate, store O, the
// LSE, the key-mass row state and the statistics record. Called in uniform control flow (a
// per-channel gate's statistics combine the row's lanes).
fn finish_slot(r: u32, rl: RowLane, seq: Seq, b: u32) {
    let slot = slots[r];
    let run = runs[r];
    let end = ends[r];
    let clip = clips[r];
    let live = slot.live;
    let has_keys = slot.has_keys;
    let h = slot.h;
    let i = slot.i;
    let c0 = rl.part * LANE_QUADS;
    var gate_min = 3.4028235e38;
    var gate_max = -3.4028235e38;
    var gate_sum = 0.0;
    var gate_count = 0.0;
    let counted = live && (has_keys || HAS_SINK);
    let key_scale = key_scale_of(end.inv_l, has_keys);
    let scale = o_scale(key_scale);
    let token = q_row(seq, b, i) * p.q_heads + h;
    var gamma_row = 1.0;
    if VARIANT == VARIANT_CONTEXT_SCALE && !GATE_PER_CHANNEL {
        gamma_row = gate_factor(gate_z(token));
        if counted {
            gate_min = gamma_row;
            gate_max = gamma_row;
            gate_sum = gamma_row;
            gate_count = 1.0;
        }
    }
    let o_base = p.o_offset + slot.q_at.x * p.o_stride_b + slot.q_at.y * p.o_stride_n
        + h * p.o_stride_h;
    //unroll_all c < LANE_QUADS: acc[r][c] = finish_quad(acc[r][c], scale, h, c0 + c, end.context_share, quad_gate(token, c0 + c, gamma_row, counted, &gate_min, &gate_max, &gate_sum, &gate_count));
    if VARIANT == VARIANT_CONTEXT_SCALE && GATE_PER_CHANNEL {
        // The row's gate statistics from its lanes' channels, in channel order.
        let parts = row_parts(rl, vec4<f32>(gate_min, gate_max, gate_sum, gate_count));
        gate_min = parts[0].x;
        gate_max = parts[0].y;
        gate_sum = parts[0].z;
        gate_count = parts[0].w;
        //unroll_all k < ROW_LANES: fold_part_gate(&gate_min, &gate_max, &gate_sum, &gate_count, parts[k], k);
    }
    // A sequence whose index entries were bad: its rows are NaN (the combine and key-mass
    // passes make its statistics and key mass NaN).
    let bad = seq.bad != 0u;
    if bad {
        //unroll_all c < LANE_QUADS: acc[r][c] = vec4<f32>(nan());
    }
    if live {
        //unroll_all c < LANE_QUADS: store_o_quad(o_base + (c0 + c) * 4u, acc[r][c]);
    }
    // The row's one record, from its lane 0.
    if live && rl.part == 0u {
        let row_index = row_record(b, h, i);
        lse_buf[p.lse_offset + lse_index(seq, b, h, i)] = select(end.lse, nan(), bad);
        if KEY_MASS {
            store_row_state(row_index, run.m, end.l, clip.mass);
        }
        if STATS {
            // This row's share of the head's statistics (zero when it is not counted).
            var shares = vec4<f32>(0.0);
            if counted {
                if VARIANT == VARIANT_CLIPPED_SOFTMAX {
                    var first = 0.0;
                    var entropy = 0.0;
                    if clip.mass > 0.0 {
                        first = select(0.0, clip.w0 / clip.mass, has_keys);
                        entropy = log(clip.mass) - clip.w_log_w / clip.mass;
                    }
                    if clip.poisoned || is_nan(end.l) {
                        entropy = nan();
                    }
                    if clip.poisoned {
                        first = nan_if(has_keys);
                    }
                    // Sink mass: the reference's 0 / denominator.
                    shares = vec4<f32>(first, nan_if(is_nan(end.l)), entropy, clip.mass);
                } else {
                    shares = row_shares(end, run.m, has_keys, key_scale, run.t_ent, run.l_keys,
                        run.logit0, slot.sink_logit, run.sigmoid_mass);
                }
            }
            store_row_partial(row_index, counted, shares, run.max_score,
                vec4<f32>(gate_min, gate_max, gate_sum, gate_count), slot.q_best, slot.q_sum);
        }
    }
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn forward(lane: Lane, @builtin(workgroup_id) wg: vec3<u32>) {
    let t = lane.index;
    let g = wg.y;
    let b = wg.z;
    // Split-KV: which split of the keys, and which folded block (uniform over the workgroup).
    let split = select(0u, wg.x / max(p.q_blocks, 1u), SPLIT);
    let block = wg.x - split * p.q_blocks;
    var seq = seq_of(b);
    if SEQ_RECORDS {
        if t == 0u {
            block_seq = seq;
        }
        seq = workgroupUniformLoad(&block_seq);
    }
    let nq = seq.q_len;
    let nk = seq.kv_len;
    // The grid covers the longest sequence; a shorter one's surplus blocks leave at once
    // (its first block always runs: it measures K and V even for a sequence of no query).
    let folded = nq * p.group;
    let seq_blocks = max((folded + BLOCK_M - 1u) / BLOCK_M, 1u);
    if block >= seq_blocks {
        return;
    }
    let rl = init_lane(lane);
    let f0 = block * BLOCK_M;
    let last_row = max(folded, 1u) - 1u;
    let c0 = rl.part * LANE_QUADS; // this lane's first channel quad
    // The span of keys the block visits (uniform: the union of its first and last rows'
    // ranges).
    let first_keys = key_range(f0 / p.group, nq, nk);
    let last_keys = key_range(min(f0 + BLOCK_M - 1u, last_row) / p.group, nq, nk);
    // Tiles wholly outside every row's window are never staged; tiles stay aligned to
    // BLOCK_N, so that a block visits at most the tiles the loop budget counts (kernel.rs).
    var key_start = min(first_keys.start, last_keys.start) / BLOCK_N * BLOCK_N;
    var key_end = max(first_keys.end, last_keys.end);
    if SPLIT {
        key_start = max(key_start, split * p.split_keys);
        key_end = min(key_end, (split + 1u) * p.split_keys);
    }
    // The last block measures K and V: its last row's range ends at Nk under every mask, and
    // the keys before its tiles (a window's) it measures in a loop of their own.
    let kv_block = block + 1u == seq_blocks;
    let sigmoid_bias = sigmoid_bias_of(nk);
    for (var once = 0u; once < p.one; once++) { // settled (common.wgsl)
        //unroll_all r < ROW_BLOCK: init_slot(r, rl, seq, b, g, f0, split);
    }

    k_best = ArgMax(-1.0, 0u);
    k_sum = 0.0;
    v_max = 0.0;
    v_sum = 0.0;
    v_norm_sum = 0.0;
    v0_norm = 0.0;
    let measures = STATS && kv_block && t < BLOCK_N;

    // The keys before the block's first tile, measured only (uniform: STATS, kv_block and
    // key_start are the workgroup's); each key is measured once, in key order per lane. Under
    // split-KV each split measures its own keys, [split · split_keys, key_end), and leaves
    // its partial for the combine (a split whose keys no row sees measures them here).
    let measure_start = select(0u, split * p.split_keys, SPLIT);
    let measure_end = min(key_start, key_end);
    if STATS && kv_block {
        for (var tile = measure_start; tile < measure_end; tile += BLOCK_N) {
            workgroupBarrier();
            stage_tile(t, seq, b, g, tile);
            workgroupBarrier();
            if measures && tile + t < measure_end {
                measure_key(t, tile + t);
            }
        }
    }
    for (var tile = key_start; tile < key_end; tile += BLOCK_N) {
        workgroupBarrier(); // every invocation is done with the previous tile
        stage_tile(t, seq, b, g, tile);
        workgroupBarrier();
        if measures && tile + t < key_end {
            measure_key(t, tile + t);
        }
        // Trip counts the compiler cannot know, so that it never writes the loops out.
        let tile_keys = min(BLOCK_N, key_end - tile);
        for (var u0 = 0u; u0 < tile_keys; u0 += KEYS_HELD) {
            hold_keys(u0, c0);
            let round = min(KEYS_HELD, tile_keys - u0);
            for (var u = 0u; u < round; u++) {
                //unroll_all c < LANE_QUADS: k_cur[c] = key_quad(u0, u, c0, c);
                //unroll_all r < ROW_BLOCK: score_key(r, rl, tile + u0 + u, u, sigmoid_bias);
            }
            //unroll_all r < ROW_BLOCK: lift_row(r, tile + u0);
            for (var u = 0u; u < round; u += 2u) {
                let u1 = min(u + 1u, KEYS_HELD - 1u);
                if VARIANT != VARIANT_CLIPPED_SOFTMAX {
                    //unroll_all c < LANE_QUADS: v_cur[c] = value_quad(u0, u, c0, c);
                    //unroll_all c < LANE_QUADS: v_next[c] = value_quad(u0, u1, c0, c);
                }
                //unroll_all r < ROW_BLOCK: weigh_keys(r, tile + u0 + u, u, u1, u + 1u < round);
            }
        }
    }

    // Split-KV: the split's partials, to be merged by split_combine.wgsl; the rest of the
    // epilogue is the combine's.
    if SPLIT {
        //unroll_all r < ROW_BLOCK: store_split_slot(r, rl, b, split);
        if STATS && kv_block {
            fold_kv_partials(t, kv_split_record(b, g, split));
        }
        return;
    }
    for (var once = 0u; once < p.one; once++) { // settled: the second pass reads them per key
        //unroll_all r < ROW_BLOCK: ends[r] = end_row(runs[r].m, run_l(runs[r]), runs[r].poisoned, slots[r].sink_logit, slots[r].has_keys);
    }

    // ClippedSoftmax: weights clip((ζ − γ)·p + γ, 0, 1) need the row's normaliser first, so
    // a second pass over the same tiles applies them.
    //unroll_all r < ROW_BLOCK: clips[r] = ClipRun(0.0, 0.0, 0.0, false);
    if VARIANT == VARIANT_CLIPPED_SOFTMAX {
        for (var tile = key_start; tile < key_end; tile += BLOCK_N) {
            workgroupBarrier();
            stage_tile(t, seq, b, g, tile);
            workgroupBarrier();
            let tile_keys = min(BLOCK_N, key_end - tile);
            for (var u0 = 0u; u0 < tile_keys; u0 += KEYS_HELD) {
                hold_keys(u0, c0);
                for (var u = 0u; u < min(KEYS_HELD, tile_keys - u0); u++) {
                    //unroll_all c < LANE_QUADS: k_cur[c] = key_quad(u0, u, c0, c);
                    //unroll_all c < LANE_QUADS: v_cur[c] = value_quad(u0, u, c0, c);
                    //unroll_all r < ROW_BLOCK: clip_key(r, rl, tile + u0 + u);
                }
            }
        }
        // A NaN weight: the row's mass and distribution are NaN.
        //unroll_all r < ROW_BLOCK: clips[r].mass = select(clips[r].mass, nan(), clips[r].poisoned);
    }
    //unroll_all r < ROW_BLOCK: finish_slot(r, rl, seq, b);

    // The K/V record of (b, g): the measuring lanes' partials folded in lane order.
    if STATS && kv_block {
        fold_kv_partials(t, p.kv_partials_offset + (b * (p.q_heads / p.group) + g) * KV_PARTIAL_LEN);
    }
}

// What ends a row's online softmax, here and in split_combine.wgsl after its merge: the
// normaliser l made NaN where the reference's is (a NaN logit; every logit −inf with keys or a
// sink in the denominator: e^(−inf − (−inf))), 1 / l (0 for a row with nothing at all), the LSE,
// and ContextBias's 1 − S = e^s' / (e^s' + Σ e^s) (1 for a row with no key).
struct RowEnd {
    l: f32,
    inv_l: f32,
    lse: f32,
    context_share: f32,
}

fn end_row(m: f32, l_sum: f32, poisoned: bool, sink_logit: f32, has_keys: bool) -> RowEnd {
    var l = select(l_sum, nan(), poisoned);
    var context_share = 0.0;
    if VARIANT == VARIANT_CONTEXT_BIAS {
        let top = select(m, sink_logit, sink_logit > m || l == 0.0);
        let e_sink = exp(sink_logit - top);
        context_share = e_sink / (e_sink + l * exp(m - top));
        context_share = select(context_share, nan(), is_nan(sink_logit - top) || is_nan(l));
    }
    if is_neg_inf(m) && (has_keys || SINK_IN_DENOMINATOR) {
        l = nan();
    }
    // l = 0 only for a row with no key and no sink in the denominator: LSE −inf, output 0.
    let inv_l = select(1.0 / l, 0.0, l == 0.0);
    let lse = select(select(m + log(l), nan(), is_nan(l)), neg_inf(), l == 0.0);
    return RowEnd(l, inv_l, lse, context_share);
}

// What the keys' accumulator is multiplied by: 1 / l, or 0 for a row with no key (the
// reference's empty sum is 0 even over a NaN denominator), except KvSink's, which holds the
// sink's value too.
fn key_scale_of(inv_l: f32, has_keys: bool) -> f32 {
    return select(inv_l, 0.0, !has_keys && VARIANT != VARIANT_KV_SINK);
}

// Sigmoid's and ClippedSoftmax's weights are applied as they are.
fn o_scale(key_scale: f32) -> vec4<f32> {
    return select(vec4<f32>(key_scale), vec4<f32>(1.0),
        VARIANT == VARIANT_SIGMOID || VARIANT == VARIANT_CLIPPED_SOFTMAX);
}

// Channel quad q of head h's output from the accumulator's: scaled, then the variant's term
// of the row (the value bias, ContextBias's share of v', or the gate `gamma`).
fn finish_quad(acc: vec4<f32>, scale: vec4<f32>, h: u32, q: u32, context_share: f32,
    gamma: vec4<f32>) -> vec4<f32> {
    let o = acc * scale;
    if VARIANT == VARIANT_VALUE_BIAS {
        return o + param_a4(h * HEAD_DIM + q * 4u);
    }
    if VARIANT == VARIANT_CONTEXT_BIAS {
        return o + context_share * param_b4(h * HEAD_DIM + q * 4u);
    }
    if VARIANT == VARIANT_CONTEXT_SCALE {
        return o * gamma;
    }
    return o;
}

// ContextScale's gate on channel quad q of row `token`: per channel (folded into the gate
// statistics of a counted row), or the row's `gamma_row`; 1 for the other variants.
fn quad_gate(token: u32, q: u32, gamma_row: f32, counted: bool, lo: ptr<function, f32>,
    hi: ptr<function, f32>, sum: ptr<function, f32>, count: ptr<function, f32>) -> vec4<f32> {
    if VARIANT != VARIANT_CONTEXT_SCALE {
        return vec4<f32>(1.0);
    }
    if GATE_PER_CHANNEL {
        return gate_quad(token * HEAD_DIM + q * 4u, counted, lo, hi, sum, count);
    }
    return vec4<f32>(gamma_row);
}

// A counted row's share of its head's statistics (softmax family and Sigmoid): the probability
// of key 0, the sink mass, the entropy and the weight on real keys. `logit0` is x of key 0
// (−inf when the row does not see it).
fn row_shares(end: RowEnd, m: f32, has_keys: bool, key_scale: f32, t_ent: f32, l_keys: f32,
    logit0: f32, sink_logit: f32, sigmoid_mass: f32) -> vec4<f32> {
    let l = end.l;
    var first = 0.0;
    var sink_mass = 0.0;
    var entropy = 0.0;
    var row_mass = 0.0;
    if has_keys {
        first = select(exp(logit0 - m), 0.0, is_neg_inf(logit0)) * end.inv_l;
    }
    if !(l == 0.0) {
        entropy = log(l) - t_ent * end.inv_l;
    }
    // The weight on no key at all is 0, whatever the normaliser.
    if has_keys {
        row_mass = select(l_keys * key_scale, sigmoid_mass, VARIANT == VARIANT_SIGMOID);
    }
    if SINK_IN_DENOMINATOR {
        sink_mass = select(exp(sink_logit - m), 0.0, is_neg_inf(sink_logit)) * end.inv_l;
    } else if VARIANT == VARIANT_CONTEXT_BIAS {
        sink_mass = end.context_share;
    } else if VARIANT != VARIANT_SIGMOID {
        sink_mass = nan_if(is_nan(l)); // the reference's 0 / denominator
    }
    // A NaN probability makes the row's entropy NaN, as in the reference (log() need not
    // return NaN for a NaN argument: lavapipe).
    if is_nan(l) {
        entropy = nan();
    }
    return vec4<f32>(first, sink_mass, entropy, row_mass);
}

// The key-mass pass's state of a row: m, l (after `end_row`) and ClippedSoftmax's weight sum.
fn store_row_state(row_index: u32, m: f32, l: f32, clip_mass: f32) {
    let at = p.rows_offset + row_index * ROW_STATE_LEN;
    scratch[at] = m;
    scratch[at + 1u] = l;
    scratch[at + 2u] = clip_mass;
}

// A row's statistics record (PART_* of common.wgsl): `shares` (first, sink mass, entropy, row
// mass; zero for a row not counted), gates (min, max, sum, count), and the row's q statistics.
fn store_row_partial(row_index: u32, counted: bool, shares: vec4<f32>, max_score: f32,
    gates: vec4<f32>, q_best: ArgMax, q_sum: f32) {
    let at = p.partials_offset + row_index * PARTIAL_LEN;
    scratch[at + PART_COUNTED] = select(0.0, 1.0, counted);
    scratch[at + PART_FIRST] = shares.x;
    scratch[at + PART_SINK] = shares.y;
    scratch[at + PART_MAX_SCORE] = max_score;
    scratch[at + PART_ENTROPY] = shares.z;
    scratch[at + PART_ROW_MASS] = shares.w;
    scratch[at + PART_GATE_MIN] = gates.x;
    scratch[at + PART_GATE_MAX] = gates.y;
    scratch[at + PART_GATE_SUM] = gates.z;
    scratch[at + PART_GATE_COUNT] = gates.w;
    scratch[at + PART_Q_MAX] = q_best.value;
    scratch[at + PART_Q_ARGMAX] = f32(q_best.channel);
    scratch[at + PART_Q_SUM] = q_sum;
}

// Folds part r's (largest |q|, its channel, Σ|q|) into the row's; part 0 is already there.
fn fold_part_abs(best: ptr<function, ArgMax>, sum: ptr<function, f32>, part: vec4<f32>, r: u32) {
    if r == 0u {
        return;
    }
    if part.x > (*best).value {
        *best = ArgMax(part.x, u32(part.y));
    }
    *sum += part.z;
}

// Folds part r's gate statistics (min, max, sum, count) into the row's; part 0 is already there.
fn fold_part_gate(lo: ptr<function, f32>, hi: ptr<function, f32>, sum: ptr<function, f32>,
    count: ptr<function, f32>, part: vec4<f32>, r: u32) {
    if r == 0u {
        return;
    }
    *lo = min(*lo, part.x);
    *hi = max(*hi, part.y);
    *sum += part.z;
    *count += part.w;
}

// Gate factors of channel quad at..at+3 (per-channel gate), folded into the gate statistics
// of a counted row.
fn gate_quad(at: u32, counted: bool, lo: ptr<function, f32>, hi: ptr<function, f32>,
    sum: ptr<function, f32>, count: ptr<function, f32>) -> vec4<f32> {
    let gamma = vec4<f32>(gate_factor(gate_z(at)), gate_factor(gate_z(at + 1u)),
        gate_factor(gate_z(at + 2u)), gate_factor(gate_z(at + 3u)));
    if counted {
        *lo = min(min(*lo, min(gamma.x, gamma.y)), min(gamma.z, gamma.w));
        *hi = max(max(*hi, max(gamma.x, gamma.y)), max(gamma.z, gamma.w));
        *sum += (gamma.x + gamma.y) + (gamma.z + gamma.w);
        *count += 4.0;
    }
    return gamma;
}
