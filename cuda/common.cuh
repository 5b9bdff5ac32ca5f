// outlier-attn CUDA backend: what every kernel shares.
//
// The host prepends the specialisation defines (ELEM_F32 | ELEM_F16 | ELEM_BF16 and, for the
// tensor-core kernel, HEAD_DIM_TILE) and the launch geometry (kHost* constants, written by
// src/cuda/spec.rs), and concatenates this file with the kernel files; no
// CUDA header is included, so libnvrtc alone compiles it. Conversions go through PTX.
//
// Everything that costs nothing measurable at run time (variant, mask, softcap, scale, gate,
// strides) is a field of AttnParams, not a define: the specialisation list stays small.

typedef unsigned long long u64;

#define DEVICE __device__ __forceinline__

// Memory spaces. On the GPU these are plain pointers; the emulator (cuda/emu, OUTLIER_ATTN_EMU)
// defines them as pointers that check every access against the buffer or shared array they
// point into, so every pointer to global or shared memory is declared with one of them.
//   gmem_ptr<T>       global memory (the buffers in AttnParams and pointers derived from them)
//   smem_ptr<T>       shared memory (smem_cast / gmem_cast reinterpret either kind)
//   dynamic_smem<T>() the block's dynamic shared memory (extern __shared__)
//   STATIC_SMEM(T, name, count)  a static __shared__ T name[count]
#if !defined(OUTLIER_ATTN_EMU)
template <class T>
using gmem_ptr = T*;
template <class T>
using smem_ptr = T*;
template <class T, class U>
DEVICE T* smem_cast(U* p) { return reinterpret_cast<T*>(p); }
template <class T, class U>
DEVICE T* gmem_cast(U* p) { return reinterpret_cast<T*>(p); }
template <class T>
DEVICE T* dynamic_smem() {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    return reinterpret_cast<T*>(smem_raw);
}
#define STATIC_SMEM(type, name, count) \
    __shared__ type name##_array[count]; \
    type* const name = name##_array
#endif

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kWarpSize = 32;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// std::conditional, without the standard headers.
template <bool kCond, class T, class F>
struct type_if {
    using type = T;
};
template <class T, class F>
struct type_if<false, T, F> {
    using type = F;
};

DEVICE float neg_inf() { return __uint_as_float(0xff800000u); }
DEVICE float pos_inf() { return __uint_as_float(0x7f800000u); }
DEVICE float quiet_nan() { return __uint_as_float(0x7fc00000u); }

// ---------------------------------------------------------------------------------------------
// Element type: the dtype of Q, K, V, O and the gate z. 16-bit types travel as raw bits.
// ---------------------------------------------------------------------------------------------
#if defined(ELEM_F32)
typedef float elem_t;
DEVICE float to_float(elem_t x) { return x; }
DEVICE elem_t from_float(float x) { return x; }
#elif defined(ELEM_F16)
typedef unsigned short elem_t;
DEVICE float to_float(elem_t x) {
#if defined(OUTLIER_ATTN_EMU)
    return emu::cvt_f32_f16(x);
#else
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x));
    return f;
#endif
}
DEVICE elem_t from_float(float x) {
#if defined(OUTLIER_ATTN_EMU)
    return emu::cvt_rn_f16_f32(x);
#else
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(x));
    return h;
#endif
}
#elif defined(ELEM_BF16)
typedef unsigned short elem_t;
DEVICE float to_float(elem_t x) { return __uint_as_float(((unsigned)x) << 16); }
// Round to nearest even in integer arithmetic, so that GPUs without cvt.rn.bf16 run it too.
DEVICE elem_t from_float(float x) {
    unsigned u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (elem_t)0x7fc0u;  // NaN stays NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return (elem_t)(u >> 16);
}
#else
#error "define one of ELEM_F32, ELEM_F16, ELEM_BF16"
#endif

// ---------------------------------------------------------------------------------------------
// The kernel arguments. Mirrored field for field by `KernelParams` in src/cuda/params.rs, whose
// test checks the size; keep the two in the same order.
// ---------------------------------------------------------------------------------------------
enum VariantCode : int {
    kSoftmax = 0,
    kValueBias = 1,
    kContextBias = 2,
    kKvSink = 3,
    kContextScale = 4,
    kSigmoid = 5,
    kLogitSink = 6,
    kSoftmax1 = 7,
    kClippedSoftmax = 8,
};

enum GateCode : int { kGateTwoSigmoid = 0, kGateSigmoid = 1, kGateIdentity = 2 };

struct TensorLayout {
    u64 offset, batch, seq, head;  // elements; channels are contiguous
};

struct AttnParams {
    gmem_ptr<const elem_t> q;
    gmem_ptr<const elem_t> k;
    gmem_ptr<const elem_t> v;
    gmem_ptr<elem_t> o;
    gmem_ptr<float> lse;                // [B, Hq, Nq]
    gmem_ptr<const float> k_sink;       // [Hq, d] (ContextBias, KvSink)
    gmem_ptr<const float> v_param;      // [Hq, d] v' of ContextBias/KvSink or the bias of ValueBias
    gmem_ptr<const float> sink_logits;  // [Hq] (LogitSink)
    gmem_ptr<const elem_t> gate;        // [B, Nq, Hq] or [B, Nq, Hq, d] (ContextScale)
    gmem_ptr<float> stats;              // [B, Hq, kStatCount]
    gmem_ptr<float> key_mass;           // [B, Hq, Nk]
    gmem_ptr<float> partials;           // workspace [B, Hq, part_count, part_record]: each block's statistics
    gmem_ptr<float> row_records;        // workspace [B, Hq, Nq, kRowRecord] (HeadsAndKeys): for key_mass
    TensorLayout lq, lk, lv, lo;
    int batch, q_heads, kv_heads, q_len, kv_len, head_dim;
    int group;       // Hq / Hkv
    int variant;     // VariantCode
    int causal;      // 1: bottom-right causal mask
    int has_softcap;
    int gate_kind;   // GateCode
    int gate_per_channel;
    int aligned;     // 1: every row of Q/K/V starts 16-byte aligned, so cp.async may be used
    int m_blocks;    // query blocks per head in the forward kernel
    int o_aligned;   // 1: every row of O starts 4-byte aligned, so two channels go in one 32-bit store
    float scale, softcap, sigmoid_bias, clip_zeta, clip_gamma;
    int stats_on;    // 1: Heads or HeadsAndKeys (uniform branches, not a specialisation)
    int part_record; // floats of one block's partial record: kPartialCount + kChannelTensors·d
    // Decode (see "Split-KV decode" below).
    gmem_ptr<float> split_partials;  // workspace [B, Hq, Nq, splits, split_record]: each split's rows
    int fold;        // query heads per forward block: 1, or Hq/Hkv with a GQA group's rows in one tile
    int q_rows;      // rows of a head block: fold·Nq, row r = (query r / fold, head r % fold of the block)
    int splits;      // key splits per row (1: the forward kernel finishes its rows itself)
    int tiles_per_split;  // K/V tiles of one split
    int part_count;  // partial statistics records per head: m_blocks·splits, + combine blocks when split
    int split_record;  // floats of one row's split partial: kSplitScalars + d
};
static_assert(sizeof(AttnParams) == 352, "KernelParams in src/cuda/params.rs mirrors this");

// Statistics record, in Stat::ALL order (src/contract/stats.rs).
enum StatIndex : int {
    kFirstKeyMass = 0, kSinkMass, kMaxScore, kMeanEntropy,
    kQAbsMax, kQAbsMean, kQArgmax, kKAbsMax, kKAbsMean, kKArgmax,
    kVAbsMax, kVAbsMean, kV0NormRatio, kGateMin, kGateMean, kGateMax, kRowMassMean,
    kStatCount
};

// What one query block of the forward kernel contributes to its head's record; combined in
// block order by the finalize kernel, so that the statistics are deterministic. The sums of the
// channel statistics come after the row statistics: |q| over the block's rows, and |k|, |v|,
// ‖v_j‖, ‖v_0‖ over the K/V tiles the block owns (`kv_tile_owner`).
enum PartialIndex : int {
    kPartRows = 0, kPartFirstKey, kPartSink, kPartEntropy, kPartRowMass, kPartMaxScore,
    kPartGateMin, kPartGateMax, kPartGateSum, kPartGateCount,
    kPartQAbsSum, kPartKAbsSum, kPartVAbsSum, kPartVNormSum, kPartVNorm0,
    kPartialCount
};
static_assert(kPartialCount == kHostPartialCount, "the host sizes the workspace for this record");
// A block's whole record (p.part_record floats, from the host): the fields above, then the
// largest |x| of each of the d channels of Q, then of K, then of V.
constexpr int kMaxHeadDim = 256;
enum ChannelTensor : int { kTensorQ = 0, kTensorK, kTensorV, kChannelTensors };
static_assert(kChannelTensors == kHostChannelTensors, "the host sizes the record for these");
DEVICE int channel_max_field(const AttnParams& p, int tensor) { return kPartialCount + tensor * p.head_dim; }
// What key_mass reads of each row the forward pass finished: the max the row was normalised
// with (log2 units on the fast path, natural units on the generic one), 1/l, and W of
// ClippedSoftmax.
enum RowRecordIndex : int { kRowMax = 0, kRowInvL, kRowWeightSum, kRowRecord };
static_assert(kRowRecord == kHostRowRecord, "the host sizes the workspace for this record");

// Record `index` of head bh: forward block (m_block, split) writes record m_block·splits + split,
// combine block c (split-KV only) record m_blocks·splits + c.
DEVICE gmem_ptr<float> partial_record(const AttnParams& p, int bh, int index) {
    return p.partials + ((u64)bh * p.part_count + index) * p.part_record;
}

// The softmax family without softcap: the tensor-core fast path (src/cuda/spec.rs,
// `Specialization::forward_entry`, makes the same choice).
DEVICE bool takes_fast_path(const AttnParams& p) {
    return !p.has_softcap && p.variant != kSigmoid && p.variant != kClippedSoftmax;
}

DEVICE bool has_sink(int variant) {
    return variant == kContextBias || variant == kKvSink || variant == kLogitSink || variant == kSoftmax1;
}
// Whether the sink sits in the softmax denominator (ContextBias's does not).
DEVICE bool sink_in_denominator(int variant) {
    return variant == kKvSink || variant == kLogitSink || variant == kSoftmax1;
}
// Whether O accumulates the online-softmax probabilities (and so is rescaled as the max moves).
// Sigmoid and the second pass of ClippedSoftmax apply weights that need no running max.
DEVICE bool accumulates_softmax(int variant) { return variant != kSigmoid && variant != kClippedSoftmax; }

DEVICE float sigmoidf(float z) { return 1.f / (1.f + expf(-z)); }
DEVICE float log_sigmoid_inline(float z) { return z >= 0.f ? -log1pf(expf(-z)) : z - log1pf(expf(z)); }
// Out of line in the forward kernels: it only serves Sigmoid, and inlined per score it
// triples the compile time. (The key-mass kernel inlines it: a call there costs spills.)
__device__ __noinline__ float log_sigmoidf(float z) { return log_sigmoid_inline(z); }

DEVICE float gate_factor(int kind, float z) {
    return kind == kGateTwoSigmoid ? 2.f * sigmoidf(z) : (kind == kGateSigmoid ? sigmoidf(z) : z);
}

// c·tanh(s/c); out of line, so that the softcap costs no code size per score.
DEVICE float softcap_inline(float s, float c) { return c * tanhf(s / c); }
__device__ __noinline__ float softcapped(float s, float c) { return softcap_inline(s, c); }

// s = σ·(q·k), softcapped (kInline: without a call).
template <bool kInline = false>
DEVICE float score_of(float dot, const AttnParams& p) {
    float s = dot * p.scale;
    if (p.has_softcap) s = kInline ? softcap_inline(s, p.softcap) : softcapped(s, p.softcap);
    return s;
}

// The last key row i sees, plus one: Nk, or i + 1 + (Nk - Nq) under the bottom-right causal
// mask (<= 0: the row sees no key).
DEVICE int key_end(const AttnParams& p, int row) {
    if (!p.causal) return p.kv_len;
    long long end = (long long)row + 1 + p.kv_len - p.q_len;
    return (int)(end < 0 ? 0 : (end > p.kv_len ? p.kv_len : end));
}

// The sink's term e^{x_sink − m} at m = x_sink, where a row starts: 1; NaN for x_sink = +inf
// or NaN (e^{inf − inf}, as the reference has it); 0 for −inf, which then leaves m to the
// keys (a row that sees none is finished as NaN by finish_row, as the reference's
// e^{−inf − (−inf)}).
DEVICE float sink_term(float x_sink) { return x_sink == neg_inf() ? 0.f : x_sink - x_sink + 1.f; }

// ---------------------------------------------------------------------------------------------
// Online softmax of one query row, with the running sums the statistics need.
//
// The normaliser runs over "logits" x: the scores for the softmax family, log sigmoid(s + β)
// for Sigmoid (whose LSE and statistics live in the log domain, see src/reference.rs). A thread
// holds partial sums over the keys it sees; the running max m is kept equal across the threads
// of a row, and `reduce` adds the partial sums at the end.
//   l  = Σ e^{x−m}            (the sink's term included where it is in the denominator)
//   t  = Σ e^{x−m}·(x−m)      entropy = ln l − t/l, without the cancellation of L − E[x]
//   e0 = e^{x_0−m}            key 0, for first_key_mass
//   es = e^{x_sink−m}         the sink's term, for sink_mass
// ClippedSoftmax's second pass accumulates instead W = Σ w, Σ w ln w and w_0.
// ---------------------------------------------------------------------------------------------
struct OnlineRow {
    float m;          // running max of x; −inf while nothing is seen
    float l, t, e0, es;
    float weight_sum;  // Σ applied weights: Sigmoid's row mass, ClippedSoftmax's W
    float w_log_w, w0;
    float max_score;   // max visible s (statistics)

    DEVICE void init() {
        m = neg_inf();
        l = t = e0 = es = 0.f;
        weight_sum = w_log_w = w0 = 0.f;
        max_score = neg_inf();
    }

    // Starts the row at the sink, as one more key seen first: m = x_sink, its term
    // sink_term(x_sink). `owner` is the one thread of the row that holds the sink's share of
    // the partial sums.
    DEVICE void init_sink(float x_sink, bool owner) {
        m = x_sink;
        if (owner) l = es = sink_term(x_sink);
    }

    // Moves the running max to m_new (>= m) and returns the factor that rescales what was
    // accumulated so far. A row with m_new = −inf has seen nothing: nothing moves.
    DEVICE float rescale(float m_new) {
        if (m_new == neg_inf()) return 1.f;
        if (m == neg_inf()) {  // first visible key: the sums are still zero
            m = m_new;
            return 0.f;
        }
        float shift = m - m_new;
        float alpha = exp2f(shift * kLog2e);
        t = alpha * (t + shift * l);
        l *= alpha;
        e0 *= alpha;
        es *= alpha;
        m = m_new;
        return alpha;
    }

    // The reference point for e^{x−m}: 0 when the row has seen nothing, so masked −inf gives 0.
    DEVICE float m_ref() const { return m == neg_inf() ? 0.f : m; }

    // Adds one key of logit x (−inf when masked); returns e^{x−m}.
    DEVICE float add(float x, bool stats) {
        float e = exp2f((x - m_ref()) * kLog2e);
        l += e;
        // e = 0: skip 0·(−inf). A NaN e is skipped too, but it has made l NaN.
        if (stats && e > 0.f) t += e * (x - m_ref());
        return e;
    }

    // Key 0's share, once per row rather than a test per score: `l0` its logit, `w0_applied`
    // the weight ClippedSoftmax's second pass gave it.
    DEVICE void add_key0(float l0, float w0_applied, bool clip_pass) {
        if (clip_pass) w0 += w0_applied;
        else e0 += exp2f((l0 - m_ref()) * kLog2e);
    }
};

// Sum over the `lanes` threads sharing a row (a quad in the mma layout, a warp in SIMT):
// a fixed butterfly, so the result is deterministic and the same in every lane.
template <int lanes>
DEVICE float row_sum(float x) {
#pragma unroll
    for (int off = 1; off < lanes; off <<= 1) x += __shfl_xor_sync(kFullMask, x, off);
    return x;
}
template <int lanes>
DEVICE float row_max(float x) {
#pragma unroll
    for (int off = 1; off < lanes; off <<= 1) x = fmaxf(x, __shfl_xor_sync(kFullMask, x, off));
    return x;
}
template <int lanes>
DEVICE float row_min(float x) {
#pragma unroll
    for (int off = 1; off < lanes; off <<= 1) x = fminf(x, __shfl_xor_sync(kFullMask, x, off));
    return x;
}

template <int lanes>
DEVICE void reduce_row(OnlineRow& r) {
    r.l = row_sum<lanes>(r.l);
    r.t = row_sum<lanes>(r.t);
    r.e0 = row_sum<lanes>(r.e0);
    r.es = row_sum<lanes>(r.es);
    r.weight_sum = row_sum<lanes>(r.weight_sum);
    r.w_log_w = row_sum<lanes>(r.w_log_w);
    r.w0 = row_sum<lanes>(r.w0);
    r.max_score = row_max<lanes>(r.max_score);
}

// The score of the sink for ContextBias/KvSink (s' = σ·q·k', softcapped), θ for LogitSink,
// 0 for Softmax1. `dot` is q·k' where the variant has a sink key.
DEVICE float sink_logit(const AttnParams& p, int h, float dot) {
    switch (p.variant) {
        case kContextBias:
        case kKvSink: return score_of(dot, p);
        case kLogitSink: return p.sink_logits[h];
        default: return 0.f;
    }
}

// What the end of a row needs to finish O and its statistics.
struct RowResult {
    float out_scale;     // O = acc · out_scale (+ bias) (· γ)
    float bias_scale;    // times v' (ValueBias: 1, ContextBias: 1 − S, else 0)
    float lse;
    bool counted;        // the row enters the statistics
    float first_key, sink_mass, entropy, row_mass;
    float inv_l;         // 1/l, for the key-mass record
};

// 1/l of a row's sum, 0 for an empty row (l = 0). Written `l == 0` rather than `l > 0`
// throughout, so that a NaN sum (NaN in Q, K or V) stays NaN as in the reference.
DEVICE float inv_or_zero(float l) { return l == 0.f ? 0.f : 1.f / l; }

// x clipped to [0, 1], NaN kept (fminf/fmaxf would drop it), as the reference clips.
DEVICE float clip01(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }

// `r` is reduced; `sees_key`: the row sees at least one key; `x_sink` the sink's logit.
DEVICE RowResult finish_row(const AttnParams& p, const OnlineRow& r, bool sees_key, float x_sink) {
    RowResult out;
    const int variant = p.variant;
    // l = 0 where the row should have a term: a row with no key whose sink logit is −inf, or
    // a row whose every visible score is −inf (infinite inputs): e^{−inf − (−inf)} = NaN in
    // the reference. (ClippedSoftmax's second pass gives such a row zero weights: not done.)
    const bool should_sum = sees_key ? variant != kClippedSoftmax : sink_in_denominator(variant);
    const float l = should_sum && r.l == 0.f ? quiet_nan() : r.l;
    out.lse = l == 0.f ? neg_inf() : r.m + logf(l);
    out.counted = sees_key || has_sink(variant);
    out.bias_scale = variant == kValueBias ? 1.f : 0.f;
    const float inv_l = inv_or_zero(l);
    out.inv_l = inv_l;
    // O sums over the keys (KvSink: and v′, its accumulator's start): a row that sees none
    // has O = 0 (KvSink: the sink's share of v′) even where l is NaN.
    out.out_scale = accumulates_softmax(variant) ? (sees_key || variant == kKvSink ? inv_l : 0.f) : 1.f;
    // A row that sees no key puts exactly 0 on key 0 and on the keys, whatever l is.
    out.first_key = sees_key ? r.e0 * inv_l : 0.f;
    out.sink_mass = r.es * inv_l;  // 0/l: NaN with l, as the reference's share
    out.entropy = l == 0.f ? 0.f : logf(l) - r.t * inv_l;
    out.row_mass = sees_key ? (l - r.es) * inv_l : 0.f;
    if (variant == kContextBias) {
        // 1 − S = e^{s'} / (e^{s'} + Σ e^s): the share the sink would take; 1 with no key
        // (l = 0, m = −inf: e^{s'} / e^{s'}), NaN for an infinite s' as in the reference.
        const float mm = fmaxf(r.m, x_sink);
        const float e_sink = exp2f((x_sink - mm) * kLog2e);
        const float one_minus_s = e_sink / (e_sink + r.l * exp2f((r.m - mm) * kLog2e));
        out.bias_scale = one_minus_s;
        out.sink_mass = one_minus_s;
    } else if (variant == kSigmoid) {
        out.row_mass = r.weight_sum;
        out.sink_mass = 0.f;  // no sink, whatever l is (the reference's 0)
    } else if (variant == kClippedSoftmax) {
        // The statistics describe w / W; all zeros when W = 0. (sink_mass stays 0/l: 0, or
        // NaN with a NaN first pass, as the reference's share.)
        float W = r.weight_sum;
        out.row_mass = W;
        out.first_key = W == 0.f ? 0.f : r.w0 / W;
        out.entropy = W == 0.f ? 0.f : logf(W) - r.w_log_w / W;
    }
    return out;
}

// The outputs of a finished row besides O: its LSE and, with HeadsAndKeys, the record the
// key-mass kernel reads (`row_max` in the units of the path that ran the row).
DEVICE void write_row_outputs(const AttnParams& p, int bh, int row, const RowResult& res, float row_max,
                              float weight_sum) {
    p.lse[(u64)bh * p.q_len + row] = res.lse;
    if (p.row_records) {
        const gmem_ptr<float> rec = p.row_records + ((u64)bh * p.q_len + row) * kRowRecord;
        rec[kRowMax] = row_max;
        rec[kRowInvL] = res.inv_l;
        rec[kRowWeightSum] = weight_sum;
    }
}

// Channel c of O of a finished row of head h from its accumulated value: the variant's scale,
// bias and (ContextScale) gate factor γ.
DEVICE float output_channel(const AttnParams& p, const RowResult& res, float acc, int h, int c, float gamma) {
    float val = acc * res.out_scale;
    if (res.bias_scale != 0.f) val += res.bias_scale * p.v_param[h * p.head_dim + c];
    return p.variant == kContextScale ? val * gamma : val;
}

// ---------------------------------------------------------------------------------------------
// Split-KV decode. With p.splits > 1 the key tiles of every row are cut into splits of
// p.tiles_per_split tiles, the same cut for every row (tile n lies in split n / tiles_per_split),
// and forward block (m_block, split) runs the online softmax over its split only. Instead of
// finishing its rows it writes, per row, the state below and its unnormalised O (the sink is
// counted by split 0 alone); `combine_splits` (cuda/combine.cu) merges the splits of each row in
// split order and finishes the row as the forward kernel would have. The max and t stay in the
// units of the path that ran the row (log2 on the tensor-core fast path, natural on the generic
// one), so that the merged max is the unsplit kernel's, bit for bit.
// A split that sees no key of a row (a mask, a window) leaves max −inf, sums 0 and O 0 (or the
// sink alone, in split 0): the combine gives it weight 0 without forming (−inf) − (−inf).
// ---------------------------------------------------------------------------------------------
enum SplitScalar : int {
    kSplitMax = 0, kSplitL, kSplitT, kSplitE0, kSplitEs, kSplitMaxScore, kSplitSinkLogit, kSplitWeightSum,
    kSplitScalars
};
static_assert(kSplitScalars == kHostSplitScalars, "the host sizes the split partials for this record");

// Split `split` of row `row` of head bh: kSplitScalars floats, then the d channels of O.
DEVICE gmem_ptr<float> split_partial(const AttnParams& p, int bh, int row, int split) {
    return p.split_partials + (((u64)bh * p.q_len + row) * p.splits + split) * p.split_record;
}

// The probability of a visible key of logit x in a finished row `st`, as the statistics
// define it: e^{x−m}/l (`inv_l` = 1/l), and for ClippedSoftmax w/W with the clipped weight w
// computed exactly as its second pass applies it. The caller gives masked keys 0; a logit of
// −inf (from an infinite input) gives 0, or NaN where the row's l or m is not finite, as in
// the reference.
DEVICE float key_probability(const AttnParams& p, const OnlineRow& st, float x, float inv_l) {
    const float prob = exp2f((x - st.m) * kLog2e) * inv_l;
    if (p.variant != kClippedSoftmax) return prob;
    const float w = clip01((p.clip_zeta - p.clip_gamma) * prob + p.clip_gamma);
    return st.weight_sum == 0.f ? 0.f : w / st.weight_sum;
}

// w ln w (0 for w = 0, NaN for NaN); out of line, as it serves one variant only.
__device__ __noinline__ float w_log_w(float w) { return w == 0.f ? 0.f : w * logf(w); }

// The weight key j gets in O, after `rescale` has moved the row to this tile's max; `l` is
// the key's logit (−inf when masked). Accumulates the row's sums on the way.
DEVICE float key_weight(OnlineRow& st, const AttnParams& p, float l, bool clip_pass, float inv_l) {
    if (clip_pass) {
        // ClippedSoftmax, second pass: m and l are final, p = e^{x−m}/l is exact.
        if (l == neg_inf()) return 0.f;
        float prob = exp2f((l - st.m) * kLog2e) * inv_l;
        float w = clip01((p.clip_zeta - p.clip_gamma) * prob + p.clip_gamma);
        st.weight_sum += w;
        if (p.stats_on) st.w_log_w += w_log_w(w);
        return w;
    }
    float e = st.add(l, p.stats_on);
    if (p.variant == kSigmoid) {
        // l = ln sigmoid(s + β) <= 0: the applied weight needs no running max.
        float w = exp2f(l * kLog2e);
        st.weight_sum += w;
        return w;
    }
    return e;
}

// The logit the normaliser runs over for score x (−inf stays −inf; kInline: without a call).
template <bool kInline = false>
DEVICE float logit_of(const AttnParams& p, float x) {
    if (p.variant != kSigmoid || x == neg_inf()) return x;
    return kInline ? log_sigmoid_inline(x + p.sigmoid_bias) : log_sigmoidf(x + p.sigmoid_bias);
}

// A square root for the statistics (norms): sqrt.approx, a few ulp off at most, where sqrtf's
// correctly rounded slow path is a call in the middle of the main loop.
DEVICE float sqrt_approx(float x) {
#if defined(OUTLIER_ATTN_EMU)
    return emu::sqrt_approx_f32(x);
#else
    float r;
    asm("sqrt.approx.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
#endif
}

// Index of [b, n, h, 0] in a tensor, in 64 bits.
DEVICE u64 row_offset(const TensorLayout& l, int b, long long n, int h) {
    return l.offset + (u64)b * l.batch + (u64)n * l.seq + (u64)h * l.head;
}

// The applied gate factor γ of (row, channel); `c` is ignored per head.
DEVICE float gate_at(const AttnParams& p, int b, int row, int h, int c) {
    u64 token = ((u64)b * p.q_len + row) * p.q_heads + h;
    u64 idx = p.gate_per_channel ? token * p.head_dim + c : token;
    return gate_factor(p.gate_kind, to_float(p.gate[idx]));
}

// Block statistics: each thread adds its rows' contributions (and its share of the channel
// sums) here, then `write_partials` combines the warps in a fixed order.
struct BlockStats {
    float rows, first_key, sink, entropy, row_mass, max_score, gate_min, gate_max, gate_sum, gate_count;
    float q_abs, k_abs, v_abs, v_norm, v_norm0;
    DEVICE void init() {
        rows = first_key = sink = entropy = row_mass = 0.f;
        max_score = neg_inf();
        gate_min = pos_inf();
        gate_max = neg_inf();
        gate_sum = gate_count = 0.f;
        q_abs = k_abs = v_abs = v_norm = v_norm0 = 0.f;
    }
    DEVICE void add_row(const RowResult& rr, float max_score_row) {
        rows += 1.f;
        first_key += rr.first_key;
        sink += rr.sink_mass;
        entropy += rr.entropy;
        row_mass += rr.row_mass;
        max_score = fmaxf(max_score, max_score_row);
    }
    DEVICE void add_gate(float g) {
        gate_min = fminf(gate_min, g);
        gate_max = fmaxf(gate_max, g);
        gate_sum += g;
        gate_count += 1.f;
    }
};

// Reduces every thread's BlockStats and writes fields [0, kPartialCount) of the block's partial
// record. `scratch` holds kPartialCount floats per warp and may alias memory the block read
// before; every thread of the block must call this.
template <int kWarps>
DEVICE void write_partials(const AttnParams& p, BlockStats s, smem_ptr<float> scratch, int bh, int m_block) {
    __syncthreads();
    float v[kPartialCount] = {s.rows,     s.first_key, s.sink,     s.entropy,  s.row_mass,
                              s.max_score, s.gate_min, s.gate_max, s.gate_sum, s.gate_count,
                              s.q_abs,    s.k_abs,     s.v_abs,    s.v_norm,   s.v_norm0};
#pragma unroll
    for (int f = 0; f < kPartialCount; ++f) {
        if (f == kPartMaxScore || f == kPartGateMax) v[f] = row_max<kWarpSize>(v[f]);
        else if (f == kPartGateMin) v[f] = row_min<kWarpSize>(v[f]);
        else v[f] = row_sum<kWarpSize>(v[f]);
    }
    const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
    if (lane == 0) {
#pragma unroll
        for (int f = 0; f < kPartialCount; ++f) scratch[warp * kPartialCount + f] = v[f];
    }
    __syncthreads();
    if (threadIdx.x < kPartialCount) {
        const int f = threadIdx.x;
        float acc = scratch[f];
        for (int w = 1; w < kWarps; ++w) {
            float x = scratch[w * kPartialCount + f];
            if (f == kPartMaxScore || f == kPartGateMax) acc = fmaxf(acc, x);
            else if (f == kPartGateMin) acc = fminf(acc, x);
            else acc += x;
        }
        partial_record(p, bh, m_block)[f] = acc;
    }
}

// ---------------------------------------------------------------------------------------------
// Channel statistics of K and V, fused into the forward pass: each K/V tile of kv head g is
// counted once, by one block of the first query head of its group (h = g·group) that loads the
// tile anyway. The blocks that load tile n are m >= first(n): all of them without a mask, and
// under the causal mask those whose last row sees key n·block_n (rows from n·block_n + Nq − Nk
// on). The tiles are dealt round robin among them, so that no block takes many.
// This relies on the last query block loading every tile (its last row sees all Nk keys under
// None and Causal); a mask that lets blocks skip tiles must revisit it.
// ---------------------------------------------------------------------------------------------
DEVICE int kv_tile_owner(const AttnParams& p, int n, int block_m, int block_n) {
    int first = 0;
    if (p.causal) {
        const long long r = (long long)n * block_n + p.q_len - p.kv_len;  // the first row that sees the tile
        first = r < 0 ? 0 : (int)(r / block_m);
    }
    return first + n % (p.m_blocks - first);
}

// Whether this block counts the channel statistics of K/V tile n.
DEVICE bool scans_kv_tile(const AttnParams& p, int h, int m_block, int n, int block_m, int block_n) {
    return p.stats_on && h % p.group == 0 && kv_tile_owner(p, n, block_m, block_n) == m_block;
}
