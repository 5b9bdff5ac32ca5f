// SIMT flash attention: every dtype on every architecture, in true f32 arithmetic (no TF32),
// so the f32 parity floor holds. It is the path for f32 inputs and for GPUs without the
// sm_80 tensor-core instructions; the same online softmax and statistics as attention_tc.cu.
//
// One warp owns one query row; a block of kWarps rows shares K/V tiles of kBlockN keys,
// converted to f32 in shared memory. Lane l scores key l % kBlockN over half of the channels
// (l / kBlockN picks the half) and one shuffle adds the halves; for P·V, lane l owns channels
// l, l + 32, ... of O.

namespace simt {

constexpr int kWarps = kHostSimtWarps;             // from the host (src/cuda/spec.rs)
constexpr int kThreads = kWarps * kWarpSize;
constexpr int kBlockN = kWarpSize / 2;             // keys per tile: two lanes per key
constexpr int kMaxChannelsPerLane = kMaxHeadDim / kWarpSize;

static_assert(kBlockN * 2 == kWarpSize, "two lanes score each key");
static_assert(kBlockN == kHostSimtBlockN, "the host sizes shared memory for this tile");

// Shared memory for head dim d, in bytes: K and V tiles with rows padded to d + 1 floats (so
// that the lanes reading one channel of 16 keys hit 16 banks), this block's Q rows, scratch.
// The host computes the same sum (src/cuda/kernels.rs); at d = 256 it is under 48 KiB.
DEVICE int tile_stride(int d) { return d + 1; }

// q·k of this lane's key: its half of the channels, then the other half from the lane that
// holds it. The forward pass and the key-mass pass both take their scores from here.
DEVICE float key_dot(smem_ptr<const float> q_row, smem_ptr<const float> k_row, int c_begin, int c_end) {
    float dot = 0.f;
    for (int c = c_begin; c < c_end; ++c) dot += q_row[c] * k_row[c];
    return dot + __shfl_xor_sync(kFullMask, dot, kBlockN);
}

// Converts keys [n0, n0 + kBlockN) of the sequence's K (and V when `with_v`) to f32 in shared
// memory; keys past Nk_b are zero.
DEVICE void load_kv_tile(const AttnParams& p, smem_ptr<float> s_k, smem_ptr<float> s_v, const SeqSpan& sp, int g_kv,
                         int n0, bool with_v) {
    const int d = p.head_dim, stride = tile_stride(d);
    const KvTile tile = kv_tile(p, sp, n0);
    for (int idx = threadIdx.x; idx < kBlockN * d; idx += kThreads) {
        const int r = idx / d, c = idx % d;
        const bool valid = n0 + r < sp.kv_len;
        s_k[r * stride + c] = valid ? to_float(p.k[kv_tile_row(p, p.lk, sp, tile, n0, r, g_kv) + c]) : 0.f;
        if (with_v) s_v[r * stride + c] = valid ? to_float(p.v[kv_tile_row(p, p.lv, sp, tile, n0, r, g_kv) + c]) : 0.f;
    }
}

// Channel statistics of one f32 row in shared memory (row stride ignored: `row` points at it):
// lane l takes channels l, l + 32, ...; `mx` the largest |x| per channel so far, Σ|x|, and
// with `norm` the row's norm (the same in every lane).
DEVICE float scan_row(smem_ptr<const float> row, int d, float (&mx)[kMaxChannelsPerLane], float& abs_sum) {
    const int lane = threadIdx.x % kWarpSize;
    float sq = 0.f;
#pragma unroll
    for (int u = 0; u < kMaxChannelsPerLane; ++u) {
        const int c = lane + u * kWarpSize;
        if (c < d) {
            const float x = row[c];
            const float a = fabsf(x);
            mx[u] = fmaxf(mx[u], a);
            abs_sum += a;
            sq = fmaf(x, x, sq);
        }
    }
    return sqrt_approx(row_sum<kWarpSize>(sq));
}

// Counts K/V tile n, loaded at s_k, s_v, in this warp's channel statistics.
DEVICE void count_kv_tile(const AttnParams& p, const SeqSpan& sp, smem_ptr<const float> s_k, smem_ptr<const float> s_v,
                          int n0, float (&k_mx)[kMaxChannelsPerLane], float (&v_mx)[kMaxChannelsPerLane], BlockStats& bs) {
    const int stride = tile_stride(p.head_dim), warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
    for (int r = warp; r < kBlockN; r += kWarps) {
        scan_row(s_k + r * stride, p.head_dim, k_mx, bs.k_abs);
        const float norm = scan_row(s_v + r * stride, p.head_dim, v_mx, bs.v_abs);
        if (lane == 0 && n0 + r < sp.kv_len) {  // rows past Nk_b are zero: norm 0
            bs.v_norm += norm;
            if (n0 + r == 0) bs.v_norm0 = norm;
        }
    }
}

// Writes the block's per-channel maxima of one tensor (every warp's `mx`, combined in warp
// order through `scratch`, kWarps·d floats) to its partial record.
DEVICE void write_channel_max(const AttnParams& p, const float (&mx)[kMaxChannelsPerLane], smem_ptr<float> scratch,
                              gmem_ptr<float> rec, int tensor) {
    const int d = p.head_dim, warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
    __syncthreads();  // the scratch's previous use is over
#pragma unroll
    for (int u = 0; u < kMaxChannelsPerLane; ++u) {
        const int c = lane + u * kWarpSize;
        if (c < d) scratch[warp * d + c] = mx[u];
    }
    __syncthreads();
    for (int c = threadIdx.x; c < d; c += kThreads) {
        float m = 0.f;
        for (int w = 0; w < kWarps; ++w) m = fmaxf(m, scratch[w * d + c]);
        rec[channel_max_field(p, tensor) + c] = m;
    }
}

}  // namespace simt

// grid: (ceil(Nq / simt::kWarps), Hq, B); block: simt::kThreads; dynamic shared memory:
// (2·kBlockN·(d + 1) + kWarps·d + kWarps·kPartialCount) floats.
extern "C" __global__ void __launch_bounds__(simt::kThreads)
attention_simt(const AttnParams p) {
    using namespace simt;
    const int d = p.head_dim;
    const int stride = tile_stride(d);
    const smem_ptr<float> s_k = dynamic_smem<float>();        // [kBlockN][d + 1]
    const smem_ptr<float> s_v = s_k + kBlockN * stride;       // [kBlockN][d + 1]
    const smem_ptr<float> s_q = s_v + kBlockN * stride;       // [kWarps][d]
    const smem_ptr<float> s_scratch = s_q + kWarps * d;       // [kWarps][kPartialCount]

    const int h = blockIdx.y, b = blockIdx.z;
    const int bh = b * p.q_heads + h;
    const int g_kv = h / p.group;
    const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
    const int m_block = blockIdx.x;
    const int row0 = m_block * kWarps;
    const int row = row0 + warp;
    const SeqSpan sp = seq_span(p, b);
    if (sp.bad) {  // uniform: the sequence read a bad index; its statistics are finalize's NaN
        poison_rows(p, sp, h, m_block, kWarps);
        return;
    }
    if (row0 >= sp.q_len && !p.stats_on) return;  // past the sequence's queries, nothing to count
    const bool row_valid = row < sp.q_len;
    const int kv = lane % kBlockN;       // the key this lane scores
    const int half = lane / kBlockN;     // which half of the channels it sums
    const int c_begin = half * (d / 2), c_end = c_begin + d / 2;

    const smem_ptr<float> q_row = s_q + warp * d;
    for (int c = lane; c < d; c += kWarpSize) {
        q_row[c] = row_valid ? to_float(p.q[q_offset(p, p.lq, sp, row, h) + c]) : 0.f;
    }
    __syncwarp();

    // Channel statistics: Q's of this block's rows; K's and V's of the tiles it owns
    // (`kv_tile_owner`), in the pass that loads V.
    BlockStats bs;
    bs.init();
    float q_mx[kMaxChannelsPerLane], k_mx[kMaxChannelsPerLane], v_mx[kMaxChannelsPerLane];
#pragma unroll
    for (int u = 0; u < kMaxChannelsPerLane; ++u) q_mx[u] = k_mx[u] = v_mx[u] = 0.f;
    if (p.stats_on) scan_row(q_row, d, q_mx, bs.q_abs);
    const bool kv_stats = p.stats_on && h % p.group == 0;

    const KeyTiles kt = key_tiles(p, sp, row0, kWarps, kBlockN);
    const KeyRange keys = key_range(p, sp, row);

    OnlineRow st;
    st.init();
    float acc[kMaxChannelsPerLane];
#pragma unroll
    for (int u = 0; u < kMaxChannelsPerLane; ++u) acc[u] = 0.f;

    float x_sink = 0.f;
    if (has_sink(p.variant)) {
        float dot = 0.f;
        if (p.variant == kContextBias || p.variant == kKvSink) {
            for (int c = lane; c < d; c += kWarpSize) dot += q_row[c] * k_sink_at(p, h, c);
            dot = row_sum<kWarpSize>(dot);
        }
        x_sink = sink_logit(p, h, dot);
        if (sink_in_denominator(p.variant)) st.init_sink(x_sink, lane == 0);
        if (p.variant == kKvSink) {
#pragma unroll
            for (int u = 0; u < kMaxChannelsPerLane; ++u) {
                const int c = lane + u * kWarpSize;
                if (c < d) acc[u] = v_param_at(p, h, c);
            }
        }
    }

    const bool clipped = p.variant == kClippedSoftmax;
    for (int pass = clipped ? 0 : 1; pass < 2; ++pass) {
        const bool clip_pass = clipped && pass == 1;
        const bool with_v = pass == 1;
        for (int n = kt.begin; n < kt.end; ++n) {
            const int n0 = n * kBlockN;
            __syncthreads();  // everyone is done with the previous tile
            load_kv_tile(p, s_k, s_v, sp, g_kv, n0, with_v);
            __syncthreads();
            if (kv_stats && with_v && scans_kv_tile(p, sp, h, m_block, n, kWarps, kBlockN)) {
                count_kv_tile(p, sp, s_k, s_v, n0, k_mx, v_mx, bs);
            }

            const float dot = key_dot(q_row, s_k + kv * stride, c_begin, c_end);
            const int j = n0 + kv;
            float x = j >= keys.begin && j < keys.end ? score_of(dot, p) : neg_inf();
            if (p.stats_on && !clip_pass && half == 0) st.max_score = fmaxf(st.max_score, x);
            // Lanes of the second half hold the same keys: they take no part in the sums.
            float l = half == 0 ? logit_of(p, sp.sigmoid_bias, x) : neg_inf();
            float inv_l = 0.f;
            if (clip_pass) {
                inv_l = inv_or_zero(st.l);
            } else {
                const float alpha = st.rescale(fmaxf(st.m, row_max<kWarpSize>(l)));
                if (accumulates_softmax(p.variant) && with_v) {
#pragma unroll
                    for (int u = 0; u < kMaxChannelsPerLane; ++u) acc[u] *= alpha;
                }
            }
            const float w = key_weight(st, p, l, clip_pass, inv_l);
            if (p.stats_on && j == 0 && half == 0) st.add_key0(l, w, clip_pass);
            if (!with_v) continue;
            for (int jj = 0; jj < kBlockN; ++jj) {
                const float wj = __shfl_sync(kFullMask, w, jj);
#pragma unroll
                for (int u = 0; u < kMaxChannelsPerLane; ++u) {
                    const int c = lane + u * kWarpSize;
                    if (c < d) acc[u] += wj * s_v[jj * stride + c];
                }
            }
        }
        if (clipped && pass == 0) reduce_row<kWarpSize>(st);
    }

    // The K/V tiles no block visits (left of every window), for the statistics alone, dealt
    // round robin over the sequence's blocks as kv_tile_owner deals them.
    if (kv_stats) {
        const int blocks = max(ceil_div(sp.q_len, kWarps), 1);
        for (int n = m_block; n < orphan_tiles(p, sp, kBlockN); n += blocks) {
            __syncthreads();  // everyone is done with the previous tile
            load_kv_tile(p, s_k, s_v, sp, g_kv, n * kBlockN, true);
            __syncthreads();
            count_kv_tile(p, sp, s_k, s_v, n * kBlockN, k_mx, v_mx, bs);
        }
    }

    if (clipped) {
        st.weight_sum = row_sum<kWarpSize>(st.weight_sum);
        st.w_log_w = row_sum<kWarpSize>(st.w_log_w);
        st.w0 = row_sum<kWarpSize>(st.w0);
    } else {
        reduce_row<kWarpSize>(st);
    }

    if (row_valid) {
        const RowResult res = finish_row(p, st, keys.end > keys.begin, x_sink);
        if (lane == 0) {
            if (p.lse) p.lse[lse_index(p, sp, h, row)] = res.lse;
            if (p.row_records) {
                const gmem_ptr<float> rec = p.row_records + row_record_index(p, sp, h, row) * kRowRecord;
                rec[kRowMax] = st.m;
                rec[kRowInvL] = res.inv_l;
                rec[kRowWeightSum] = st.weight_sum;
            }
        }
        const bool scaled = p.variant == kContextScale;
        const float gamma_head = scaled && !p.gate_per_channel ? gate_at(p, sp, row, h, 0) : 1.f;
        if (p.stats_on && res.counted && lane == 0) {
            bs.add_row(res, st.max_score);
            if (scaled && !p.gate_per_channel) bs.add_gate(gamma_head);
        }
        const gmem_ptr<elem_t> o_row = p.o + q_offset(p, p.lo, sp, row, h);
#pragma unroll
        for (int u = 0; u < kMaxChannelsPerLane; ++u) {
            const int c = lane + u * kWarpSize;
            if (c >= d) break;
            float val = acc[u] * res.out_scale;
            if (res.bias_scale != 0.f) val += res.bias_scale * v_param_at(p, h, c);
            if (scaled) {
                const float gamma = p.gate_per_channel ? gate_at(p, sp, row, h, c) : gamma_head;
                val *= gamma;
                if (p.stats_on && p.gate_per_channel && res.counted) bs.add_gate(gamma);
            }
            o_row[c] = from_float(val);
        }
    }

    if (p.stats_on) {
        write_partials<kWarps>(p, bs, s_scratch, bh, m_block);
        const gmem_ptr<float> rec = partial_record(p, bh, m_block);
        write_channel_max(p, q_mx, s_k, rec, kTensorQ);
        if (kv_stats) {
            write_channel_max(p, k_mx, s_k, rec, kTensorK);
            write_channel_max(p, v_mx, s_k, rec, kTensorV);
        }
    }
}

// HeadsAndKeys: key_mass[b, h, j] = Σ_i (probability of key j in row i), one thread per key,
// the rows in order. The score is key_dot's, operation for operation (the two halves of the
// channels summed in order, then added), and the probability comes from the row record the
// forward pass wrote (its final max and 1/l): the same bits as the forward pass's. A separate
// recomputation that took p = e^{s − LSE} was 6 % off under massive activations (|s| ~ 1e6:
// the rounded LSE and s disagree by 1/16). grid: (ceil(Nk / simt::kThreads), Hq, B); block:
// simt::kThreads.
extern "C" __global__ void __launch_bounds__(simt::kThreads)
key_mass(const AttnParams p) {
    using namespace simt;
    const int h = blockIdx.y, b = blockIdx.z;
    const int g_kv = h / p.group;
    const int j = blockIdx.x * kThreads + threadIdx.x;
    const SeqSpan sp = seq_span(p, b);
    if (sp.bad) {
        poison_key_mass(p, sp, h, blockIdx.x, gridDim.x, kThreads);
        return;
    }
    if (j >= p.kv_len) return;
    if (j >= sp.kv_len) {  // past the sequence: 0 where the layout has room (lengths, pages)
        if (p.kv_seqs != kKvPacked) p.key_mass[key_mass_index(p, sp, h, j)] = 0.f;
        return;
    }
    const int d = p.head_dim, half = d / 2;
    const gmem_ptr<const elem_t> k_row = p.k + kv_offset(p, p.lk, sp, j, g_kv);
    float total = 0.f;
    for (int i = 0; i < sp.q_len; ++i) {
        const KeyRange keys = key_range(p, sp, i);
        if (j < keys.begin || j >= keys.end) continue;
        const gmem_ptr<const elem_t> q_row = p.q + q_offset(p, p.lq, sp, i, h);
        float lo = 0.f, hi = 0.f;
        for (int c = 0; c < half; ++c) lo += to_float(q_row[c]) * to_float(k_row[c]);
        for (int c = half; c < d; ++c) hi += to_float(q_row[c]) * to_float(k_row[c]);
        const gmem_ptr<const float> rec = p.row_records + row_record_index(p, sp, h, i) * kRowRecord;
        OnlineRow st;  // what key_probability reads of a finished row
        st.init();
        st.m = rec[kRowMax];
        st.weight_sum = rec[kRowWeightSum];
        total += key_probability(p, st, logit_of(p, sp.sigmoid_bias, score_of(lo + hi, p)), rec[kRowInvL]);
    }
    p.key_mass[key_mass_index(p, sp, h, j)] = total;
}
