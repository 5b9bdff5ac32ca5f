// Tensor-core flash attention (FlashAttention-2 style) for f16 and bf16 on sm_80 and newer.
//
// One thread block computes kBlockM query rows of one (batch, head); each of its kWarps warps
// owns 16 rows. K/V tiles of kBlockN keys stream through shared memory, double buffered with
// cp.async; S = Q·Kᵀ and O += P·V run on mma.sync m16n8k16 (f32 accumulate) with ldmatrix
// fragment loads; the online softmax stays in registers in f32, with exp2 and log2(e) folded.
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
// Shared memory rows are padded by kSmemPad elements (16 bytes): a row stride of an odd
// number of 16-byte units puts the eight rows of an ldmatrix in eight different bank groups.

#ifndef HEAD_DIM_TILE
#error "define HEAD_DIM_TILE (64, 128 or 256)"
#endif

namespace tc {

// The tile sizes come from the host (kHost*, written by src/cuda/spec.rs, which explains them).
constexpr int kHeadDimTile = HEAD_DIM_TILE;  // d is run-time; channels past it are zero-filled
constexpr int kWarps = kHostTcWarps;
constexpr int kThreads = kWarps * kWarpSize;
constexpr int kRowsPerWarp = 16;                      // the m of m16n8k16
constexpr int kBlockM = kWarps * kRowsPerWarp;        // 64 query rows per block
constexpr int kBlockN = kHostTcBlockN;                // keys per K/V tile: 64, or 32 at d = 256
constexpr int kSmemPad = kHostTcSmemPad;
constexpr int kRowStride = kHeadDimTile + kSmemPad;   // elements
constexpr int kChunk = 8;                             // elements per 16-byte copy
constexpr int kChunksPerRow = kHeadDimTile / kChunk;
constexpr int kKSteps = kHeadDimTile / 16;            // k-steps of S = Q·Kᵀ
constexpr int kNTiles = kBlockN / 8;                  // n-tiles of S
constexpr int kDTiles = kHeadDimTile / 8;             // n-tiles of O
constexpr int kTileElems = kBlockN * kRowStride;

static_assert(kHeadDimTile % 16 == 0, "head-dim tile must be a multiple of the mma k");
static_assert(kBlockN % 16 == 0, "key tile must be a multiple of the mma k of P·V");
static_assert((kRowStride * 2 / 16) % 2 == 1, "row stride must be an odd number of 16-byte units");

// Shared memory: Q, then two K tiles, then two V tiles (101376 bytes at d = 256: the 99 KiB
// an sm_86/sm_89 block may have). The statistics scratch reuses Q's rows at the end.
constexpr int kSmemBytes = (kBlockM * kRowStride + 4 * kTileElems) * 2;
static_assert(kWarps * kPartialCount * 4 <= kBlockM * kRowStride * 2, "scratch fits in Q's rows");
static_assert(kSmemBytes <= 99 * 1024, "fits every sm_8x/sm_9x block");
static_assert(kSmemBytes == kHostTcSmemBytes, "the host launches with this much dynamic shared memory");

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
#endif  // OUTLIER_ATTN_EMU

// Copies rows [row0, row0 + kRows) of one head into shared memory (stride kRowStride);
// rows at or past `rows` and channels at or past d are zero-filled, so that padding adds
// nothing to a dot product and multiplies no garbage into O.
template <int kRows>
DEVICE void load_tile(smem_ptr<elem_t> s_tile, gmem_ptr<const elem_t> g_base, const TensorLayout& layout, int b,
                      int h, int row0, int rows, const AttnParams& p) {
    const gmem_ptr<const elem_t> g_origin = g_base + layout.offset;  // a valid, aligned address for zero-fills
    for (int idx = threadIdx.x; idx < kRows * kChunksPerRow; idx += kThreads) {
        const int r = idx / kChunksPerRow;
        const int c = (idx % kChunksPerRow) * kChunk;
        const bool valid = row0 + r < rows && c < p.head_dim;  // d % 8 == 0: whole chunks
        const smem_ptr<elem_t> dst = s_tile + r * kRowStride + c;
        const gmem_ptr<const elem_t> src = valid ? g_base + row_offset(layout, b, row0 + r, h) + c : g_origin;
        if (p.aligned) {
            cp_async_16(dst, src, valid);
        } else {
            // Views whose rows are not 16-byte aligned: plain loads, same zero-fill.
#pragma unroll
            for (int e = 0; e < kChunk; ++e) dst[e] = valid ? src[e] : (elem_t)0;
        }
    }
}

// Per-thread state of the two rows (g, g + 8) a thread holds.
struct Rows {
    OnlineRow st[2];
    float x_sink[2];
    int key_end[2];
};

// S = Q·Kᵀ for this warp's 16 rows and the tile's kBlockN keys (unscaled dot products).
// The forward pass and the key-mass pass both take S from here: the same mma sequence on the
// same fragments, so the same bits.
DEVICE void tile_scores(float (&s)[kNTiles][4], const unsigned (&q_frag)[kKSteps][4], smem_ptr<const elem_t> s_k) {
    const int lane = threadIdx.x % kWarpSize;
#pragma unroll
    for (int nt = 0; nt < kNTiles; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
    // Channels past d are zero in shared memory, so a partial k-step adds nothing.
#pragma unroll
    for (int kk = 0; kk < kKSteps; ++kk) {
#pragma unroll
        for (int np = 0; np < kNTiles / 2; ++np) {
            // Matrices: (keys +0..7, k +0..7), (keys +0..7, k +8..15), (keys +8..15, k +0..7),
            // (keys +8..15, k +8..15) = b0, b1 of n-tile 2np, then of n-tile 2np + 1.
            const int key = np * 16 + (lane % 8) + (lane / 16) * 8;
            const int chan = kk * 16 + ((lane / 8) % 2) * 8;
            unsigned b[4];
            ldmatrix_x4(b, s_k + key * kRowStride + chan);
            mma_16816(s[2 * np], q_frag[kk], b[0], b[1]);
            mma_16816(s[2 * np + 1], q_frag[kk], b[2], b[3]);
        }
    }
}

// HeadsAndKeys: the probabilities of the tile's keys summed over this warp's rows, into
// s_cols[warp][key]. `live` excludes the block's rows past Nq; `inv_l` = 1/l of each row.
DEVICE void key_mass_tile(const AttnParams& p, const Rows& rows, const bool (&live)[2], const float (&inv_l)[2],
                          const unsigned (&q_frag)[kKSteps][4], smem_ptr<const elem_t> s_k, int n0,
                          smem_ptr<float> s_cols) {
    const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
    const int g = lane / 4, t = lane % 4;
    float s[kNTiles][4];
    tile_scores(s, q_frag, s_k);
#pragma unroll
    for (int nt = 0; nt < kNTiles; ++nt) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const int j = n0 + nt * 8 + 2 * t + e;
            float col = 0.f;
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                // As attend_tile turns a score into a logit.
                float x = score_of(s[nt][2 * r + e], p);
                if (j >= rows.key_end[r]) x = neg_inf();
                x = logit_of(p, x);
                if (live[r]) col += key_probability(p, rows.st[r], x, inv_l[r]);
            }
            // The eight row groups of the column: lanes t, t + 4, ..., t + 28.
            for (int off = 4; off < kWarpSize; off <<= 1) col += __shfl_xor_sync(kFullMask, col, off);
            if (g == 0) s_cols[warp * kBlockN + nt * 8 + 2 * t + e] = col;
        }
    }
}

// One K/V tile of the main loop. Every tile is masked (a compare and a select per score):
// separate masked and unmasked instantiations took ptxas from 11.1 s to 16.7 s for bf16 at
// d = 128 on sm_90 (first-use compile time), for a saving small next to the exponentials.
DEVICE void attend_tile(const AttnParams& p, Rows& rows, float (&acc_o)[kDTiles][4],
                        const unsigned (&q_frag)[kKSteps][4], smem_ptr<const elem_t> s_k, smem_ptr<const elem_t> s_v,
                        int n0, bool clip_pass, bool with_v) {
    const int lane = threadIdx.x % kWarpSize;
    const int t = lane % 4;

    float s[kNTiles][4];
    tile_scores(s, q_frag, s_k);

    // Scores, mask, logits; then the online-softmax step, one row at a time.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        OnlineRow& st = rows.st[r];
        float tile_max = neg_inf();
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int j = n0 + nt * 8 + 2 * t + e;
                float x = score_of(s[nt][2 * r + e], p);
                if (j >= rows.key_end[r]) x = neg_inf();
                // Sigmoid's logits are not its scores: the max must see x itself.
                if (p.stats_on && !clip_pass && p.variant == kSigmoid) st.max_score = fmaxf(st.max_score, x);
                x = logit_of(p, x);
                s[nt][2 * r + e] = x;
                tile_max = fmaxf(tile_max, x);
            }
        }
        // Elsewhere the logits are the scores: one max per tile serves max_score.
        if (p.stats_on && !clip_pass && p.variant != kSigmoid) st.max_score = fmaxf(st.max_score, tile_max);
        float inv_l = 0.f;
        if (clip_pass) {
            inv_l = st.l > 0.f ? 1.f / st.l : 0.f;
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
    if (!with_v) return;

    // O += P·V. P is rounded to the input dtype, as any 16-bit flash kernel must.
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
        const unsigned a[4] = {pack2(s[2 * kk][0], s[2 * kk][1]), pack2(s[2 * kk][2], s[2 * kk][3]),
                               pack2(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                               pack2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
        for (int dp = 0; dp < kDTiles / 2; ++dp) {
            // Matrices (transposed): (keys +0..7, chans +0..7), (keys +8..15, chans +0..7),
            // (keys +0..7, chans +8..15), (keys +8..15, chans +8..15) = b0, b1 of O's n-tile
            // 2dp, then of n-tile 2dp + 1.
            const int key = kk * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
            const int chan = dp * 16 + (lane / 16) * 8;
            unsigned b[4];
            ldmatrix_x4_trans(b, s_v + key * kRowStride + chan);
            mma_16816(acc_o[2 * dp], a, b[0], b[1]);
            mma_16816(acc_o[2 * dp + 1], a, b[2], b[3]);
        }
    }
}

}  // namespace tc

// grid: (m_blocks, B·Hq); block: tc::kThreads; dynamic shared memory: tc::kSmemBytes.
extern "C" __global__ void __launch_bounds__(tc::kThreads)
attention_tc(const AttnParams p) {
    using namespace tc;
    const smem_ptr<elem_t> s_q = dynamic_smem<elem_t>();                // [kBlockM][kRowStride]
    const smem_ptr<elem_t> s_k = s_q + kBlockM * kRowStride;              // [2][kBlockN][kRowStride]
    const smem_ptr<elem_t> s_v = s_k + 2 * kTileElems;                    // [2][kBlockN][kRowStride]
    const smem_ptr<float> s_scratch = smem_cast<float>(s_q);  // [kWarps][kPartialCount], once Q is in registers

    const int m_block = blockIdx.x;
    const int bh = blockIdx.y;
    const int b = bh / p.q_heads, h = bh % p.q_heads;
    const int g_kv = h / p.group;
    const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
    const int g = lane / 4, t = lane % 4;
    const int row0 = m_block * kBlockM;

    // Keys the block needs: up to what its last row sees.
    const int last_row = min(row0 + kBlockM, p.q_len) - 1;
    const int n_tiles = (key_end(p, last_row) + kBlockN - 1) / kBlockN;

    // Q, and (single pass) the first K/V tile behind it, so that its latency hides under the
    // Q fragment loads and the sink set-up.
    const bool clipped = p.variant == kClippedSoftmax;
    const bool kv0_in_flight = !clipped && n_tiles > 0;
    load_tile<kBlockM>(s_q, p.q, p.lq, b, h, row0, p.q_len, p);
    cp_async_commit();
    if (kv0_in_flight) {
        load_tile<kBlockN>(s_k, p.k, p.lk, b, g_kv, 0, p.kv_len, p);
        load_tile<kBlockN>(s_v, p.v, p.lv, b, g_kv, 0, p.kv_len, p);
        cp_async_commit();
        cp_async_wait<1>();  // Q only
    } else {
        cp_async_wait<0>();
    }
    __syncthreads();

    unsigned q_frag[kKSteps][4];
#pragma unroll
    for (int kk = 0; kk < kKSteps; ++kk) {
        // Matrices: (rows +0..7, k +0..7), (rows +8..15, k +0..7), (rows +0..7, k +8..15),
        // (rows +8..15, k +8..15) = a0..a3.
        ldmatrix_x4(q_frag[kk], s_q + (warp * kRowsPerWarp + lane % 16) * kRowStride + kk * 16 + (lane / 16) * 8);
    }

    Rows rows;
    float acc_o[kDTiles][4];
#pragma unroll
    for (int dt = 0; dt < kDTiles; ++dt) acc_o[dt][0] = acc_o[dt][1] = acc_o[dt][2] = acc_o[dt][3] = 0.f;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        rows.st[r].init();
        rows.key_end[r] = key_end(p, row0 + warp * kRowsPerWarp + g + 8 * r);
        rows.x_sink[r] = 0.f;
    }

    // The sink: s' needs q·k' of each row; the warp reduces each of its 16 rows in turn.
    if (has_sink(p.variant)) {
        for (int rr = 0; rr < kRowsPerWarp; ++rr) {
            float dot = 0.f;
            if (p.variant == kContextBias || p.variant == kKvSink) {
                const smem_ptr<const elem_t> q_row = s_q + (warp * kRowsPerWarp + rr) * kRowStride;
                for (int c = lane; c < p.head_dim; c += kWarpSize) dot += to_float(q_row[c]) * p.k_sink[h * p.head_dim + c];
                dot = row_sum<kWarpSize>(dot);
            }
            const float x = sink_logit(p, h, dot);
            if (rr == g) rows.x_sink[0] = x;
            if (rr == g + 8) rows.x_sink[1] = x;
        }
        if (sink_in_denominator(p.variant)) {
#pragma unroll
            for (int r = 0; r < 2; ++r) rows.st[r].init_sink(rows.x_sink[r], t == 0);
        }
        if (p.variant == kKvSink) {
            // v' enters O with weight e^{s'−m} = 1 at the start.
#pragma unroll
            for (int dt = 0; dt < kDTiles; ++dt) {
                const int c = dt * 8 + 2 * t;
                const float v0 = c < p.head_dim ? p.v_param[h * p.head_dim + c] : 0.f;
                const float v1 = c < p.head_dim ? p.v_param[h * p.head_dim + c + 1] : 0.f;
                acc_o[dt][0] = acc_o[dt][2] = v0;
                acc_o[dt][1] = acc_o[dt][3] = v1;
            }
        }
    }

    // ClippedSoftmax needs each row's L before any weight: a first pass over K alone.
    for (int pass = clipped ? 0 : 1; pass < 2; ++pass) {
        const bool clip_pass = clipped && pass == 1;
        const bool with_v = pass == 1;
        if (n_tiles > 0 && !kv0_in_flight) {
            load_tile<kBlockN>(s_k, p.k, p.lk, b, g_kv, 0, p.kv_len, p);
            if (with_v) load_tile<kBlockN>(s_v, p.v, p.lv, b, g_kv, 0, p.kv_len, p);
            cp_async_commit();
        }
        for (int n = 0; n < n_tiles; ++n) {
            const int buf = n % 2;
            if (n + 1 < n_tiles) {
                // Prefetch the next tile into the other buffer, then wait for this one only.
                const int nb = (n + 1) % 2;
                load_tile<kBlockN>(s_k + nb * kTileElems, p.k, p.lk, b, g_kv, (n + 1) * kBlockN, p.kv_len, p);
                if (with_v) load_tile<kBlockN>(s_v + nb * kTileElems, p.v, p.lv, b, g_kv, (n + 1) * kBlockN, p.kv_len, p);
                cp_async_commit();
                cp_async_wait<1>();
            } else {
                cp_async_wait<0>();
            }
            __syncthreads();
            attend_tile(p, rows, acc_o, q_frag, s_k + buf * kTileElems, s_v + buf * kTileElems, n * kBlockN,
                        clip_pass, with_v);
            __syncthreads();  // the buffer is refilled by the next iteration's prefetch
        }
        if (clipped && pass == 0) {
#pragma unroll
            for (int r = 0; r < 2; ++r) reduce_row<4>(rows.st[r]);
        }
    }

    // Epilogue: the quad's partial sums, then O, LSE and the statistics of each row.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        OnlineRow& st = rows.st[r];
        if (clipped) {
            st.weight_sum = row_sum<4>(st.weight_sum);
            st.w_log_w = row_sum<4>(st.w_log_w);
            st.w0 = row_sum<4>(st.w0);
        } else {
            reduce_row<4>(st);
        }
    }

    BlockStats bs;
    bs.init();
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = row0 + warp * kRowsPerWarp + g + 8 * r;
        if (row >= p.q_len) continue;
        const RowResult res = finish_row(p, rows.st[r], rows.key_end[r] > 0, rows.x_sink[r]);
        if (t == 0) {
            p.lse[(u64)bh * p.q_len + row] = res.lse;
            if (p.stats_on && clipped) p.row_weight_sum[(u64)bh * p.q_len + row] = rows.st[r].weight_sum;
        }
        const bool scaled = p.variant == kContextScale;
        const float gamma_head = scaled && !p.gate_per_channel ? gate_at(p, b, row, h, 0) : 1.f;
        if (p.stats_on && res.counted && t == 0) {
            bs.add_row(res, rows.st[r].max_score);
            if (scaled && !p.gate_per_channel) bs.add_gate(gamma_head);
        }
        const gmem_ptr<elem_t> o_row = p.o + row_offset(p.lo, b, row, h);
#pragma unroll
        for (int dt = 0; dt < kDTiles; ++dt) {
            const int c = dt * 8 + 2 * t;
            if (c >= p.head_dim) break;
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                float val = acc_o[dt][2 * r + e] * res.out_scale;
                if (res.bias_scale != 0.f) val += res.bias_scale * p.v_param[h * p.head_dim + c + e];
                if (scaled) {
                    const float gamma = p.gate_per_channel ? gate_at(p, b, row, h, c + e) : gamma_head;
                    val *= gamma;
                    if (p.stats_on && p.gate_per_channel && res.counted) bs.add_gate(gamma);
                }
                o_row[c + e] = from_float(val);
            }
        }
    }

    // HeadsAndKeys: each key's probability summed over this block's rows, from the very scores
    // the passes above normalised (the same tile_scores, the row's own m and l). Fixed while
    // running these kernels on the CPU emulator: a separate kernel recomputed the scores with a
    // sequential f32 dot product and took p = e^{s − LSE}; under massive activations (|s| ~ 1e6,
    // ulp 0.125) its scores and the rounded LSE disagreed with the forward pass by 1/16, a 6 %
    // error in every probability. The per-block sums are added in block order by `key_mass`.
    if (p.key_mass) {
        const smem_ptr<float> s_cols = smem_cast<float>(s_v);  // [kWarps][kBlockN]; V is not read again
        bool live[2];
        float inv_l[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            live[r] = row0 + warp * kRowsPerWarp + g + 8 * r < p.q_len;
            inv_l[r] = rows.st[r].l > 0.f ? 1.f / rows.st[r].l : 0.f;
        }
        const gmem_ptr<float> partial = p.key_mass_partials + ((u64)bh * p.m_blocks + m_block) * p.kv_len;
        for (int n = 0; n < n_tiles; ++n) {
            __syncthreads();  // the previous K tile and column sums are consumed
            load_tile<kBlockN>(s_k, p.k, p.lk, b, g_kv, n * kBlockN, p.kv_len, p);
            cp_async_commit();
            cp_async_wait<0>();
            __syncthreads();
            key_mass_tile(p, rows, live, inv_l, q_frag, s_k, n * kBlockN, s_cols);
            __syncthreads();
            for (int c = threadIdx.x; c < kBlockN && n * kBlockN + c < p.kv_len; c += kThreads) {
                float sum = 0.f;
                for (int w = 0; w < kWarps; ++w) sum += s_cols[w * kBlockN + c];
                partial[n * kBlockN + c] = sum;
            }
        }
        // Keys past the last tile: no row of this block sees them.
        for (int j = n_tiles * kBlockN + threadIdx.x; j < p.kv_len; j += kThreads) partial[j] = 0.f;
    }
    if (p.stats_on) write_partials<kWarps>(p, bs, s_scratch, bh, m_block);
}
