// Shared by every kernel of the WGSL backend: names of the specialisation values, the uniform
// block, element decoding and encoding, and the score function.
//
// Specialisation: src/wgsl/kernel.rs prepends a header of `const` declarations (HEAD_DIM,
// WORKGROUP_SIZE, TILE_LEN, ELEM, VARIANT, GATE_FN, GATE_PER_CHANNEL, CAUSAL, STATS, KEY_MASS)
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

// One partial statistics record per (batch, head, query block), in the scratch buffer.
// Counts are stored as f32 (exact: a block counts at most WORKGROUP_SIZE * HEAD_DIM items).
const PART_COUNTED: u32 = 0u;      // rows that see a key or a sink
const PART_FIRST: u32 = 1u;        // Σ probability of key 0
const PART_SINK: u32 = 2u;         // Σ sink mass
const PART_MAX_SCORE: u32 = 3u;    // max visible score
const PART_ENTROPY: u32 = 4u;      // Σ row entropy
const PART_ROW_MASS: u32 = 5u;     // Σ weight on real keys
const PART_GATE_MIN: u32 = 6u;
const PART_GATE_MAX: u32 = 7u;
const PART_GATE_SUM: u32 = 8u;
const PART_GATE_COUNT: u32 = 9u;
const PART_Q_MAX: u32 = 10u;
const PART_Q_ARGMAX: u32 = 11u;
const PART_Q_SUM: u32 = 12u;
// K and V are measured by the last query block only (it visits every key under either mask).
const PART_K_MAX: u32 = 13u;
const PART_K_ARGMAX: u32 = 14u;
const PART_K_SUM: u32 = 15u;
const PART_V_MAX: u32 = 16u;
const PART_V_SUM: u32 = 17u;
const PART_V_NORM_SUM: u32 = 18u;
const PART_V0_NORM: u32 = 19u;
const PARTIAL_LEN: u32 = 20u;

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
    q_blocks: u32,       // query blocks of the forward pass
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
    partials_offset: u32,
    rows_offset: u32,
    nan_bits: u32,       // 0x7fc00000: NaN and -inf come from the uniforms, so that no
    neg_inf_bits: u32,   // shader compiler folds them away or rejects them as constants
}

@group(0) @binding(0) var<uniform> p: Params;

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

fn f16_bits_to_f32(h: u32) -> f32 {
    let sign = (h & 0x8000u) << 16u;
    let exponent = (h >> 10u) & 0x1fu;
    let mantissa = h & 0x3ffu;
    if exponent == 0u {
        // Subnormal or zero: mantissa · 2^-24 is exact in f32.
        let magnitude = f32(mantissa) * 5.9604645e-8;
        return bitcast<f32>(sign | bitcast<u32>(magnitude));
    }
    if exponent == 31u {
        return bitcast<f32>(sign | 0x7f800000u | (mantissa << 13u));
    }
    return bitcast<f32>(sign | ((exponent + 112u) << 23u) | (mantissa << 13u));
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

// f32 to f16 bits, rounding to nearest even (pack2x16float leaves the rounding open).
fn f32_to_f16_bits(x: f32) -> u32 {
    let bits = bitcast<u32>(x);
    let sign = (bits >> 16u) & 0x8000u;
    let exponent = i32((bits >> 23u) & 0xffu);
    let mantissa = bits & 0x7fffffu;
    if exponent == 255 {
        return sign | 0x7c00u | select(0u, 0x200u, mantissa != 0u);
    }
    let e = exponent - 112; // rebias 127 -> 15
    if e >= 31 {
        return sign | 0x7c00u;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        let full = mantissa | 0x800000u;
        let shift = u32(14 - e);
        let kept = full >> shift;
        let rest = full & ((1u << shift) - 1u);
        let halfway = 1u << (shift - 1u);
        let up = rest > halfway || (rest == halfway && (kept & 1u) == 1u);
        return sign | (kept + select(0u, 1u, up));
    }
    let kept = mantissa >> 13u;
    let rest = mantissa & 0x1fffu;
    let up = rest > 0x1000u || (rest == 0x1000u && (kept & 1u) == 1u);
    // A carry out of the mantissa steps the exponent, up to infinity: still correct.
    return (sign | (u32(e) << 10u) | kept) + select(0u, 1u, up);
}

// f32 to bf16 bits, rounding to nearest even; NaN stays a quiet NaN.
fn f32_to_bf16_bits(x: f32) -> u32 {
    let bits = bitcast<u32>(x);
    if (bits & 0x7fffffffu) > 0x7f800000u {
        return (bits >> 16u) | 0x40u;
    }
    return (bits + 0x7fffu + ((bits >> 16u) & 1u)) >> 16u;
}

fn encode_half(x: f32) -> u32 {
    if ELEM == ELEM_F16 {
        return f32_to_f16_bits(x);
    }
    return f32_to_bf16_bits(x);
}

// The score from a dot product: σ·(q·k), then the softcap c·tanh(s/c) when one is set.
fn finish_score(qk: f32) -> f32 {
    let s = p.scale * qk;
    if p.softcap > 0.0 {
        return p.softcap * tanh(s / p.softcap);
    }
    return s;
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

// Number of keys row i sees: all of them, or j <= i + Nk - Nq under the bottom-right causal
// mask (a prefix of the keys, possibly empty).
fn visible_keys(i: u32) -> u32 {
    if !CAUSAL {
        return p.kv_len;
    }
    let reach = i + 1u + p.kv_len;
    if reach <= p.q_len {
        return 0u;
    }
    return min(reach - p.q_len, p.kv_len);
}
