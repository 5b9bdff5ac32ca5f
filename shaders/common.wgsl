// Shared by every kernel of the WGSL backend: names of the specialisation values, the uniform
// block, element decoding and encoding, and the score function.
//
// Specialisation: src/wgsl/kernel.rs prepends a header of `const` declarations (HEAD_DIM,
// WORKGROUP_SIZE, TILE_LEN, ELEM, VARIANT, GATE_FN, GATE_PER_CHANNEL, STATS, KEY_MASS)
// to the concatenation of this file, one reduction file and one kernel file. The values below
// are what those constants may hold.

const ELEM_F32: u32 = 0u;
const ELEM_F16: u32 = 1u;
const ELEM_BF16: u32 = 2u;

const VARIANT_SOFTMAX: u32 = 0u;
const VARIANT_VALUE_BIAS: u32 = 1u;
const VARIANT_CONTEXT_BIAS: u32 = 2u;
const VARIANT_KV_SINK: u32 = 3u;
const VARIANT_CONTEXT_SCALE: u32 = 4u;
const VARIANT_SIGMOID: u32 = 5u;
const VARIANT_LOGIT_SINK: u32 = 6u;
const VARIANT_SOFTMAX1: u32 = 7u;
const VARIANT_CLIPPED_SOFTMAX: u32 = 8u;

const GATE_TWO_SIGMOID: u32 = 0u;
const GATE_SIGMOID: u32 = 1u;
const GATE_IDENTITY: u32 = 2u;

// The sink joins the softmax denominator: (d), (g), (h).
const SINK_IN_DENOMINATOR: bool = VARIANT == VARIANT_KV_SINK || VARIANT == VARIANT_LOGIT_SINK
    || VARIANT == VARIANT_SOFTMAX1;
// A sink is visible to every row, so every row is counted in the statistics: (c), (d), (g), (h).
const HAS_SINK: bool = SINK_IN_DENOMINATOR || VARIANT == VARIANT_CONTEXT_BIAS;

// Each counted query row leaves one partial statistics record in the scratch buffer, at
// its LSE index; the combine pass folds a head's records in row order (no float atomics, so
// the statistics are bit-identical from run to run). Rows that are not counted write zeros.
const PART_COUNTED: u32 = 0u;      // 1 when the row sees a key or a sink
const PART_FIRST: u32 = 1u;        // probability of key 0
const PART_SINK: u32 = 2u;         // sink mass
const PART_MAX_SCORE: u32 = 3u;    // max visible score
const PART_ENTROPY: u32 = 4u;      // row entropy
const PART_ROW_MASS: u32 = 5u;     // weight on real keys
const PART_GATE_MIN: u32 = 6u;
const PART_GATE_MAX: u32 = 7u;
const PART_GATE_SUM: u32 = 8u;
const PART_GATE_COUNT: u32 = 9u;
const PART_Q_MAX: u32 = 10u;
const PART_Q_ARGMAX: u32 = 11u;
const PART_Q_SUM: u32 = 12u;
const PARTIAL_LEN: u32 = 13u;

// One record of K and V statistics per (batch, kv head), written by the last query block of
// the forward pass (it visits every key under either mask).
const KV_K_MAX: u32 = 0u;
const KV_K_ARGMAX: u32 = 1u;
const KV_K_SUM: u32 = 2u;
const KV_V_MAX: u32 = 3u;
const KV_V_SUM: u32 = 4u;
const KV_V_NORM_SUM: u32 = 5u;
const KV_V0_NORM: u32 = 6u;
const KV_PARTIAL_LEN: u32 = 7u;

// Per-row state kept for the key-mass pass: the running max m, the normaliser l (sink
// included) and, for ClippedSoftmax, the row's weight sum.
const ROW_STATE_LEN: u32 = 3u;

// Mirrors `Params` in src/wgsl/kernel.rs (same order, all 4-byte fields). Element offsets and
// strides are relative to the start of each binding.
struct Params {
    batch: u32,
    q_heads: u32,
    group: u32,          // Hq / Hkv
    q_len: u32,
    kv_len: u32,
    q_blocks: u32,       // folded query blocks of the forward pass per (batch, kv head)
    scale: f32,
    softcap: f32,        // 0: none
    sigmoid_bias: f32,
    zeta: f32,
    gamma: f32,
    q_offset: u32,
    q_stride_b: u32,
    q_stride_n: u32,
    q_stride_h: u32,
    k_offset: u32,
    k_stride_b: u32,
    k_stride_n: u32,
    k_stride_h: u32,
    v_offset: u32,
    v_stride_b: u32,
    v_stride_n: u32,
    v_stride_h: u32,
    o_offset: u32,
    o_stride_b: u32,
    o_stride_n: u32,
    o_stride_h: u32,
    lse_offset: u32,
    stats_offset: u32,
    key_mass_offset: u32,
    param_a_offset: u32, // k_sink, v_bias, sink_logits or gate
    param_b_offset: u32, // v_sink
    partials_offset: u32,    // per-row statistics records
    kv_partials_offset: u32, // per-(batch, kv head) K/V statistics records
    rows_offset: u32,        // per-row state for the key mass
    nan_bits: u32,       // 0x7fc00000: NaN and -inf come from the uniforms, so that no
    neg_inf_bits: u32,   // shader compiler folds them away or rejects them as constants
    window_left: u32,    // keys seen before the diagonal, or UNBOUNDED
    window_right: u32,   // keys seen after the diagonal (0: causal), or UNBOUNDED
    // The sequence layout (DESIGN.md section 6; `seq_of`, `q_place`, `kv_place` below).
    q_packed: u32,       // 1: Q, O, the gate `[total_q, Hq, ·]` with cu_seqlens_q
    kv_mode: u32,        // KV_DENSE, KV_LENS, KV_PACKED or KV_PAGED
    q_total: u32,        // rows of packed Q
    kv_total: u32,       // rows of packed K and V
    pages: u32,          // physical pages of a paged cache
    page_size: u32,
    max_pages: u32,      // entries per sequence in block_table
    seqs_offset: u32,    // the sequence records (SEQ_LEN words each) in the scratch buffer
    table_offset: u32,   // the checked block table in the scratch buffer
    cu_q_offset: u32,    // element offsets of the engine's index tensors in their bindings
    cu_k_offset: u32,
    lens_offset: u32,
    block_table_offset: u32,
    bias_per_seq: u32,   // 1: Sigmoid's β is −ln Nk_b of each sequence, not sigmoid_bias
    splits: u32,         // split-KV: splits of each row's keys (1: no split)
    split_keys: u32,     // split-KV: keys per split, whole K/V tiles
    split_offset: u32,   // split-KV: the splits' partials in the scratch buffer
    one: u32,            // 1: the trip count of a settling loop (below)
    reserved0: u32,      // the uniform block's size stays a multiple of 16 bytes
    reserved1: u32,
    reserved2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// Settling loops. lavapipe builds a kernel that has barriers as a coroutine, and LLVM's
// coroutine lowering does not keep a value that lives across a barrier when the value is a
// chain of arithmetic, comparisons, selects and casts: it recomputes the chain at every block
// that uses it. A row's q decoded from 16-bit words, set up before the first K/V tile's
// barriers, was decoded again inside the loop over keys, for every key (f16 ran 1.4x slower
// than f32 at d = 64). Values assigned inside a loop leave it as phi nodes, which the lowering
// keeps, so what a row sets up once and reads per key is assigned inside
// `for (var once = 0u; once < p.one; once++) { ... }`: one trip (p.one = 1, read from the
// uniforms so that no compiler removes the loop), counted in kernel.rs's loop budget.

fn nan() -> f32 {
    return bitcast<f32>(p.nan_bits);
}

fn neg_inf() -> f32 {
    return bitcast<f32>(p.neg_inf_bits);
}

// Tensors of every dtype are bound as arrays of u32 words: f32 is a bitcast, and 16-bit
// elements are half-words, so f16 needs no SHADER_F16 and an odd element offset is a half-word
// select rather than a refusal.
fn word_index(i: u32) -> u32 {
    if ELEM == ELEM_F32 {
        return i;
    }
    return i >> 1u;
}

// f16 bits to f32, exactly, without branches (straight-line code builds faster and runs the
// same on every lane): normal, subnormal (mantissa · 2^-24, exact in f32) and Inf/NaN cases
// are all computed and one is selected.
fn f16_bits_to_f32(h: u32) -> f32 {
    let sign = (h & 0x8000u) << 16u;
    let exponent = (h >> 10u) & 0x1fu;
    let mantissa = h & 0x3ffu;
    let normal = sign | ((exponent + 112u) << 23u) | (mantissa << 13u);
    let subnormal = sign | bitcast<u32>(f32(mantissa) * 5.9604645e-8);
    let special = sign | 0x7f800000u | (mantissa << 13u);
    return bitcast<f32>(select(select(normal, special, exponent == 31u), subnormal, exponent == 0u));
}

// The two 16-bit elements of a word as f32 (low half first).
fn decode_pair(word: u32) -> vec2<f32> {
    if ELEM == ELEM_F16 {
        return vec2<f32>(f16_bits_to_f32(word & 0xffffu), f16_bits_to_f32(word >> 16u));
    }
    return vec2<f32>(bitcast<f32>(word << 16u), bitcast<f32>(word & 0xffff0000u));
}

// Four 16-bit elements starting at element i, from the three words w0..w2 that hold
// elements (i & ~1) .. (i & ~1) + 5: two packed pairs, shifted by a half-word when i is odd.
fn decode_half_quad(w0: u32, w1: u32, w2: u32, i: u32) -> vec4<f32> {
    let odd = (i & 1u) == 1u;
    let lo = select(w0, (w0 >> 16u) | (w1 << 16u), odd);
    let hi = select(w1, (w1 >> 16u) | (w2 << 16u), odd);
    return vec4<f32>(decode_pair(lo), decode_pair(hi));
}

// Element i of a tensor, given the word that holds it.
fn decode(word: u32, i: u32) -> f32 {
    if ELEM == ELEM_F32 {
        return bitcast<f32>(word);
    }
    let half = select(word & 0xffffu, word >> 16u, (i & 1u) == 1u);
    if ELEM == ELEM_F16 {
        return f16_bits_to_f32(half);
    }
    return bitcast<f32>(half << 16u);
}

// f32 to f16 bits, rounding to nearest even (pack2x16float leaves the rounding open), without
// branches: the normal result (rebias, round on the 13 dropped bits), the subnormal one (|x|
// + 0.5 puts |x| / 2^-24 in the low mantissa bits, rounded by the addition itself), overflow to
// Inf and NaN are all computed and one is selected.
fn f32_to_f16_bits(x: f32) -> u32 {
    let bits = bitcast<u32>(x);
    let sign = (bits >> 16u) & 0x8000u;
    let a = bits & 0x7fffffffu;
    let normal = ((a + 0x0fffu + ((a >> 13u) & 1u)) >> 13u) - (112u << 10u);
    let subnormal = bitcast<u32>(bitcast<f32>(a) + 0.5) - 0x3f000000u;
    var h = select(normal, subnormal, a < 0x38800000u); // below 2^-14
    h = select(h, 0x7c00u, a >= 0x477ff000u);            // rounds past 65504: Inf
    h = select(h, 0x7e00u, a > 0x7f800000u);             // NaN stays a quiet NaN
    return sign | h;
}

// f32 to bf16 bits, rounding to nearest even; NaN stays a quiet NaN.
fn f32_to_bf16_bits(x: f32) -> u32 {
    let bits = bitcast<u32>(x);
    let rounded = (bits + 0x7fffu + ((bits >> 16u) & 1u)) >> 16u;
    return select(rounded, (bits >> 16u) | 0x40u, (bits & 0x7fffffffu) > 0x7f800000u);
}

fn encode_half(x: f32) -> u32 {
    if ELEM == ELEM_F16 {
        return f32_to_f16_bits(x);
    }
    return f32_to_bf16_bits(x);
}

// |x| past which tanh(x) rounds to ±1 in f32 (tanh(10) = 1 − 4e-9). WGSL leaves tanh undefined
// for large arguments (some drivers compute it from exp(2x), which overflows past 44), so the
// argument is clamped first; NaN stays NaN.
const TANH_SATURATES: f32 = 10.0;

// The score from a dot product: σ·(q·k), then the softcap c·tanh(s/c) when one is set.
fn finish_score(qk: f32) -> f32 {
    let s = p.scale * qk;
    if SOFTCAP { // a constant: lavapipe would run a uniform branch anyway (kernel.rs)
        let x = s / p.softcap;
        let clamped = select(select(x, TANH_SATURATES, x > TANH_SATURATES), -TANH_SATURATES,
            x < -TANH_SATURATES);
        return select(p.softcap * tanh(clamped), x, is_nan(x));
    }
    return s;
}

// Whether x is NaN, read from its bits: comparisons with NaN are among what WGSL lets a
// compiler assume away, integer operations are not.
fn is_nan(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u;
}

// Whether x is −inf, read from its bits. Float comparisons are no help with NaN around:
// lavapipe compiles `!=` as an ordered comparison, so NaN != −inf is false there.
fn is_neg_inf(x: f32) -> bool {
    return bitcast<u32>(x) == 0xff800000u;
}

// Whether x is +inf, read from its bits (as is_neg_inf).
fn is_pos_inf(x: f32) -> bool {
    return bitcast<u32>(x) == 0x7f800000u;
}

// 0, or NaN when `poisoned` (written out: a compiler may fold 0 · x to 0 even for a NaN x).
fn nan_if(poisoned: bool) -> f32 {
    return select(0.0, nan(), poisoned);
}

// max(a, b) that ignores a NaN b, as the reference's running maxima do (WGSL's max leaves
// NaN operands undefined).
fn max_ignoring_nan(a: f32, b: f32) -> f32 {
    return select(a, b, b > a);
}

// ClippedSoftmax's weight clip(y, 0, 1), NaN kept (as the reference's clip01; WGSL's min and
// max leave NaN operands undefined, and lavapipe's ordered comparisons read NaN as false).
fn clip01(y: f32) -> f32 {
    let clipped = select(select(y, 1.0, y > 1.0), 0.0, y < 0.0);
    return select(clipped, nan(), is_nan(y));
}

fn sigmoid(x: f32) -> f32 {
    return 1.0 / (1.0 + exp(-x));
}

// ln sigmoid(x), without overflow for either sign.
fn log_sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        return -log(1.0 + exp(-x));
    }
    return x - log(1.0 + exp(x));
}

// The sum of a row's ROW_LANES partial dot products (parts[0 .. ROW_LANES), the rest unused), in
// the order the forward kernel's lanes add them: pairs, then pairs of pairs. The key-mass pass
// adds its parts in this order too, so that both weigh the same scores.
fn sum_parts(parts: array<f32, 8>) -> f32 {
    if ROW_LANES == 1u {
        return parts[0];
    }
    if ROW_LANES == 2u {
        return parts[0] + parts[1];
    }
    let four = (parts[0] + parts[1]) + (parts[2] + parts[3]);
    if ROW_LANES == 4u {
        return four;
    }
    return four + ((parts[4] + parts[5]) + (parts[6] + parts[7]));
}

// A side of the sliding window that has no bound (`window_left`, `window_right`).
const UNBOUNDED: u32 = 0xffffffffu;

// The keys [start, end) query row i of a sequence of nq queries and nk keys sees: key j iff
// i + nk − nq − left <= j <= i + nk − nq + right (`Mask::key_range` in src/contract:
// bottom-right aligned per sequence; causal is right = 0, no mask has neither bound).
// Computed without negative numbers: every sum stays below 2·(Nq + Nk) + 1, which the host
// keeps within u32. The one place the kernels learn a row's keys.
struct KeyRange {
    start: u32,
    end: u32,
}

fn key_range(i: u32, nq: u32, nk: u32) -> KeyRange {
    var end = nk;
    if p.window_right != UNBOUNDED {
        let reach = i + nk + p.window_right + 1u; // one past the last key seen, + nq
        end = select(0u, min(reach - nq, nk), reach > nq);
    }
    var start = 0u;
    if p.window_left != UNBOUNDED {
        let diagonal = i + nk;         // the diagonal, + nq
        let back = nq + p.window_left;
        start = select(0u, diagonal - back, diagonal > back);
    }
    return KeyRange(min(start, end), end);
}

// The sequences of a call: the device side of `SeqMap` (src/contract/seqs.rs), the one map
// from (sequence, token) to a place, for every kernel. A call that is not dense in both Q and
// K/V first runs the `seqs` pass (seqs.wgsl), which reads the engine's index tensors once,
// checks them, and leaves one record per sequence and a checked copy of the block table in
// the scratch buffer (which every kernel binds as `scratch`); the other kernels read only
// those, so a bad index tensor never reaches an address.
const KV_DENSE: u32 = 0u;  // K, V [B, Nk, Hkv, d]
const KV_LENS: u32 = 1u;   // the same, sequence b using its first seqlens_k[b] keys
const KV_PACKED: u32 = 2u; // K, V [total_k, Hkv, d], cu_seqlens_k
const KV_PAGED: u32 = 3u;  // K, V [pages, page_size, Hkv, d], block_table, seqlens_k

// A sequence record: where its queries and keys start in packed tensors (0 otherwise), how
// many there are (clamped into the tensors), and whether its index entries were bad (its
// rows, statistics and key mass are then NaN; crate docs, "Bad index tensors on the device").
const SEQ_Q_START: u32 = 0u;
const SEQ_Q_LEN: u32 = 1u;
const SEQ_KV_START: u32 = 2u;
const SEQ_KV_LEN: u32 = 3u;
const SEQ_BAD: u32 = 4u;
const SEQ_LEN: u32 = 5u;

struct Seq {
    q_start: u32,
    q_len: u32,
    kv_start: u32,
    kv_len: u32,
    bad: u32,
}

// Whether the call has sequence records (else every sequence is the shape's Nq by Nk).
// SEQ_RECORDS (specialisation) is false for the forward and key-mass kernels of dense calls,
// so that their sequence is the uniforms' and every test below folds away: a compiler then
// sees the loops over keys and rows as uniform, as before sequences existed (lavapipe runs
// them about 8% faster so).
fn has_seq_records() -> bool {
    return SEQ_RECORDS && (p.q_packed != 0u || p.kv_mode != KV_DENSE);
}

// Sequence b of the call. Integers travel in the f32 scratch buffer as their bits.
fn seq_of(b: u32) -> Seq {
    if !has_seq_records() {
        return Seq(0u, p.q_len, 0u, p.kv_len, 0u);
    }
    let at = p.seqs_offset + b * SEQ_LEN;
    return Seq(bitcast<u32>(scratch[at + SEQ_Q_START]), bitcast<u32>(scratch[at + SEQ_Q_LEN]),
        bitcast<u32>(scratch[at + SEQ_KV_START]), bitcast<u32>(scratch[at + SEQ_KV_LEN]),
        bitcast<u32>(scratch[at + SEQ_BAD]));
}

// (outer, token) of query i of sequence b (`SeqMap::q_pos`), for Q, O and the gate.
fn q_place(seq: Seq, b: u32, i: u32) -> vec2<u32> {
    if SEQ_RECORDS && p.q_packed != 0u {
        return vec2<u32>(0u, min(seq.q_start + i, p.q_total - 1u));
    }
    return vec2<u32>(b, i);
}

// Row of query i of sequence b in the gate's `[tokens, Hq, ·]` (tokens = B·Nq or total_q).
fn q_row(seq: Seq, b: u32, i: u32) -> u32 {
    let at = q_place(seq, b, i);
    return at.x * p.q_len + at.y;
}

// (outer, token) of key j of sequence b in K and V (`SeqMap::kv_pos`): a paged key is slot
// j % page_size of the physical page the checked block table names.
fn kv_place(seq: Seq, b: u32, j: u32) -> vec2<u32> {
    if !SEQ_RECORDS {
        return vec2<u32>(b, j);
    }
    switch p.kv_mode {
        case KV_PACKED: { return vec2<u32>(0u, min(seq.kv_start + j, p.kv_total - 1u)); }
        case KV_PAGED: {
            let page = bitcast<u32>(scratch[p.table_offset + b * p.max_pages + j / p.page_size]);
            return vec2<u32>(page, j % p.page_size);
        }
        default: { return vec2<u32>(b, j); }
    }
}

// Index in the LSE of query i of sequence b, head h (`SeqMap::lse_index`).
fn lse_index(seq: Seq, b: u32, h: u32, i: u32) -> u32 {
    if SEQ_RECORDS && p.q_packed != 0u {
        return h * p.q_total + seq.q_start + i;
    }
    return (b * p.q_heads + h) * p.q_len + i;
}

// Index in the key mass of key j of sequence b, head h (`SeqMap::key_mass_index`).
fn key_mass_index(seq: Seq, b: u32, h: u32, j: u32) -> u32 {
    if SEQ_RECORDS && p.kv_mode == KV_PACKED {
        return h * p.kv_total + seq.kv_start + j;
    }
    return (b * p.q_heads + h) * p.kv_len + j;
}

// Index of query i of sequence b, head h, in the per-row scratch records (the statistics
// partials, the key mass's row state): [B, Hq, Nq] with Nq the longest sequence, whatever
// the layout.
fn row_record(b: u32, h: u32, i: u32) -> u32 {
    return (b * p.q_heads + h) * p.q_len + i;
}

// β of Sigmoid for a sequence of nk keys: the given bias, or −ln nk.
fn sigmoid_bias_of(nk: u32) -> f32 {
    if p.bias_per_seq != 0u {
        return -log(f32(nk));
    }
    return p.sigmoid_bias;
}
