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
    int causal;      // 1: bottom-right causal mask (informational: the kernels read window_left/right)
    int has_softcap;
    int gate_kind;   // GateCode
    int gate_per_channel;
    int aligned;     // 1: every row of Q/K/V starts 16-byte aligned, so cp.async may be used
    int m_blocks;    // query blocks per head in the forward kernel
    int o_aligned;   // 1: every row of O starts 4-byte aligned, so two channels go in one 32-bit store
    float scale, softcap, sigmoid_bias, clip_zeta, clip_gamma;
    int stats_on;    // 1: Heads or HeadsAndKeys (uniform branches, not a specialisation)
    int part_record; // floats of one block's partial record: kPartialCount + kChannelTensors·d
    // Engine-shaped calls (DESIGN.md section 6): the index tensors (null where the layout reads
    // none), the parameters' own layouts, and the sequence layout (`SeqSpan` below reads them).
    gmem_ptr<const int> cu_seqlens_q;   // [B + 1]: packed Q
    gmem_ptr<const int> cu_seqlens_k;   // [B + 1]: packed K/V
    gmem_ptr<const int> seqlens_k;      // [B]: dense K/V with lengths, paged K/V
    gmem_ptr<const int> block_table;    // [B, max_pages]: paged K/V
    TensorLayout lgate;                 // z as [B, Nq, Hq, w] (packed: [1, total_q, Hq, w])
    TensorLayout lk_sink, lv_param, lsink;  // k', v' (or the bias), θ as [1, 1, Hq, w]
    int q_seqs;      // QuerySeqsCode
    int kv_seqs;     // KvSeqsCode
    int q_total;     // rows of packed Q (total_q)
    int kv_total;    // rows of packed K/V (total_k)
    int pages, page_size, max_pages;  // paged K/V
    int window_left, window_right;    // keys seen before / after the diagonal; −1: unbounded
    int sigmoid_bias_per_seq;  // 1: Sigmoid's β is −ln Nk_b of each sequence (no bias given)
    int paged_tiles;           // 1: K/V tiles are evenly strided (spec.rs `strided_tiles`): one lookup per tile
    int pad;                   // a whole number of 8-byte words, as KernelParams spells it out
    // Decode (see "Split-KV decode" below).
    gmem_ptr<float> split_partials;  // workspace [B, Hq, Nq, splits, split_record]: each split's rows
    int fold;        // query heads per forward block: 1, or Hq/Hkv with a GQA group's rows in one tile
    int q_rows;      // fold·Nq: the rows the grid is sized for (a sequence has fold·Nq_b; row r is query
                     // r / fold of head r % fold of the block)
    int splits;      // key splits per row (1: the forward kernel finishes its rows itself)
    int tiles_per_split;  // K/V tiles of one split
    int part_count;  // partial statistics records per head: m_blocks·splits, + combine blocks when split
    int split_record;  // floats of one row's split partial: kSplitScalars + d
};
static_assert(sizeof(AttnParams) == 560, "KernelParams in src/cuda/params.rs mirrors this");

// ---------------------------------------------------------------------------------------------
// Sequences (DESIGN.md section 6): the one device-side map from (sequence, token) to a place,
// the counterpart of `SeqMap` in src/contract/seqs.rs. Every kernel takes its sequence from
// `seq_span` and every address of a Q/O/gate row, K/V row, LSE entry and key-mass entry from the
// functions below; no kernel computes one itself.
//
// A call holds B sequences (grid z); sequence b has Nq_b queries and Nk_b keys:
//   Q, O, gate  dense [B, Nq, H, ·]: query i at (b, i);  packed [total_q, H, ·] (outer 0):
//               at token cu_seqlens_q[b] + i
//   K, V        dense [B, Nk, Hkv, d]: key j at (b, j), Nk_b = Nk, or seqlens_k[b] with lengths;
//               packed [total_k, Hkv, d]: token cu_seqlens_k[b] + j;
//               paged [pages, page_size, Hkv, d]: page block_table[b, j / page_size], slot
//               j % page_size, Nk_b = seqlens_k[b]
//   LSE         [B, Hq, Nq] dense Q, [Hq, total_q] packed Q
//   key mass    [B, Hq, Nk] (0 past Nk_b), [Hq, total_k] packed K
//   statistics  [B, Hq, kStatCount]; the workspace's row records stay [B, Hq, Nq] (Nq the
//               longest sequence), whatever the layout.
// Shape fields of AttnParams (q_len, kv_len) are the longest sequences (the capacity of a dense
// cache with lengths): grids are sized from them and blocks past a sequence's end do nothing.
//
// Bad index tensors (crate docs, "Bad index tensors on the device"): every index read here is
// clamped into the buffers the kernel was given, so nothing outside them is read or written,
// and `SeqSpan::bad` says that the sequence used an entry that was out of range: the kernels
// then write its rows (O, LSE), its statistics record and its key mass as NaN instead.
// Cumulative lengths that are not a valid partition (`all_bad`) poison every sequence, and
// rows are then dealt over the grid by position (`for_each_poisoned_row`), since the table can
// no longer say which rows belong to whom.
// ---------------------------------------------------------------------------------------------
enum QuerySeqsCode : int { kQueriesDense = 0, kQueriesPacked = 1 };
enum KvSeqsCode : int { kKvDense = 0, kKvDenseWithLens = 1, kKvPacked = 2, kKvPaged = 3 };

struct SeqSpan {
    int b;
    int q_len, kv_len;      // Nq_b, Nk_b (clamped: q_len <= p.q_len, kv_len <= p.kv_len)
    int q_start, kv_start;  // first row of the sequence in packed Q / packed K (0 otherwise)
    float sigmoid_bias;     // β of Sigmoid for this sequence
    bool bad;               // the sequence read an index out of range: its outputs are NaN
    bool all_bad;           // the cumulative lengths are not a partition: every sequence is bad
};

DEVICE int clamp_int(long long x, long long lo, long long hi) { return (int)(x < lo ? lo : (x > hi ? hi : x)); }
DEVICE int ceil_div(int a, int b) { return (a + b - 1) / b; }

// Whether cumulative lengths `cu` [batch + 1] fail to partition `total` rows into sequences of
// at most `max_len`: start at 0, never decrease, end at `total`. Warp-collective (every lane of
// the warp calls it; the lanes share the entries and vote).
DEVICE bool cumulative_bad(gmem_ptr<const int> cu, int batch, int total, int max_len) {
    bool bad = false;
    for (int i = threadIdx.x % kWarpSize; i <= batch; i += kWarpSize) {
        const long long x = cu[i];
        if (i == 0) bad |= x != 0;
        else {
            const long long prev = cu[i - 1];
            bad |= x < prev || x - prev > max_len;
        }
        if (i == batch) bad |= x != total;
    }
    return __any_sync(kFullMask, bad);
}

// Physical page of logical page `page` of sequence b, clamped into [0, pages).
DEVICE int physical_page(const AttnParams& p, int b, int page) {
    return clamp_int(p.block_table[(u64)b * p.max_pages + page], 0, p.pages - 1);
}

// Sequence b of the call, with every index it reads checked. Warp-collective: every thread of
// the block calls it (each warp votes for itself; all warps get the same answer).
DEVICE SeqSpan seq_span(const AttnParams& p, int b) {
    SeqSpan s;
    s.b = b;
    s.q_len = p.q_len;
    s.kv_len = p.kv_len;
    s.q_start = s.kv_start = 0;
    s.all_bad = false;
    bool own_bad = false;  // an index of this sequence alone
    if (p.q_seqs == kQueriesPacked) {
        s.all_bad |= cumulative_bad(p.cu_seqlens_q, p.batch, p.q_total, p.q_len);
        s.q_start = clamp_int(p.cu_seqlens_q[b], 0, p.q_total);
        s.q_len = clamp_int(p.cu_seqlens_q[b + 1], s.q_start, p.q_total) - s.q_start;
        s.q_len = s.q_len > p.q_len ? p.q_len : s.q_len;
    }
    if (p.kv_seqs == kKvPacked) {
        s.all_bad |= cumulative_bad(p.cu_seqlens_k, p.batch, p.kv_total, p.kv_len);
        s.kv_start = clamp_int(p.cu_seqlens_k[b], 0, p.kv_total);
        s.kv_len = clamp_int(p.cu_seqlens_k[b + 1], s.kv_start, p.kv_total) - s.kv_start;
        s.kv_len = s.kv_len > p.kv_len ? p.kv_len : s.kv_len;
    } else if (p.kv_seqs == kKvDenseWithLens || p.kv_seqs == kKvPaged) {
        const int given = p.seqlens_k[b];
        s.kv_len = clamp_int(given, 0, p.kv_len);
        own_bad |= s.kv_len != given;
    }
    if (p.kv_seqs == kKvPaged) {
        // Every page the sequence uses, checked once here; `physical_page` clamps each lookup.
        bool bad_page = false;
        const int used = ceil_div(s.kv_len, p.page_size);
        for (int i = threadIdx.x % kWarpSize; i < used; i += kWarpSize) {
            const int e = p.block_table[(u64)b * p.max_pages + i];
            bad_page |= e < 0 || e >= p.pages;
        }
        own_bad |= __any_sync(kFullMask, bad_page);
    }
    s.bad = s.all_bad || own_bad;
    s.sigmoid_bias = p.sigmoid_bias_per_seq ? -logf((float)s.kv_len) : p.sigmoid_bias;
    return s;
}

// Element offset of query row i (sequence-relative) of head h in Q, O or the gate (layout l).
DEVICE u64 q_offset(const AttnParams& p, const TensorLayout& l, const SeqSpan& s, int i, int h) {
    const bool packed = p.q_seqs == kQueriesPacked;
    return l.offset + (packed ? 0 : (u64)s.b * l.batch) + (u64)(packed ? s.q_start + i : i) * l.seq + (u64)h * l.head;
}

// Where key j (sequence-relative, j < Nk_b) lies in K's and V's [outer, token] dims (the
// counterpart of SeqMap::kv_pos): one page lookup serves K and V alike.
struct KvPos {
    u64 outer, token;
};
DEVICE KvPos kv_pos(const AttnParams& p, const SeqSpan& s, int j) {
    KvPos at;
    at.outer = s.b;
    at.token = j;
    if (p.kv_seqs == kKvPacked) {
        at.outer = 0;
        at.token = (u64)s.kv_start + j;
    } else if (p.kv_seqs == kKvPaged) {
        at.outer = physical_page(p, s.b, j / p.page_size);
        at.token = j % p.page_size;
    }
    return at;
}
// Element offset of position `at`, kv head g, in K or V (layout l).
DEVICE u64 kv_at(const TensorLayout& l, const KvPos& at, int g) {
    return l.offset + at.outer * l.batch + at.token * l.seq + (u64)g * l.head;
}
DEVICE u64 kv_offset(const AttnParams& p, const TensorLayout& l, const SeqSpan& s, int j, int g) {
    return kv_at(l, kv_pos(p, s, j), g);
}

// The keys [n0, n0 + tile) of a K/V tile. In every layout but paged with a page size that is
// not a multiple of the tile they are evenly strided: key n0 + r at token first.token + r of
// the same outer index, looked up once per tile; otherwise (`contiguous` false) each key is
// looked up with kv_pos.
struct KvTile {
    KvPos first;
    bool contiguous;
};
DEVICE KvTile kv_tile(const AttnParams& p, const SeqSpan& s, int n0) {
    KvTile t;
    t.contiguous = p.kv_seqs != kKvPaged || p.paged_tiles;
    t.first.outer = t.first.token = 0;
    if (t.contiguous) t.first = kv_pos(p, s, n0);
    return t;
}
// Key n0 + r of tile t in K or V (layout l); kContiguous: the caller knows the tile is evenly
// strided (the tensor-core kernel `attention_tc`), so the per-key lookup is not even compiled
// in.
template <bool kContiguous = false>
DEVICE u64 kv_tile_row(const AttnParams& p, const TensorLayout& l, const SeqSpan& s, const KvTile& t, int n0, int r,
                       int g) {
    if (kContiguous || t.contiguous) return kv_at(l, t.first, g) + (u64)r * l.seq;
    return kv_offset(p, l, s, n0 + r, g);
}

// Index of query i of head h in the LSE.
DEVICE u64 lse_index(const AttnParams& p, const SeqSpan& s, int h, int i) {
    if (p.q_seqs == kQueriesPacked) return (u64)h * p.q_total + s.q_start + i;
    return ((u64)s.b * p.q_heads + h) * p.q_len + i;
}
// Index of key j of head h in the key mass.
DEVICE u64 key_mass_index(const AttnParams& p, const SeqSpan& s, int h, int j) {
    if (p.kv_seqs == kKvPacked) return (u64)h * p.kv_total + s.kv_start + j;
    return ((u64)s.b * p.q_heads + h) * p.kv_len + j;
}
// The workspace's record of query i of head h (`RowRecordIndex` fields follow).
DEVICE u64 row_record_index(const AttnParams& p, const SeqSpan& s, int h, int i) {
    return ((u64)s.b * p.q_heads + h) * p.q_len + i;
}

// The keys [begin, end) query i of a sequence sees: key j iff i + Nk − Nq − left <= j <= i +
// Nk − Nq + right (`Mask::key_range` in src/contract: bottom-right aligned per sequence; causal
// is right = 0). The one place the kernels learn a row's keys. In 32 bits: the host passes a
// side that reaches past every key as unbounded (left < Nk, right < Nq) and refuses Nq + Nk
// above 2^30, so no sum here overflows.
struct KeyRange {
    int begin, end;
};
DEVICE KeyRange key_range(const AttnParams& p, const SeqSpan& s, int i) {
    const int diagonal = i + s.kv_len - s.q_len;
    int end = s.kv_len;
    if (p.window_right >= 0) end = min(max(diagonal + p.window_right + 1, 0), s.kv_len);
    int begin = 0;
    if (p.window_left >= 0) begin = min(max(diagonal - p.window_left, 0), end);
    KeyRange r;
    r.begin = begin;
    r.end = end;
    return r;
}

// Which key tiles (of block_n keys) a block of query rows [row0, row0 + block_m) visits:
// [begin, end), of which [full_begin, full_end) every row of the block sees whole (no mask
// needed). A row's range moves right with the row, so the block's first and last rows bound
// them; tiles left of the first row's window are skipped, not masked. A block past the
// sequence's last query visits none.
struct KeyTiles {
    int begin, full_begin, full_end, end;
    DEVICE bool masked(int n) const { return n < full_begin || n >= full_end; }
};
DEVICE KeyTiles key_tiles(const AttnParams& p, const SeqSpan& s, int row0, int block_m, int block_n) {
    KeyTiles kt;
    kt.begin = kt.full_begin = kt.full_end = kt.end = 0;
    if (row0 >= s.q_len) return kt;
    const int last_row = min(row0 + block_m, s.q_len) - 1;
    const KeyRange first = key_range(p, s, row0), last = key_range(p, s, last_row);
    kt.begin = first.begin / block_n;
    kt.end = ceil_div(last.end, block_n);
    if (kt.end < kt.begin) kt.end = kt.begin;
    kt.full_begin = ceil_div(last.begin, block_n);
    kt.full_end = first.end / block_n;
    return kt;
}

// Tiles [0, orphan_tiles) no block visits: the keys left of the first query's window (all of
// them when the sequence has no query). The K/V statistics still count them (the reference
// measures every key of the sequence), so their owners load them on their own.
DEVICE int orphan_tiles(const AttnParams& p, const SeqSpan& s, int block_n) {
    if (s.q_len == 0) return ceil_div(s.kv_len, block_n);
    return key_range(p, s, 0).begin / block_n;
}

// The blocks of rows [first, last] that visit key tile n (< ⌈Nk_b / block_n⌉) by key_tiles
// (first > last: none), in closed form. key_tiles' end for block m passes n iff its last row
// L sees a key at or past n·block_n: L + Nk − Nq + right + 1 > n·block_n, so the first such
// block holds row t = n·block_n − (Nk − Nq) − right. Its begin is at most n iff its first row
// R starts before (n + 1)·block_n: R + Nk − Nq − left < (n + 1)·block_n, so the last such
// block is the last to start before row u = (n + 1)·block_n − (Nk − Nq) + left.
struct BlockRange {
    int first, last;
};
DEVICE BlockRange blocks_visiting(const AttnParams& p, const SeqSpan& s, int n, int block_m, int block_n) {
    const int blocks = ceil_div(s.q_len, block_m);
    const int shift = s.kv_len - s.q_len;
    BlockRange r;
    r.first = 0;
    if (p.window_right >= 0) {
        const int t = n * block_n - shift - p.window_right;
        r.first = t <= 0 ? 0 : (t >= s.q_len ? blocks : t / block_m);
    }
    r.last = blocks - 1;
    if (p.window_left >= 0) {
        const int u = (n + 1) * block_n - shift + p.window_left;
        r.last = min(r.last, u <= 0 ? -1 : ceil_div(u, block_m) - 1);
    }
    return r;
}

// Calls f(token, in_q) for every query row this block must poison when its sequence is bad:
// its own rows of the sequence, or, when the cumulative lengths are bad and Q is packed, the
// rows of packed Q dealt over the grid by position (row (b·m_blocks + m)·block_m + r, then
// every B·m_blocks·block_m rows). `token` is then an absolute row of packed Q (`in_q` false)
// or a query of the sequence (`in_q` true).
template <class F>
DEVICE void for_each_poisoned_row(const AttnParams& p, const SeqSpan& s, int m_block, int block_m, F f) {
    if (s.all_bad && p.q_seqs == kQueriesPacked) {
        const long long step = (long long)p.batch * p.m_blocks * block_m;
        for (long long r0 = ((long long)s.b * p.m_blocks + m_block) * block_m; r0 < p.q_total; r0 += step) {
            for (int r = 0; r < block_m && r0 + r < p.q_total; ++r) f((int)(r0 + r), false);
        }
    } else {
        for (int i = m_block * block_m; i < (m_block + 1) * block_m && i < s.q_len; ++i) f(i, true);
    }
}

// Writes O and the LSE of every row `for_each_poisoned_row` gives as NaN (all the block's
// threads share the channels).
DEVICE void poison_rows(const AttnParams& p, const SeqSpan& s, int h, int m_block, int block_m) {
    for_each_poisoned_row(p, s, m_block, block_m, [&](int token, bool in_q) {
        SeqSpan at = s;
        if (!in_q) at.q_start = 0;  // an absolute row of packed Q
        for (int c = threadIdx.x; c < p.head_dim; c += blockDim.x) {
            p.o[q_offset(p, p.lo, at, token, h) + c] = from_float(quiet_nan());
        }
        if (threadIdx.x == 0 && p.lse) p.lse[lse_index(p, at, h, token)] = quiet_nan();
    });
}

// Writes the key mass of head h as NaN: keys [n0, n0 + block_n) of the sequence (every key of
// the layout's row up to Nk for unpacked K), or, with bad cumulative lengths and packed K,
// the keys dealt over the grid by position as for_each_poisoned_row deals rows.
DEVICE void poison_key_mass(const AttnParams& p, const SeqSpan& s, int h, int n_block, int n_blocks, int block_n) {
    if (p.kv_seqs == kKvPacked) {
        if (!s.all_bad) return;  // packed K is bad only through its cumulative lengths
        const long long step = (long long)p.batch * n_blocks * block_n;
        for (long long j0 = ((long long)s.b * n_blocks + n_block) * block_n; j0 < p.kv_total; j0 += step) {
            for (int c = threadIdx.x; c < block_n && j0 + c < p.kv_total; c += blockDim.x) {
                p.key_mass[(u64)h * p.kv_total + j0 + c] = quiet_nan();
            }
        }
        return;
    }
    for (int c = threadIdx.x; c < block_n && n_block * block_n + c < p.kv_len; c += blockDim.x) {
        p.key_mass[key_mass_index(p, s, h, n_block * block_n + c)] = quiet_nan();
    }
}

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

// The softmax family without softcap: the tensor-core fast path, in every sequence layout
// (src/cuda/spec.rs, `takes_fast_path`, makes the same choice).
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

// The per-head parameters, each read through its own layout ([1, 1, Hq, w]).
DEVICE float k_sink_at(const AttnParams& p, int h, int c) { return p.k_sink[p.lk_sink.offset + (u64)h * p.lk_sink.head + c]; }
DEVICE float v_param_at(const AttnParams& p, int h, int c) {
    return p.v_param[p.lv_param.offset + (u64)h * p.lv_param.head + c];
}

// The score of the sink for ContextBias/KvSink (s' = σ·q·k', softcapped), θ for LogitSink,
// 0 for Softmax1. `dot` is q·k' where the variant has a sink key.
DEVICE float sink_logit(const AttnParams& p, int h, float dot) {
    switch (p.variant) {
        case kContextBias:
        case kKvSink: return score_of(dot, p);
        case kLogitSink: return p.sink_logits[p.lsink.offset + (u64)h * p.lsink.head];
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

// The outputs of a finished row (query i of head h of sequence `sp`) besides O: its LSE, where
// the call wants it, and, with HeadsAndKeys, the record the key-mass kernel reads (`row_max`
// in the units of the path that ran the row).
DEVICE void write_row_outputs(const AttnParams& p, const SeqSpan& sp, int h, int i, const RowResult& res,
                              float row_max, float weight_sum) {
    if (p.lse) p.lse[lse_index(p, sp, h, i)] = res.lse;
    if (p.row_records) {
        const gmem_ptr<float> rec = p.row_records + row_record_index(p, sp, h, i) * kRowRecord;
        rec[kRowMax] = row_max;
        rec[kRowInvL] = res.inv_l;
        rec[kRowWeightSum] = weight_sum;
    }
}

// Channel c of O of a finished row of head h from its accumulated value: the variant's scale,
// bias and (ContextScale) gate factor γ.
DEVICE float output_channel(const AttnParams& p, const RowResult& res, float acc, int h, int c, float gamma) {
    float val = acc * res.out_scale;
    if (res.bias_scale != 0.f) val += res.bias_scale * v_param_at(p, h, c);
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

// The logit the normaliser runs over for score x (−inf stays −inf; kInline: without a call);
// `sigmoid_bias` is the sequence's β (SeqSpan).
template <bool kInline = false>
DEVICE float logit_of(const AttnParams& p, float sigmoid_bias, float x) {
    if (p.variant != kSigmoid || x == neg_inf()) return x;
    return kInline ? log_sigmoid_inline(x + sigmoid_bias) : log_sigmoidf(x + sigmoid_bias);
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

// The applied gate factor γ of (row, channel), read through the gate's own layout (a view of
// the q projection, say); `c` is ignored per head.
DEVICE float gate_at(const AttnParams& p, const SeqSpan& s, int row, int h, int c) {
    const u64 idx = q_offset(p, p.lgate, s, row, h) + (p.gate_per_channel ? c : 0);
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
// Channel statistics of K and V, fused into the forward pass: each K/V tile of kv head g of a
// sequence is counted once, by one block of the first query head of its group (h = g·group).
// The blocks that visit tile n (`blocks_visiting`) are dealt it round robin, so that no block
// takes many; the tiles no block visits (`orphan_tiles`: left of every window) go round robin
// to the sequence's blocks, which load them for the statistics alone.
// ---------------------------------------------------------------------------------------------
DEVICE int kv_tile_owner(const AttnParams& p, const SeqSpan& s, int n, int block_m, int block_n) {
    const BlockRange r = blocks_visiting(p, s, n, block_m, block_n);
    if (r.first > r.last) return n % max(ceil_div(s.q_len, block_m), 1);
    return r.first + n % (r.last - r.first + 1);
}

// Whether this block counts the channel statistics of K/V tile n, which it visits.
DEVICE bool scans_kv_tile(const AttnParams& p, const SeqSpan& s, int h, int m_block, int n, int block_m, int block_n) {
    return p.stats_on && h % p.group == 0 && kv_tile_owner(p, s, n, block_m, block_n) == m_block;
}
