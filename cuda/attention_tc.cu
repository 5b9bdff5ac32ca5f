// Tensor-core flash attention (FlashAttention-2's work shape) for f16 and bf16 on sm_80 and newer.
//
// One thread block computes kBlockM query rows of one (batch, head); each of its kWarps warps
// owns 16 rows and keeps its Q fragments in registers. K/V tiles of kBlockN keys stream
// through shared memory, double buffered with cp.async; S = Q·Kᵀ and O += P·V run on mma.sync
// m16n8k16 (f32 accumulate) with ldmatrix fragment loads; the online softmax stays in
// registers in f32.
//
// Two main loops, chosen per launch (a uniform branch, two instantiations):
// - the fast path (kFast), for the softmax family without softcap (Softmax, ValueBias,
//   ContextBias, KvSink, ContextScale, LogitSink, Softmax1): the row max and the exponent are
//   kept in log2 units, so that a score costs one FFMA (s·σlog2(e) − m), one ex2.approx.ftz,
//   the row sum, the entropy's FFMA and the max; tiles that no mask boundary crosses skip the
//   mask (`KeyTiles`); the statistics are branch-free sums;
// - the generic path, for softcap, Sigmoid and ClippedSoftmax (two passes over K): scores
//   through score_of / logit_of / key_weight of common.cuh, every tile masked.
// The fast path has two instantiations by how a K/V tile is addressed (kContiguous): evenly
// strided (one lookup per tile: every layout but the one below), or key by key, for a paged
// cache whose pages are not a multiple of the tile (vLLM's 16-token pages): each key's page
// looked up as the tile is loaded. The lookup code would cost the strided kernel registers and
// main-loop instructions (cuda_compile's bound), so it is compiled only into the latter.
//
// Fragment layout of mma.m16n8k16 (g = lane / 4, t = lane % 4), used throughout:
//   A (16x16, row-major, 4 x b32 = 8 elements): a0 = (row g,   k 2t..2t+1)
//                                               a1 = (row g+8, k 2t..2t+1)
//                                               a2 = (row g,   k 2t+8..2t+9)
//                                               a3 = (row g+8, k 2t+8..2t+9)
//   B (16x8, k-major, 2 x b32):                 b0 = (k 2t..2t+1,   col g)
//                                               b1 = (k 2t+8..2t+9, col g)
//   C (16x8, f32 x 4):                          c0, c1 = (row g,   cols 2t, 2t+1)
//                                               c2, c3 = (row g+8, cols 2t, 2t+1)
// So a thread holds two rows of every tile (g and g + 8) and the four threads of a quad share
// a row: row reductions are two shuffles (xor 1, 2). The S accumulator of keys 16k..16k+15
// (n-tiles 2k, 2k+1) is, packed to 16 bits, exactly the A fragment of P for the P·V step.
//
// ldmatrix.x4 loads four 8x8 b16 matrices; lanes 8i..8i+7 give the row addresses of matrix i,
// and register i of lane l receives row l/4, columns 2(l%4)..+1 of matrix i (with .trans, of
// the transposed matrix). Each load below says which four matrices it takes.
//
// Shared memory rows are kHeadDimTile elements, unpadded, with their 16-byte chunks swizzled
// (`smem_index`): chunk c of row r sits at chunk c ^ (r % 8). The eight rows an ldmatrix reads
// at one logical chunk then lie in eight different 16-byte bank groups, and no padding is
// needed, which keeps a 128-row block with double-buffered K/V at d = 128 in 96 KiB.

#ifndef HEAD_DIM_TILE
#error "define HEAD_DIM_TILE (64, 128 or 256)"
#endif

namespace tc {

// The tile sizes come from the host (kHost*, written by src/cuda/spec.rs, which explains them).
constexpr int kHeadDimTile = HEAD_DIM_TILE;  // d is run-time; channels past it are zero-filled
constexpr int kWarps = kHostTcWarps;
constexpr int kThreads = kWarps * kWarpSize;
constexpr int kRowsPerWarp = 16;                      // the m of m16n8k16
constexpr int kBlockM = kWarps * kRowsPerWarp;        // query rows per block: 128, or 64 at d = 256
constexpr int kBlockN = kHostTcBlockN;                // keys per K/V tile: 64, or 32 at d = 256
constexpr int kChunk = 8;                             // elements per 16-byte copy
constexpr int kChunksPerRow = kHeadDimTile / kChunk;
constexpr int kSwizzle = 8;                           // rows of one swizzle period (16-byte chunks)
constexpr int kKSteps = kHeadDimTile / 16;            // k-steps of S = Q·Kᵀ
constexpr int kNTiles = kBlockN / 8;                  // n-tiles of S
constexpr int kDTiles = kHeadDimTile / 8;             // n-tiles of O
constexpr int kQElems = kBlockM * kHeadDimTile;
constexpr int kTileElems = kBlockN * kHeadDimTile;

static_assert(kBlockM == kHostTcBlockM, "the host sizes the grid for this block");
static_assert(kHeadDimTile % 16 == 0, "head-dim tile must be a multiple of the mma k");
static_assert(kBlockN % 16 == 0, "key tile must be a multiple of the mma k of P·V");
static_assert(kChunksPerRow % kSwizzle == 0, "the swizzle permutes chunks within groups of eight");
static_assert(kWarpSize % kChunksPerRow == 0, "a channel scan row fits in a warp");
static_assert(kThreads % kChunksPerRow == 0, "every thread scans the same chunk of each row");

// Shared memory: Q, then two K tiles, then two V tiles (98304 bytes at d = 128 and at
// d = 256: within the 99 KiB an sm_86/sm_89 block may have). Once Q is in registers, its rows
// hold the channel-statistics scratch (`StatsSmem`).
constexpr int kSmemBytes = (kQElems + 4 * kTileElems) * 2;
static_assert(kSmemBytes <= 99 * 1024, "fits every sm_8x/sm_9x block");
static_assert(kSmemBytes == kHostTcSmemBytes, "the host launches with this much dynamic shared memory");

// Element (row, chan) of a swizzled tile.
DEVICE int smem_index(int row, int chan) {
    return row * kHeadDimTile + (((chan / kChunk) ^ (row % kSwizzle)) * kChunk) + chan % kChunk;
}

// The row addresses ldmatrix takes from a lane, for a loop over 16 x 16 blocks: lane row
// `lane_row` (row0 + lane_row for row0 a multiple of 8) and chunk `2j + lane_chunk` of every
// group of eight chunks. smem_index(row0 + lane_row, 16k + 8·lane_chunk) is then
// row0·kHeadDimTile + (k / 4)·64 + off[k % 4]: four registers and an immediate, where the
// swizzle written out per block would keep one address per block live across the loop.
struct LdsmOffsets {
    int off[4];
    DEVICE LdsmOffsets(int lane_row, int lane_chunk) {
#pragma unroll
        for (int j = 0; j < 4; ++j) off[j] = smem_index(lane_row, (2 * j + lane_chunk) * kChunk);
    }
    // smem_index(row0 + lane_row, 16k + 8·lane_chunk), row0 % 8 == 0.
    DEVICE int at(int row0, int k) const { return row0 * kHeadDimTile + (k / 4) * 4 * 2 * kChunk + off[k % 4]; }
};

// The inline-PTX wrappers. Under OUTLIER_ATTN_EMU each calls the emulator's instruction of the
// same name (cuda/emu/ptx.h) with the operands in the order the asm statement gives them.
#if defined(OUTLIER_ATTN_EMU)
DEVICE void cp_async_16(smem_ptr<elem_t> dst, gmem_ptr<const elem_t> src, bool valid) {
    emu::cp_async_cg_shared_global_16(dst.addr(), reinterpret_cast<uintptr_t>(src.raw()), valid ? 16 : 0);
}
DEVICE void cp_async_commit() { emu::cp_async_commit_group(); }
template <int n>
DEVICE void cp_async_wait() { emu::cp_async_wait_group(n); }
DEVICE void ldmatrix_x4(unsigned (&r)[4], smem_ptr<const elem_t> p) {
    emu::ldmatrix_sync_aligned_m8n8_shared_b16<4, false>(r, p.addr());
}
DEVICE void ldmatrix_x4_trans(unsigned (&r)[4], smem_ptr<const elem_t> p) {
    emu::ldmatrix_sync_aligned_m8n8_shared_b16<4, true>(r, p.addr());
}
DEVICE void mma_16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    const unsigned b[2] = {b0, b1};
    const float c[4] = {d[0], d[1], d[2], d[3]};
#if defined(ELEM_F16)
    emu::mma_sync_aligned_m16n8k16_row_col_f32<emu::MmaType::F16>(d, a, b, c);
#else
    emu::mma_sync_aligned_m16n8k16_row_col_f32<emu::MmaType::Bf16>(d, a, b, c);
#endif
}
DEVICE unsigned pack2(float lo, float hi) {
#if defined(ELEM_F16)
    return emu::cvt_rn_f16x2_f32(hi, lo);
#else
    return emu::cvt_rn_bf16x2_f32(hi, lo);
#endif
}
DEVICE float ex2_ftz(float x) { return emu::ex2_approx_ftz_f32(x); }
DEVICE float max_keep_nan(float x, float lo) { return emu::max_NaN_f32(x, lo); }
#else
DEVICE unsigned smem_addr(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }

DEVICE void cp_async_16(void* dst, const void* src, bool valid) {
    // src-size 0 zero-fills the 16 bytes without reading: rows past the end, channels past d.
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
                 "r"(valid ? 16 : 0));
}
DEVICE void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int n>
DEVICE void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(n)); }

DEVICE void ldmatrix_x4(unsigned (&r)[4], const elem_t* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(p)));
}
DEVICE void ldmatrix_x4_trans(unsigned (&r)[4], const elem_t* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(p)));
}

// d += a · b for one 16x8 tile.
DEVICE void mma_16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
#if defined(ELEM_F16)
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
#else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
#endif
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two f32 to a b32 of two 16-bit values, `lo` in the low half (round to nearest even).
DEVICE unsigned pack2(float lo, float hi) {
    unsigned r;
#if defined(ELEM_F16)
    asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
#else
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
#endif
    return r;
}

// 2^x, as FlashAttention takes it: one MUFU.EX2, subnormals flushed to zero (2^-126 and below
// is nothing next to a row's largest term, which is 1).
DEVICE float ex2_ftz(float x) {
    float r;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(r) : "f"(x));
    return r;
}

// max(x, lo), NaN if x is NaN (max.NaN, sm_80 and newer: one FMNMX.NAN), where fmaxf would
// return lo and hide the NaN.
DEVICE float max_keep_nan(float x, float lo) {
    float r;
    asm("max.NaN.f32 %0, %1, %2;\n" : "=f"(r) : "f"(x), "f"(lo));
    return r;
}
#endif  // OUTLIER_ATTN_EMU

// Addressing: every row comes from the sequence map of common.cuh (q_offset, kv_tile).

// Copies rows [row0, row0 + kRows) into a swizzled shared tile; `offset_of(r)` is the element
// offset of row r in `g_base`. Rows at or past `rows` and channels at or past d are
// zero-filled, so that padding adds nothing to a dot product and multiplies no garbage into O.
template <int kRows, class RowOffset>
DEVICE void load_tile(smem_ptr<elem_t> s_tile, gmem_ptr<const elem_t> g_base, u64 zero_fill_offset, int row0, int rows,
                      const AttnParams& p, RowOffset offset_of) {
    const gmem_ptr<const elem_t> g_origin = g_base + zero_fill_offset;  // a valid, aligned address for zero-fills
    for (int idx = threadIdx.x; idx < kRows * kChunksPerRow; idx += kThreads) {
        const int r = idx / kChunksPerRow;
        const int c = (idx % kChunksPerRow) * kChunk;
        const bool valid = row0 + r < rows && c < p.head_dim;  // d % 8 == 0: whole chunks
        const smem_ptr<elem_t> dst = s_tile + smem_index(r, c);
        const gmem_ptr<const elem_t> src = valid ? g_base + offset_of(row0 + r) + c : g_origin;
        if (p.aligned) {
            cp_async_16(dst, src, valid);
        } else {
            // Views whose rows are not 16-byte aligned: plain loads, same zero-fill.
#pragma unroll
            for (int e = 0; e < kChunk; ++e) dst[e] = valid ? src[e] : (elem_t)0;
        }
    }
}

// The rows of a head block (`hb`, of p.fold query heads) are its heads' query rows interleaved,
// head fastest: row r is query r / fold of head hb·fold + r % fold. With fold = 1 (prefill, and
// every call with statistics) a block's rows are one head's queries; with fold = Hq/Hkv (decode,
// dense Q only) a GQA group's heads share one tile, so each K/V tile feeds fold·Nq rows, not Nq.
DEVICE int row_query(const AttnParams& p, int row) { return row / p.fold; }
DEVICE int row_head(const AttnParams& p, int hb, int row) { return hb * p.fold + row % p.fold; }

DEVICE void load_q_tile(smem_ptr<elem_t> s_q, const AttnParams& p, const SeqSpan& sp, int hb, int row0) {
    load_tile<kBlockM>(s_q, p.q, p.lq.offset, row0, p.fold * sp.q_len, p, [&](int row) {
        return q_offset(p, p.lq, sp, row_query(p, row), row_head(p, hb, row));
    });
}
// K tile n (keys n·kBlockN ...) of kv head g, and the V tile with it when `with_v`.
// kContiguous: the caller knows the tile is evenly strided (`attention_tc`), so the per-key
// lookup is not compiled in; otherwise each tile says whether it is (`KvTile::contiguous`).
template <bool kContiguous>
DEVICE void load_kv_tile(smem_ptr<elem_t> s_k, smem_ptr<elem_t> s_v, const AttnParams& p, const SeqSpan& sp, int g,
                         int n, bool with_v) {
    const int n0 = n * kBlockN;
    const KvTile tile = kv_tile(p, sp, n0);
    load_tile<kBlockN>(s_k, p.k, p.lk.offset, n0, sp.kv_len, p,
                       [&](int key) { return kv_tile_row<kContiguous>(p, p.lk, sp, tile, n0, key - n0, g); });
    if (with_v) {
        load_tile<kBlockN>(s_v, p.v, p.lv.offset, n0, sp.kv_len, p,
                           [&](int key) { return kv_tile_row<kContiguous>(p, p.lv, sp, tile, n0, key - n0, g); });
    }
}

// Which key tiles a block visits, and which of them need no mask: `key_tiles` of common.cuh
// (KeyTiles), with kBlockM rows and kBlockN keys.

// The tiles of split `split` among `kt` (all of them without split-KV); possibly none.
DEVICE KeyTiles split_tiles(const AttnParams& p, KeyTiles kt, int split) {
    if (p.splits > 1) {
        kt.begin = max(kt.begin, split * p.tiles_per_split);
        kt.end = max(kt.begin, min(kt.end, (split + 1) * p.tiles_per_split));
    }
    return kt;
}

// Writes O and the LSE of the block's rows as NaN (its sequence read a bad index): through
// `poison_rows` one head at a time, or, with a GQA fold (dense Q), row by row.
DEVICE void poison_block_rows(const AttnParams& p, const SeqSpan& sp, int hb, int m_block) {
    if (p.fold == 1) {
        poison_rows(p, sp, hb, m_block, kBlockM);
        return;
    }
    const int row0 = m_block * kBlockM;
    for (int row = row0; row < row0 + kBlockM && row < p.fold * sp.q_len; ++row) {
        const int i = row_query(p, row), h = row_head(p, hb, row);
        for (int c = threadIdx.x; c < p.head_dim; c += kThreads) {
            p.o[q_offset(p, p.lo, sp, i, h) + c] = from_float(quiet_nan());
        }
        if (threadIdx.x == 0 && p.lse) p.lse[lse_index(p, sp, h, i)] = quiet_nan();
    }
}

// ---------------------------------------------------------------------------------------------
// S = Q·Kᵀ for this warp's 16 rows and the tile's kBlockN keys (unscaled dot products). The
// forward pass and the key-mass kernel both take S from here: the same mma sequence on the
// same fragments, so the same bits.
// ---------------------------------------------------------------------------------------------
DEVICE void tile_scores(float (&s)[kNTiles][4], const unsigned (&q_frag)[kKSteps][4], smem_ptr<const elem_t> s_k) {
    const int lane = threadIdx.x % kWarpSize;
#pragma unroll
    for (int nt = 0; nt < kNTiles; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
    // Matrices: (keys +0..7, k +0..7), (keys +0..7, k +8..15), (keys +8..15, k +0..7),
    // (keys +8..15, k +8..15) = b0, b1 of n-tile 2np, then of n-tile 2np + 1: lane l gives
    // key (l % 8) + (l / 16)·8, channel chunk (l / 8) % 2 of each k-step.
    const LdsmOffsets k_at((lane % 8) + (lane / 16) * 8, (lane / 8) % 2);
    // Channels past d are zero in shared memory, so a partial k-step adds nothing.
#pragma unroll
    for (int kk = 0; kk < kKSteps; ++kk) {
#pragma unroll
        for (int np = 0; np < kNTiles / 2; ++np) {
            unsigned b[4];
            ldmatrix_x4(b, s_k + k_at.at(np * 16, kk));
            mma_16816(s[2 * np], q_frag[kk], b[0], b[1]);
            mma_16816(s[2 * np + 1], q_frag[kk], b[2], b[3]);
        }
    }
}

// The Q fragments of this warp's 16 rows of a Q tile.
DEVICE void load_q_fragments(unsigned (&q_frag)[kKSteps][4], smem_ptr<const elem_t> s_q) {
    const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
#pragma unroll
    for (int kk = 0; kk < kKSteps; ++kk) {
        // Matrices: (rows +0..7, k +0..7), (rows +8..15, k +0..7), (rows +0..7, k +8..15),
        // (rows +8..15, k +8..15) = a0..a3.
        ldmatrix_x4(q_frag[kk], s_q + smem_index(warp * kRowsPerWarp + lane % 16, kk * 16 + (lane / 16) * 8));
    }
}

// O += P·V; `s` holds P (rounded to the input dtype, as any 16-bit flash kernel must).
DEVICE void accumulate_pv(float (&acc_o)[kDTiles][4], const float (&s)[kNTiles][4], smem_ptr<const elem_t> s_v) {
    const int lane = threadIdx.x % kWarpSize;
    // Matrices (transposed): (keys +0..7, chans +0..7), (keys +8..15, chans +0..7),
    // (keys +0..7, chans +8..15), (keys +8..15, chans +8..15) = b0, b1 of O's n-tile 2dp,
    // then of n-tile 2dp + 1: lane l gives key (l % 8) + ((l / 8) % 2)·8, chunk l / 16.
    const LdsmOffsets v_at((lane % 8) + ((lane / 8) % 2) * 8, lane / 16);
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
        const unsigned a[4] = {pack2(s[2 * kk][0], s[2 * kk][1]), pack2(s[2 * kk][2], s[2 * kk][3]),
                               pack2(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                               pack2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
        for (int dp = 0; dp < kDTiles / 2; ++dp) {
            unsigned b[4];
            ldmatrix_x4_trans(b, s_v + v_at.at(kk * 16, dp));
            mma_16816(acc_o[2 * dp], a, b[0], b[1]);
            mma_16816(acc_o[2 * dp + 1], a, b[2], b[3]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The fast path's row state, in log2 units: with c = σ·log2(e) and m2 the running max of c·s,
// a score's term is 2^(c·s − m2) = e^{s − m}.
//   l  = Σ 2^(c·s − m2)          (the sink's term included where it is in the denominator)
//   t2 = Σ 2^(c·s − m2)·(c·s − m2)  entropy = ln l − t2·ln 2 / l
//   max_s: the largest visible raw s (unscaled).
// The terms of key 0 and of the sink are not carried (registers are short in the main loop):
// they are 2^(c·s − m2) with the final m2, taken at the end from s_0 (kept in shared memory
// by the tile that holds key 0) and s'.
// ---------------------------------------------------------------------------------------------
// ex2.approx.ftz is 0 below this (2^-127 is subnormal, flushed).
constexpr float kExp2Floor = -127.f;

struct FastRow {
    float m2, l, t2, max_s;
    DEVICE void init() {
        m2 = neg_inf();
        l = t2 = 0.f;
        max_s = neg_inf();
    }
    // The reference the exponents are taken against: 0 while the row has seen nothing, so that
    // masked scores (−inf) give 0 and never NaN.
    DEVICE float m_ref() const { return m2 == neg_inf() ? 0.f : m2; }
};

// The fast path's probability of score s in a finished row (max m2, 1/l): the forward pass's
// exponent with the row's final max. The key-mass kernel calls this with the row record.
DEVICE float fast_probability(float s, float scale_log2, float m2, float inv_l) {
    return ex2_ftz(fmaf(s, scale_log2, -(m2 == neg_inf() ? 0.f : m2))) * inv_l;
}

// Per-thread state of the two rows (g, g + 8) a thread holds. (The sinks' logits wait in
// shared memory until the epilogue: registers are short in the main loop.)
template <bool kFast>
struct Rows {
    using State = typename type_if<kFast, FastRow, OnlineRow>::type;
    State st[2];
    int query[2];  // their query positions (rows g and g + 8 may be two heads of one query)
};

// One K/V tile of the fast path. kMasked: the tile crosses a mask boundary (the causal
// diagonal, or Nk), so each score is tested; elsewhere no score is.
template <bool kMasked>
DEVICE void attend_tile_fast(const AttnParams& p, const SeqSpan& sp, Rows<true>& rows, float (&acc_o)[kDTiles][4],
                             const unsigned (&q_frag)[kKSteps][4], smem_ptr<const elem_t> s_k,
                             smem_ptr<const elem_t> s_v, int n0, float scale_log2, smem_ptr<float> s_key0) {
    const int t = threadIdx.x % 4;
    float s[kNTiles][4];
    tile_scores(s, q_frag, s_k);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        FastRow& st = rows.st[r];
        float tile_max = neg_inf();
        const KeyRange kr = key_range(p, sp, rows.query[r]);
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                float& x = s[nt][2 * r + e];
                const int j = n0 + nt * 8 + 2 * t + e;
                if (kMasked && (j < kr.begin || j >= kr.end)) x = neg_inf();
                tile_max = fmaxf(tile_max, x);
            }
        }
        tile_max = row_max<4>(tile_max);
        st.max_s = fmaxf(st.max_s, tile_max);
        // Move the running max; a row that has seen nothing (m2 = −inf) has nothing to rescale.
        const float m_new = fmaxf(st.m2, tile_max * scale_log2);
        const float m_ref = m_new == neg_inf() ? 0.f : m_new;
        const float shift = st.m2 == neg_inf() ? 0.f : st.m2 - m_ref;
        const float alpha = ex2_ftz(shift);
        st.t2 = alpha * fmaf(shift, st.l, st.t2);
        st.l *= alpha;
        st.m2 = m_new;
        // Key 0 is column 0 of the block's first tile, held by the thread t = 0 of each row.
        if (n0 == 0 && t == 0) s_key0[r] = s[0][2 * r];
#pragma unroll
        for (int dt = 0; dt < kDTiles; ++dt) {
            acc_o[dt][2 * r] *= alpha;
            acc_o[dt][2 * r + 1] *= alpha;
        }
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                float& x = s[nt][2 * r + e];
                const float y = fmaf(x, scale_log2, -m_ref);  // −inf where masked
                const float w = ex2_ftz(y);
                st.l += w;
                // A score of −inf (masked, or from an infinite input, in any tile) has w = 0
                // and y = −inf, whose product is NaN: y is floored where ex2_ftz is 0 anyway,
                // so the term is 0; a NaN y (NaN input) stays NaN, as the reference's entropy.
                st.t2 = fmaf(w, max_keep_nan(y, kExp2Floor), st.t2);
                x = w;
            }
        }
    }
    accumulate_pv(acc_o, s, s_v);
}

// One K/V tile of the generic path: every score masked, scores to logits by the variant.
DEVICE void attend_tile_generic(const AttnParams& p, const SeqSpan& sp, Rows<false>& rows, float (&acc_o)[kDTiles][4],
                                const unsigned (&q_frag)[kKSteps][4], smem_ptr<const elem_t> s_k,
                                smem_ptr<const elem_t> s_v, int n0, bool clip_pass, bool with_v) {
    const int t = threadIdx.x % 4;
    float s[kNTiles][4];
    tile_scores(s, q_frag, s_k);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        OnlineRow& st = rows.st[r];
        float tile_max = neg_inf();
        const KeyRange kr = key_range(p, sp, rows.query[r]);
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int j = n0 + nt * 8 + 2 * t + e;
                float x = score_of(s[nt][2 * r + e], p);
                if (j < kr.begin || j >= kr.end) x = neg_inf();
                // Sigmoid's logits are not its scores: the max must see x itself.
                if (p.stats_on && !clip_pass && p.variant == kSigmoid) st.max_score = fmaxf(st.max_score, x);
                x = logit_of(p, sp.sigmoid_bias, x);
                s[nt][2 * r + e] = x;
                tile_max = fmaxf(tile_max, x);
            }
        }
        // Elsewhere the logits are the scores: one max per tile serves max_score.
        if (p.stats_on && !clip_pass && p.variant != kSigmoid) st.max_score = fmaxf(st.max_score, tile_max);
        float inv_l = 0.f;
        if (clip_pass) {
            inv_l = inv_or_zero(st.l);
        } else {
            tile_max = row_max<4>(tile_max);
            const float alpha = st.rescale(fmaxf(st.m, tile_max));
            if (accumulates_softmax(p.variant) && with_v) {
#pragma unroll
                for (int dt = 0; dt < kDTiles; ++dt) {
                    acc_o[dt][2 * r] *= alpha;
                    acc_o[dt][2 * r + 1] *= alpha;
                }
            }
        }
        const float l0 = s[0][2 * r];  // key n0 + 2t; key 0 when n0 = 0 and t = 0
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt) {
#pragma unroll
            for (int e = 0; e < 2; ++e) s[nt][2 * r + e] = key_weight(st, p, s[nt][2 * r + e], clip_pass, inv_l);
        }
        if (p.stats_on && n0 == 0 && t == 0) st.add_key0(l0, s[0][2 * r], clip_pass);
    }
    if (with_v) accumulate_pv(acc_o, s, s_v);
}

// ---------------------------------------------------------------------------------------------
// Channel statistics from the tiles in shared memory. Thread i scans chunk i % kChunksPerRow
// (8 channels) of rows i / kChunksPerRow, + kThreads / kChunksPerRow, ...: per channel the
// largest |x| (`mx`), and Σ|x|; with `norms`, Σ‖row‖ and the norm of row `row_of_key0` (−1:
// not in this tile). Zero-filled rows and channels add nothing.
// ---------------------------------------------------------------------------------------------
constexpr int kScanRowsPerPass = kThreads / kChunksPerRow;

template <int kRows>
DEVICE void scan_tile(smem_ptr<const elem_t> s_tile, float (&mx)[kChunk], float& abs_sum, bool norms, float& norm_sum,
                      float& norm0, int row_of_key0) {
    static_assert(kRows % kScanRowsPerPass == 0, "every thread runs the same rows (the norms shuffle)");
    const int chunk = threadIdx.x % kChunksPerRow;
#pragma unroll
    for (int e = 0; e < kChunk; ++e) mx[e] = 0.f;
    for (int r = threadIdx.x / kChunksPerRow; r < kRows; r += kScanRowsPerPass) {
        float sq = 0.f;
#pragma unroll
        for (int e = 0; e < kChunk; ++e) {
            const float x = to_float(s_tile[smem_index(r, chunk * kChunk + e)]);
            const float a = fabsf(x);
            mx[e] = fmaxf(mx[e], a);
            abs_sum += a;
            sq = fmaf(x, x, sq);
        }
        if (norms) {
            // The row's chunks are held by kChunksPerRow neighbouring lanes.
            const float norm = sqrt_approx(row_sum<kChunksPerRow>(sq));
            if (chunk == 0) {
                norm_sum += norm;
                if (r == row_of_key0) norm0 = norm;
            }
        }
    }
}

// The shared-memory scratch of the channel statistics, in Q's rows once Q is in registers:
// the largest |x| of each channel seen so far by each warp, per tensor.
// Then each warp's sums (registers are short in the main loop): Σ|q|, Σ|k|, Σ|v|, Σ‖v_j‖, ‖v_0‖.
constexpr int kStatTensors = 3;  // Q, K, V
constexpr int kWarpMaxFloats = kStatTensors * kWarps * kHeadDimTile;
enum WarpSum : int { kSumQ = 0, kSumK, kSumV, kSumVNorm, kSumVNorm0, kWarpSums };
constexpr int kStatsFloats = kWarpMaxFloats + kWarps * kWarpSums;
static_assert((kStatsFloats + kWarps * kPartialCount + 4 * kThreads) * 4 <= kQElems * 2,
              "the scratch, the sinks' logits and key 0's scores fit in Q's rows");

DEVICE smem_ptr<float> warp_max_slot(smem_ptr<float> s_stats, int tensor) {
    return s_stats + (tensor * kWarps + threadIdx.x / kWarpSize) * kHeadDimTile;
}
// Adds a sum over the warp to its slot; `x` is this lane's part. Lane 0 owns the slot.
DEVICE void add_warp_sum(smem_ptr<float> s_stats, int field, float x, bool first) {
    x = row_sum<kWarpSize>(x);
    if (threadIdx.x % kWarpSize == 0) {
        const smem_ptr<float> slot = s_stats + kWarpMaxFloats + (threadIdx.x / kWarpSize) * kWarpSums + field;
        slot[0] = first ? x : slot[0] + x;
    }
}

// Folds one tile's per-thread maxima into the warp's running maxima (`first`: set them). Each
// slot is written by one lane only, so the warps need no barrier between them.
DEVICE void merge_warp_max(float (&mx)[kChunk], smem_ptr<float> slot, bool first) {
    const int lane = threadIdx.x % kWarpSize;
#pragma unroll
    for (int e = 0; e < kChunk; ++e) {
        for (int off = kChunksPerRow; off < kWarpSize; off <<= 1) {
            mx[e] = fmaxf(mx[e], __shfl_xor_sync(kFullMask, mx[e], off));
        }
    }
    if (lane < kChunksPerRow) {
#pragma unroll
        for (int e = 0; e < kChunk; ++e) {
            const int c = lane * kChunk + e;
            slot[c] = first ? mx[e] : fmaxf(slot[c], mx[e]);
        }
    }
}

// Writes the block's per-channel maxima (over the warps, in order) to its partial record.
// Called after a barrier; `kv`: this block's K/V maxima are wanted (first head of the group).
DEVICE void write_channel_max(const AttnParams& p, smem_ptr<float> s_stats, int bh, int record, bool kv) {
    static_assert(kStatTensors == kChannelTensors, "Q, K, V in record order");
    const gmem_ptr<float> rec = partial_record(p, bh, record);
    for (int tensor = 0; tensor < (kv ? kStatTensors : 1); ++tensor) {
        for (int c = threadIdx.x; c < p.head_dim; c += kThreads) {
            float m = 0.f;
            for (int w = 0; w < kWarps; ++w) m = fmaxf(m, s_stats[(tensor * kWarps + w) * kHeadDimTile + c]);
            rec[channel_max_field(p, tensor) + c] = m;
        }
    }
}

// Counts one K/V tile in the block's channel statistics (`scans_kv_tile`); `has_key0`: the tile
// holds key 0 (row 0), whose norm v0_norm_ratio needs. Every thread calls it.
DEVICE void count_kv_tile(smem_ptr<float> s_stats, smem_ptr<const elem_t> k_tile, smem_ptr<const elem_t> v_tile,
                          float (&mx)[kChunk], bool has_key0) {
    float k_abs = 0.f, v_abs = 0.f, v_norm = 0.f, v_norm0 = 0.f, unused = 0.f;
    scan_tile<kBlockN>(k_tile, mx, k_abs, false, unused, unused, -1);
    merge_warp_max(mx, warp_max_slot(s_stats, 1), false);
    scan_tile<kBlockN>(v_tile, mx, v_abs, true, v_norm, v_norm0, has_key0 ? 0 : -1);
    merge_warp_max(mx, warp_max_slot(s_stats, 2), false);
    add_warp_sum(s_stats, kSumK, k_abs, false);
    add_warp_sum(s_stats, kSumV, v_abs, false);
    add_warp_sum(s_stats, kSumVNorm, v_norm, false);
    add_warp_sum(s_stats, kSumVNorm0, v_norm0, false);
}

// ---------------------------------------------------------------------------------------------
// One block of the forward pass.
// ---------------------------------------------------------------------------------------------
template <bool kFast, bool kContiguous>
DEVICE void forward_block(const AttnParams& p) {
    const smem_ptr<elem_t> s_q = dynamic_smem<elem_t>();   // [kBlockM][kHeadDimTile], swizzled
    const smem_ptr<elem_t> s_k = s_q + kQElems;            // [2][kBlockN][kHeadDimTile]
    const smem_ptr<elem_t> s_v = s_k + 2 * kTileElems;     // [2][kBlockN][kHeadDimTile]
    const smem_ptr<float> s_stats = smem_cast<float>(s_q);  // once Q is in registers: kWarpMaxFloats
    const smem_ptr<float> s_scratch = s_stats + kStatsFloats;  // [kWarps][kPartialCount]
    const smem_ptr<float> s_sinks = s_scratch + kWarps * kPartialCount;  // [kThreads][2]
    const smem_ptr<float> s_key0 = s_sinks + 2 * kThreads;             // [kThreads][2]: s of key 0

    // Longest first: under the causal mask the last query blocks visit the most key tiles. The
    // splits of one query block are neighbours in x.
    // (Registers are short in the main loop: what the epilogue needs of the split and the rows'
    // heads is computed again there from blockIdx rather than kept.)
    const int split = (int)blockIdx.x % p.splits;
    const int m_block = p.m_blocks - 1 - (int)blockIdx.x / p.splits;
    const bool split_kv = p.splits > 1;
    const int hb = blockIdx.y, b = blockIdx.z;  // head block: p.fold query heads from hb·fold
    const int h = hb * p.fold;                  // its first head (the only one with statistics)
    const int bh = b * p.q_heads + h;
    const int g_kv = h / p.group;
    const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
    const int g = lane / 4, t = lane % 4;
    const int row0 = m_block * kBlockM;
    const SeqSpan sp = seq_span(p, b);
    if (sp.bad) {  // uniform: the sequence read a bad index; its statistics are finalize's NaN
        if (split == 0) poison_block_rows(p, sp, hb, m_block);
        return;
    }
    const bool stats = p.stats_on;
    // A block past the sequence's queries still writes its (empty) partial record and counts
    // the K/V tiles it owns; without statistics it has nothing to do.
    if (row0 >= p.fold * sp.q_len && !stats) return;
    // The queries of the block's first and last rows bound its key tiles (folded or not).
    const int q_first = row_query(p, row0);
    const int q_last = row_query(p, max(min(row0 + kBlockM, p.fold * sp.q_len), row0 + 1) - 1);
    const KeyTiles kt = split_tiles(p, key_tiles(p, sp, q_first, q_last - q_first + 1, kBlockN), split);
    const bool kv_stats = stats && h % p.group == 0;  // this head counts its kv head's K/V
    // The sink is one more key, counted once per row: by split 0.
    const bool with_sink = has_sink(p.variant) && split == 0;

    // Q, and (single pass) the first K/V tile behind it, so that its latency hides under the
    // Q fragment loads and the sink set-up.
    const bool clipped = !kFast && p.variant == kClippedSoftmax;
    const bool kv0_in_flight = !clipped && kt.end > kt.begin;
    load_q_tile(s_q, p, sp, hb, row0);
    cp_async_commit();
    if (kv0_in_flight) {
        load_kv_tile<kContiguous>(s_k, s_v, p, sp, g_kv, kt.begin, true);
        cp_async_commit();
        cp_async_wait<1>();  // Q only
    } else {
        cp_async_wait<0>();
    }
    __syncthreads();

    unsigned q_frag[kKSteps][4];
    load_q_fragments(q_frag, s_q);

    Rows<kFast> rows;
    float acc_o[kDTiles][4];
#pragma unroll
    for (int dt = 0; dt < kDTiles; ++dt) acc_o[dt][0] = acc_o[dt][1] = acc_o[dt][2] = acc_o[dt][3] = 0.f;
#pragma unroll
    for (int r = 0; r < 2; ++r) rows.query[r] = row_query(p, row0 + warp * kRowsPerWarp + g + 8 * r);
    float x_sink[2] = {0.f, 0.f};  // the sink's logit of each row, natural units
#pragma unroll
    for (int r = 0; r < 2; ++r) rows.st[r].init();

    // The sink: s' needs q·k' of each row; the warp reduces each of its 16 rows in turn.
    if (with_sink) {
        for (int rr = 0; rr < kRowsPerWarp; ++rr) {
            const int row = warp * kRowsPerWarp + rr;
            const int hr = row_head(p, hb, row0 + row);
            float dot = 0.f;
            if (p.variant == kContextBias || p.variant == kKvSink) {
                for (int c = lane; c < p.head_dim; c += kWarpSize) {
                    dot += to_float(s_q[smem_index(row, c)]) * k_sink_at(p, hr, c);
                }
                dot = row_sum<kWarpSize>(dot);
            }
            const float x = sink_logit(p, hr, dot);
            if (rr == g) x_sink[0] = x;
            if (rr == g + 8) x_sink[1] = x;
        }
        if (sink_in_denominator(p.variant)) {
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                if constexpr (kFast) {
                    rows.st[r].m2 = x_sink[r] * kLog2e;
                    if (t == 0) rows.st[r].l = sink_term(x_sink[r]);
                } else {
                    rows.st[r].init_sink(x_sink[r], t == 0);
                }
            }
        }
        if (p.variant == kKvSink) {
            // v' enters O with weight e^{s'−m} = 1 at the start.
#pragma unroll
            for (int dt = 0; dt < kDTiles; ++dt) {
                const int c = dt * 8 + 2 * t;
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    const int hr = row_head(p, hb, row0 + warp * kRowsPerWarp + g + 8 * r);
                    acc_o[dt][2 * r] = c < p.head_dim ? v_param_at(p, hr, c) : 0.f;
                    acc_o[dt][2 * r + 1] = c < p.head_dim ? v_param_at(p, hr, c + 1) : 0.f;
                }
            }
        }
    }

    // Q's channel statistics from the tile in shared memory; then Q's rows become the scratch.
    // (Split: the combine kernel takes Q's, once per row; these records get zeros.)
    float mx[kChunk];
    float q_abs = 0.f;
    if (stats && !split_kv) {
        float unused_norm = 0.f, unused_norm0 = 0.f;
        scan_tile<kBlockM>(s_q, mx, q_abs, false, unused_norm, unused_norm0, -1);
    } else {
#pragma unroll
        for (int e = 0; e < kChunk; ++e) mx[e] = 0.f;
    }
    __syncthreads();  // every warp is done reading Q's rows
    s_sinks[2 * threadIdx.x] = x_sink[0];
    s_sinks[2 * threadIdx.x + 1] = x_sink[1];
    s_key0[2 * threadIdx.x] = s_key0[2 * threadIdx.x + 1] = neg_inf();  // no key 0 in the tiles seen
    if (stats) {
        merge_warp_max(mx, warp_max_slot(s_stats, 0), true);
        add_warp_sum(s_stats, kSumQ, q_abs, true);
        for (int f = kSumK; f < kWarpSums; ++f) add_warp_sum(s_stats, f, 0.f, true);
        // K/V maxima start at 0 (|x| >= 0): a block that owns no tile writes zeros. Each lane
        // initialises the slots merge_warp_max will update, so no barrier is needed.
        if (lane < kChunksPerRow) {
#pragma unroll
            for (int e = 0; e < kChunk; ++e) {
                warp_max_slot(s_stats, 1)[lane * kChunk + e] = 0.f;
                warp_max_slot(s_stats, 2)[lane * kChunk + e] = 0.f;
            }
        }
    }

    const float scale_log2 = p.scale * kLog2e;
    // ClippedSoftmax needs each row's L before any weight: a first pass over K alone.
    for (int pass = clipped ? 0 : 1; pass < 2; ++pass) {
        const bool clip_pass = clipped && pass == 1;
        const bool with_v = pass == 1;
        if (kt.end > kt.begin && !kv0_in_flight) {
            load_kv_tile<kContiguous>(s_k, s_v, p, sp, g_kv, kt.begin, with_v);
            cp_async_commit();
        }
        for (int n = kt.begin; n < kt.end; ++n) {
            const int buf = (n - kt.begin) % 2;
            if (n + 1 < kt.end) {
                // Prefetch the next tile into the other buffer, then wait for this one only.
                const int nb = 1 - buf;
                load_kv_tile<kContiguous>(s_k + nb * kTileElems, s_v + nb * kTileElems, p, sp, g_kv, n + 1, with_v);
                cp_async_commit();
                cp_async_wait<1>();
            } else {
                cp_async_wait<0>();
            }
            __syncthreads();
            const smem_ptr<const elem_t> k_tile = s_k + buf * kTileElems, v_tile = s_v + buf * kTileElems;
            // Tile n lies in one split only: its owner among the query blocks counts it.
            if (kv_stats && with_v && scans_kv_tile(p, sp, h, m_block, n, kBlockM, kBlockN)) {
                count_kv_tile(s_stats, k_tile, v_tile, mx, n == 0);
            }
            if constexpr (kFast) {
                const smem_ptr<float> key0 = s_key0 + 2 * threadIdx.x;
                const int n0 = n * kBlockN;
                if (kt.masked(n)) attend_tile_fast<true>(p, sp, rows, acc_o, q_frag, k_tile, v_tile, n0, scale_log2, key0);
                else attend_tile_fast<false>(p, sp, rows, acc_o, q_frag, k_tile, v_tile, n0, scale_log2, key0);
            } else {
                attend_tile_generic(p, sp, rows, acc_o, q_frag, k_tile, v_tile, n * kBlockN, clip_pass, with_v);
            }
            __syncthreads();  // the buffer is refilled by the next iteration's prefetch
        }
        if constexpr (!kFast) {
            if (clipped && pass == 0) {
#pragma unroll
                for (int r = 0; r < 2; ++r) reduce_row<4>(rows.st[r]);
            }
        }
    }

    // The K/V tiles no block visits (left of every window), for the statistics alone: dealt
    // round robin over the sequence's blocks, as kv_tile_owner deals them (split 0's blocks
    // only: the splits of a query block would count them once each).
    if (kv_stats && blockIdx.x % p.splits == 0) {
        const int blocks = max(ceil_div(sp.q_len, kBlockM), 1);
        for (int n = m_block; n < orphan_tiles(p, sp, kBlockN); n += blocks) {
            load_kv_tile<kContiguous>(s_k, s_v, p, sp, g_kv, n, true);
            cp_async_commit();
            cp_async_wait<0>();
            __syncthreads();
            count_kv_tile(s_stats, s_k, s_v, mx, n == 0);
            __syncthreads();  // the buffers are refilled by the next one
        }
    }

    // Epilogue: the quad's partial sums, then O, LSE and the statistics of each row.
    x_sink[0] = s_sinks[2 * threadIdx.x];
    x_sink[1] = s_sinks[2 * threadIdx.x + 1];
    OnlineRow fin[2];  // the rows in the generic path's terms, for finish_row
    float row_max_record[2], t_record[2];  // the max and t in the path's units (split partials)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        if constexpr (kFast) {
            FastRow& st = rows.st[r];
            st.l = row_sum<4>(st.l);
            st.t2 = row_sum<4>(st.t2);
            fin[r].init();
            fin[r].m = st.m2 == neg_inf() ? neg_inf() : st.m2 * kLn2;
            fin[r].l = st.l;
            fin[r].t = st.t2 * kLn2;
            // Key 0's term, held by the thread t = 0 of the row (the quad's sum is its).
            fin[r].e0 = row_sum<4>(t == 0 ? ex2_ftz(fmaf(s_key0[2 * threadIdx.x + r], scale_log2, -st.m_ref())) : 0.f);
            // The sink's term, which started at 1 with m2 = c·s'.
            fin[r].es = blockIdx.x % p.splits == 0 && sink_in_denominator(p.variant)
                            ? ex2_ftz(x_sink[r] * kLog2e - st.m_ref())
                            : 0.f;
            fin[r].max_score = st.max_s * p.scale;
            row_max_record[r] = st.m2;
            t_record[r] = st.t2;
        } else {
            OnlineRow& st = rows.st[r];
            if (clipped) {
                st.weight_sum = row_sum<4>(st.weight_sum);
                st.w_log_w = row_sum<4>(st.w_log_w);
                st.w0 = row_sum<4>(st.w0);
            } else {
                reduce_row<4>(st);
            }
            fin[r] = st;
            row_max_record[r] = st.m;
            t_record[r] = st.t;
        }
    }

    BlockStats bs;
    bs.init();
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = row0 + warp * kRowsPerWarp + g + 8 * r;
        if (row >= p.fold * sp.q_len) continue;
        const int i = row_query(p, row), hr = row_head(p, hb, row);
        const int bhr = b * p.q_heads + hr;
        if (split_kv) {
            // This split's state of the row and its unnormalised O, for combine_splits.
            const gmem_ptr<float> part = split_partial(p, bhr, i, (int)blockIdx.x % p.splits);
            if (t == 0) {
                part[kSplitMax] = row_max_record[r];
                part[kSplitL] = fin[r].l;
                part[kSplitT] = t_record[r];
                part[kSplitE0] = fin[r].e0;
                part[kSplitEs] = fin[r].es;
                part[kSplitMaxScore] = fin[r].max_score;
                part[kSplitSinkLogit] = x_sink[r];
                part[kSplitWeightSum] = fin[r].weight_sum;
            }
#pragma unroll
            for (int dt = 0; dt < kDTiles; ++dt) {
                const int c = dt * 8 + 2 * t;
                if (c >= p.head_dim) break;
                part[kSplitScalars + c] = acc_o[dt][2 * r];
                part[kSplitScalars + c + 1] = acc_o[dt][2 * r + 1];
            }
            continue;
        }
        const KeyRange kr = key_range(p, sp, i);
        const RowResult res = finish_row(p, fin[r], kr.end > kr.begin, x_sink[r]);
        if (t == 0) write_row_outputs(p, sp, hr, i, res, row_max_record[r], fin[r].weight_sum);
        const bool scaled = p.variant == kContextScale;
        const float gamma_head = scaled && !p.gate_per_channel ? gate_at(p, sp, i, hr, 0) : 1.f;
        if (stats && res.counted && t == 0) {
            bs.add_row(res, fin[r].max_score);
            if (scaled && !p.gate_per_channel) bs.add_gate(gamma_head);
        }
        const gmem_ptr<elem_t> o_row = p.o + q_offset(p, p.lo, sp, i, hr);
#pragma unroll
        for (int dt = 0; dt < kDTiles; ++dt) {
            const int c = dt * 8 + 2 * t;  // this thread's two channels c, c + 1
            if (c >= p.head_dim) break;
            float val[2];
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const float gamma = scaled && p.gate_per_channel ? gate_at(p, sp, i, hr, c + e) : gamma_head;
                val[e] = output_channel(p, res, acc_o[dt][2 * r + e], hr, c + e, gamma);
                if (scaled && stats && p.gate_per_channel && res.counted) bs.add_gate(gamma);
            }
            if (p.o_aligned) {
                // Both channels in one 32-bit store (c is even, d % 8 == 0).
                gmem_cast<unsigned>(o_row + c)[0] = pack2(val[0], val[1]);
            } else {
                o_row[c] = from_float(val[0]);
                o_row[c + 1] = from_float(val[1]);
            }
        }
    }

    if (stats) {
        if (lane == 0) {  // the warp's channel sums, in lane 0 only: write_partials adds lanes
            const smem_ptr<const float> sums = s_stats + kWarpMaxFloats + warp * kWarpSums;
            bs.q_abs = sums[kSumQ];
            bs.k_abs = sums[kSumK];
            bs.v_abs = sums[kSumV];
            bs.v_norm = sums[kSumVNorm];
            bs.v_norm0 = sums[kSumVNorm0];
        }
        // This block's partial statistics record: m_block·splits + split.
        const int record = m_block * p.splits + (int)blockIdx.x % p.splits;
        write_partials<kWarps>(p, bs, s_scratch, bh, record);  // begins with a barrier
        write_channel_max(p, s_stats, bh, record, kv_stats);
    }
}

}  // namespace tc

// The paths are three kernels, so that each gets the registers it needs (the generic path
// needs more, and would push the fast one into spills). The host launches `attention_tc` for
// the softmax family without softcap (`takes_fast_path`) on evenly strided tiles,
// `attention_tc_paged` for it on a paged cache whose pages are not a multiple of the tile,
// `attention_tc_generic` otherwise (src/cuda/spec.rs, `Specialization::forward_entry`).
// grid: (m_blocks, Hq, B); block: tc::kThreads; dynamic shared memory: tc::kSmemBytes.
extern "C" __global__ void __launch_bounds__(tc::kThreads)
attention_tc(const AttnParams p) {
    tc::forward_block<true, true>(p);
}

extern "C" __global__ void __launch_bounds__(tc::kThreads)
attention_tc_paged(const AttnParams p) {
    tc::forward_block<true, false>(p);
}

extern "C" __global__ void __launch_bounds__(tc::kThreads)
attention_tc_generic(const AttnParams p) {
    tc::forward_block<false, false>(p);
}

// ---------------------------------------------------------------------------------------------
// HeadsAndKeys: key_mass[b, h, j] = Σ_i (probability of key j in row i), keys outside: one
// block per tile of kBlockN keys walks every query block that sees them, recomputes S with
// tile_scores (the forward's mma sequence on the same fragments: the same bits) and the
// probabilities from the row records the forward pass wrote (its final max and 1/l, as the
// forward would have normalised them), and sums the columns in registers, in a fixed order.
// grid: (ceil(Nk / kBlockN), Hq, B); block: tc::kThreads; dynamic shared memory: tc::kKeyMassSmemBytes.
// ---------------------------------------------------------------------------------------------
namespace tc {
// A K tile, and Q tiles double buffered.
constexpr int kKeyMassSmemBytes = (kTileElems + 2 * kQElems) * 2;
static_assert(kKeyMassSmemBytes <= kSmemBytes, "the key-mass kernel fits where the forward kernel does");
static_assert(kKeyMassSmemBytes == kHostTcKeyMassSmemBytes, "the host launches with this much");
static_assert(kWarps * kBlockN * 4 <= kTileElems * 2, "the column scratch fits in the K tile");
}  // namespace tc

namespace tc {
template <bool kFast>
DEVICE void key_mass_block(const AttnParams& p) {
    const smem_ptr<elem_t> s_k = dynamic_smem<elem_t>();  // [kBlockN][kHeadDimTile], swizzled
    const smem_ptr<elem_t> s_q = s_k + kTileElems;         // [2][kBlockM][kHeadDimTile]
    const smem_ptr<float> s_cols = smem_cast<float>(s_k);  // [kWarps][kBlockN], after the last tile

    const int n = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int g_kv = h / p.group;
    const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
    const int g = lane / 4, t = lane % 4;
    const int n0 = n * kBlockN;
    const float scale_log2 = p.scale * kLog2e;
    const SeqSpan sp = seq_span(p, b);
    if (sp.bad) {
        poison_key_mass(p, sp, h, n, gridDim.x, kBlockN);
        return;
    }
    if (n0 >= sp.kv_len) {  // past the sequence: 0 where the layout has room (lengths, pages)
        if (p.kv_seqs == kKvPacked) return;
        for (int c = threadIdx.x; c < kBlockN && n0 + c < p.kv_len; c += kThreads) {
            p.key_mass[key_mass_index(p, sp, h, n0 + c)] = 0.f;
        }
        return;
    }

    // The query blocks whose rows see a key of this tile (none: the tile is left of every
    // window, and its key mass is 0).
    const BlockRange visiting = blocks_visiting(p, sp, n, kBlockM, kBlockN);
    const int m_first = visiting.first, m_end = visiting.last + 1;
    if (m_first < m_end) {
        load_tile<kBlockN>(s_k, p.k, p.lk.offset, n0, sp.kv_len, p,
                           [&](int key) { return kv_offset(p, p.lk, sp, key, g_kv); });
        load_q_tile(s_q, p, sp, h, m_first * kBlockM);
        cp_async_commit();
    }

    float col[kNTiles][2];  // this thread's column sums: keys n0 + 8nt + 2t + e, over rows g, g + 8
#pragma unroll
    for (int nt = 0; nt < kNTiles; ++nt) col[nt][0] = col[nt][1] = 0.f;
    for (int m = m_first; m < m_end; ++m) {
        const int buf = (m - m_first) % 2;
        if (m + 1 < m_end) {
            load_q_tile(s_q + (1 - buf) * kQElems, p, sp, h, (m + 1) * kBlockM);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        unsigned q_frag[kKSteps][4];
        load_q_fragments(q_frag, s_q + buf * kQElems);
        float s[kNTiles][4];
        tile_scores(s, q_frag, s_k);
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int row = m * kBlockM + warp * kRowsPerWarp + g + 8 * r;
            if (row >= sp.q_len) continue;
            const gmem_ptr<const float> rec = p.row_records + row_record_index(p, sp, h, row) * kRowRecord;
            const float row_max = rec[kRowMax], inv_l = rec[kRowInvL];
            OnlineRow st;  // what key_probability reads of a finished generic row
            st.init();
            st.m = row_max;
            st.weight_sum = rec[kRowWeightSum];
            const KeyRange kr = key_range(p, sp, row);
#pragma unroll
            for (int nt = 0; nt < kNTiles; ++nt) {
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int j = n0 + nt * 8 + 2 * t + e;
                    const float x = s[nt][2 * r + e];
                    float prob;
                    if constexpr (kFast) {
                        prob = j >= kr.begin && j < kr.end ? fast_probability(x, scale_log2, row_max, inv_l) : 0.f;
                    } else {
                        // As attend_tile_generic turns a score into a logit (without calls).
                        const float l = logit_of<true>(p, sp.sigmoid_bias, score_of<true>(x, p));
                        prob = j >= kr.begin && j < kr.end ? key_probability(p, st, l, inv_l) : 0.f;
                    }
                    col[nt][e] += prob;
                }
            }
        }
        __syncthreads();  // the buffer is refilled by the next iteration's prefetch
    }

    // The eight row groups of a column: lanes t, t + 4, ..., t + 28; then the warps, in order.
#pragma unroll
    for (int nt = 0; nt < kNTiles; ++nt) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            float c = col[nt][e];
            for (int off = 4; off < kWarpSize; off <<= 1) c += __shfl_xor_sync(kFullMask, c, off);
            if (g == 0) s_cols[warp * kBlockN + nt * 8 + 2 * t + e] = c;
        }
    }
    __syncthreads();
    // Keys of the tile past the sequence: 0 (lengths, pages), or another sequence's (packed).
    for (int c = threadIdx.x; c < kBlockN && n0 + c < p.kv_len; c += kThreads) {
        float sum = 0.f;
        for (int w = 0; w < kWarps; ++w) sum += s_cols[w * kBlockN + c];
        if (n0 + c < sp.kv_len) p.key_mass[key_mass_index(p, sp, h, n0 + c)] = sum;
        else if (p.kv_seqs != kKvPacked) p.key_mass[key_mass_index(p, sp, h, n0 + c)] = 0.f;
    }
}
}  // namespace tc

extern "C" __global__ void __launch_bounds__(tc::kThreads)
key_mass(const AttnParams p) {
    if (takes_fast_path(p)) tc::key_mass_block<true>(p);
    else tc::key_mass_block<false>(p);
}
