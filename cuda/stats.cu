// The statistics kernels, in every module. Plain SIMT code: they read
// Q, K, V once per head (the forward kernel reads K and V once per query block), and every sum
// runs in a fixed order, so the record is bit-identical from run to run.

namespace stats {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * kWarpSize;
constexpr int kMaxChannelsPerLane = 256 / kWarpSize;

// max |x| per channel, Σ|x| and Σ‖x_row‖ over `rows` rows of one head; warp w takes rows
// w, w + kWarps, ... and lane l channels l, l + 32, ...
struct ChannelScan {
    float absmax[kMaxChannelsPerLane];
    float abssum;
    float norm_sum;
    float norm0;
};

DEVICE ChannelScan scan(const elem_t* base, const TensorLayout& layout, int b, int h, int rows, int d) {
    const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
    ChannelScan s;
#pragma unroll
    for (int u = 0; u < kMaxChannelsPerLane; ++u) s.absmax[u] = 0.f;
    s.abssum = s.norm_sum = s.norm0 = 0.f;
    for (int n = warp; n < rows; n += kWarps) {
        const elem_t* row = base + row_offset(layout, b, n, h);
        float sq = 0.f;
#pragma unroll
        for (int u = 0; u < kMaxChannelsPerLane; ++u) {
            const int c = lane + u * kWarpSize;
            if (c < d) {
                const float x = to_float(row[c]);
                const float a = fabsf(x);
                s.absmax[u] = fmaxf(s.absmax[u], a);
                s.abssum += a;
                sq += x * x;
            }
        }
        const float norm = sqrtf(row_sum<kWarpSize>(sq));
        if (lane == 0) {
            s.norm_sum += norm;
            if (n == 0) s.norm0 = norm;
        }
    }
    return s;
}

// Combines the per-thread scans of the block: max |x| and the lowest channel holding it,
// mean |x|, and the mean row norm and row 0's norm. `s_absmax` holds kWarps·256 floats,
// `s_sums` 3·kThreads.
struct ChannelResult {
    float absmax, absmean, argmax, norm_mean, norm0;
};

DEVICE ChannelResult combine(const ChannelScan& s, int rows, int d, float* s_absmax, float* s_sums) {
    const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
#pragma unroll
    for (int u = 0; u < kMaxChannelsPerLane; ++u) s_absmax[warp * 256 + lane + u * kWarpSize] = s.absmax[u];
    s_sums[threadIdx.x] = s.abssum;
    s_sums[kThreads + threadIdx.x] = s.norm_sum;
    s_sums[2 * kThreads + threadIdx.x] = s.norm0;
    __syncthreads();
    ChannelResult r = {0.f, 0.f, 0.f, 0.f, 0.f};
    if (threadIdx.x == 0) {
        float best = -1.f;
        int arg = 0;
        for (int c = 0; c < d; ++c) {
            float m = 0.f;
            for (int w = 0; w < kWarps; ++w) m = fmaxf(m, s_absmax[w * 256 + c]);
            if (m > best) { best = m; arg = c; }  // strict: the lowest channel wins ties
        }
        float sum = 0.f, norm_sum = 0.f, norm0 = 0.f;
        for (int i = 0; i < kThreads; ++i) {
            sum += s_sums[i];
            norm_sum += s_sums[kThreads + i];
            norm0 += s_sums[2 * kThreads + i];  // only one thread holds row 0's norm
        }
        r.absmax = best;
        r.absmean = sum / ((float)rows * (float)d);
        r.argmax = (float)arg;
        r.norm_mean = norm_sum / (float)rows;
        r.norm0 = norm0;
    }
    __syncthreads();
    return r;
}

}  // namespace stats

// One block per (batch, query head): combines the forward kernel's partial records in block
// order and adds the Q/K/V channel statistics. grid: B·Hq; block: stats::kThreads.
extern "C" __global__ void __launch_bounds__(stats::kThreads)
finalize_stats(const AttnParams p) {
    using namespace stats;
    __shared__ float s_absmax[kWarps * 256];
    __shared__ float s_sums[3 * kThreads];
    const int bh = blockIdx.x;
    const int b = bh / p.q_heads, h = bh % p.q_heads;
    const int g_kv = h / p.group;
    const int d = p.head_dim;

    const ChannelResult q = combine(scan(p.q, p.lq, b, h, p.q_len, d), p.q_len, d, s_absmax, s_sums);
    const ChannelResult k = combine(scan(p.k, p.lk, b, g_kv, p.kv_len, d), p.kv_len, d, s_absmax, s_sums);
    const ChannelResult v = combine(scan(p.v, p.lv, b, g_kv, p.kv_len, d), p.kv_len, d, s_absmax, s_sums);
    if (threadIdx.x != 0) return;

    float part[kPartialCount];
    for (int f = 0; f < kPartialCount; ++f) part[f] = p.partials[(u64)bh * p.m_blocks * kPartialCount + f];
    for (int m = 1; m < p.m_blocks; ++m) {
        const float* rec = p.partials + ((u64)bh * p.m_blocks + m) * kPartialCount;
        for (int f = 0; f < kPartialCount; ++f) {
            if (f == kPartMaxScore || f == kPartGateMax) part[f] = fmaxf(part[f], rec[f]);
            else if (f == kPartGateMin) part[f] = fminf(part[f], rec[f]);
            else part[f] += rec[f];
        }
    }
    // Means over the counted rows: 0/0 = NaN for a head with none, as in the reference.
    const float n = part[kPartRows];
    float* out = p.stats + (u64)bh * kStatCount;
    out[kFirstKeyMass] = part[kPartFirstKey] / n;
    out[kSinkMass] = part[kPartSink] / n;
    out[kMaxScore] = part[kPartMaxScore];
    out[kMeanEntropy] = part[kPartEntropy] / n;
    out[kQAbsMax] = q.absmax;
    out[kQAbsMean] = q.absmean;
    out[kQArgmax] = q.argmax;
    out[kKAbsMax] = k.absmax;
    out[kKAbsMean] = k.absmean;
    out[kKArgmax] = k.argmax;
    out[kVAbsMax] = v.absmax;
    out[kVAbsMean] = v.absmean;
    out[kV0NormRatio] = v.norm0 / v.norm_mean;
    const bool gated = part[kPartGateCount] > 0.f;
    out[kGateMin] = gated ? part[kPartGateMin] : quiet_nan();
    out[kGateMean] = gated ? part[kPartGateSum] / part[kPartGateCount] : quiet_nan();
    out[kGateMax] = gated ? part[kPartGateMax] : quiet_nan();
    out[kRowMassMean] = part[kPartRowMass] / n;
}

// The key mass of HeadsAndKeys: Σ_i p_ij for each key j, recomputing the scores in a second
// pass from the LSE the forward kernel wrote (and W for ClippedSoftmax). Thread (w, l) of a
// block holds key l of the block's kKeys and sums the rows i ≡ w (mod kWarps); the warps'
// sums are added in warp order. grid: (ceil(Nk / 32), B·Hq); block: stats::kThreads;
// dynamic shared memory: 32·(d + 1) + kWarps·32 floats.
extern "C" __global__ void __launch_bounds__(stats::kThreads)
key_mass(const AttnParams p) {
    using namespace stats;
    constexpr int kKeys = kWarpSize;
    extern __shared__ __align__(16) float smem_f[];
    const int d = p.head_dim;
    float* s_k = smem_f;                       // [kKeys][d + 1]
    float* s_part = s_k + kKeys * (d + 1);     // [kWarps][kKeys]
    const int bh = blockIdx.y;
    const int b = bh / p.q_heads, h = bh % p.q_heads;
    const int g_kv = h / p.group;
    const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
    const int j0 = blockIdx.x * kKeys;
    const int j = j0 + lane;

    for (int idx = threadIdx.x; idx < kKeys * d; idx += kThreads) {
        const int r = idx / d, c = idx % d;
        s_k[r * (d + 1) + c] = j0 + r < p.kv_len ? to_float(p.k[row_offset(p.lk, b, j0 + r, g_kv) + c]) : 0.f;
    }
    __syncthreads();

    float mass = 0.f;
    if (j < p.kv_len) {
        for (int i = warp; i < p.q_len; i += kWarps) {
            if (j >= key_end(p, i)) continue;
            const float lse = p.lse[(u64)bh * p.q_len + i];
            if (lse == neg_inf()) continue;
            const elem_t* q_row = p.q + row_offset(p.lq, b, i, h);
            float dot = 0.f;
            for (int c = 0; c < d; ++c) dot += to_float(q_row[c]) * s_k[lane * (d + 1) + c];
            const float x = logit_of(p, score_of(dot, p));
            float prob = expf(x - lse);
            if (p.variant == kClippedSoftmax) {
                const float W = p.row_weight_sum[(u64)bh * p.q_len + i];
                const float w = fminf(fmaxf((p.clip_zeta - p.clip_gamma) * prob + p.clip_gamma, 0.f), 1.f);
                prob = W > 0.f ? w / W : 0.f;
            }
            mass += prob;
        }
    }
    s_part[warp * kKeys + lane] = mass;
    __syncthreads();
    if (warp == 0 && j < p.kv_len) {
        float total = 0.f;
        for (int w = 0; w < kWarps; ++w) total += s_part[w * kKeys + lane];
        p.key_mass[(u64)bh * p.kv_len + j] = total;
    }
}
