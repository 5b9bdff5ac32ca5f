// The statistics kernels, in every module. Plain SIMT code, and every sum runs in a fixed
// order, so the record is bit-identical from run to run.
//
// Q/K/V channel statistics are split over the grid: `channel_partials` scans kScanRows rows of
// each tensor per block (one record per chunk), and `finalize_stats` combines the chunks in
// order with the forward kernel's per-query-block partials. One block per head scanning whole
// tensors would leave most SMs idle (16 blocks at B = 1, Hq = 16); not yet timed on a GPU.

namespace stats {

constexpr int kThreads = kHostStatsThreads;  // from the host (src/cuda/spec.rs)
constexpr int kWarps = kThreads / kWarpSize;
constexpr int kMaxHeadDim = 256;
constexpr int kMaxChannelsPerLane = kMaxHeadDim / kWarpSize;
constexpr int kScanRows = kHostScanRows;  // rows of each tensor per channel_partials block
constexpr int kTensors = 3;     // Q, K, V
// One chunk's record per tensor: max |x| per channel, then Σ|x|, Σ‖row‖, ‖row 0‖ (chunk 0).
constexpr int kChanMax = 0, kChanAbsSum = kMaxHeadDim, kChanNormSum = kMaxHeadDim + 1,
              kChanNorm0 = kMaxHeadDim + 2, kChanRecord = kMaxHeadDim + 4;
static_assert(kChanRecord == kHostChanRecord, "the host sizes the workspace for this record");
static_assert(kThreads % kWarpSize == 0, "whole warps");

DEVICE int scan_chunks(const AttnParams& p) {
    return (max(p.q_len, p.kv_len) + kScanRows - 1) / kScanRows;
}

// The chunk records live in the workspace after the per-block partials and the row weights:
// [B, Hq, chunks, kTensors, kChanRecord].
DEVICE gmem_ptr<float> chunk_record(const AttnParams& p, int bh, int chunk, int tensor) {
    const gmem_ptr<float> base = p.row_weight_sum + (u64)p.batch * p.q_heads * p.q_len;
    return base + (((u64)bh * scan_chunks(p) + chunk) * kTensors + tensor) * kChanRecord;
}

// Scans rows [begin, end) of one head: warp w takes rows begin + w, begin + w + kWarps, ...,
// lane l channels l, l + 32, ...; then the block's warps are combined into `out` (a chunk
// record). `s_absmax` holds kWarps·kMaxHeadDim floats, `s_sums` 3·kThreads.
DEVICE void scan_chunk(gmem_ptr<const elem_t> base, const TensorLayout& layout, int b, int h, int begin, int end,
                       int d, gmem_ptr<float> out, smem_ptr<float> s_absmax, smem_ptr<float> s_sums) {
    const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
    float absmax[kMaxChannelsPerLane];
#pragma unroll
    for (int u = 0; u < kMaxChannelsPerLane; ++u) absmax[u] = 0.f;
    float abssum = 0.f, norm_sum = 0.f, norm0 = 0.f;
    for (int n = begin + warp; n < end; n += kWarps) {
        const gmem_ptr<const elem_t> row = base + row_offset(layout, b, n, h);
        float sq = 0.f;
#pragma unroll
        for (int u = 0; u < kMaxChannelsPerLane; ++u) {
            const int c = lane + u * kWarpSize;
            if (c < d) {
                const float x = to_float(row[c]);
                const float a = fabsf(x);
                absmax[u] = fmaxf(absmax[u], a);
                abssum += a;
                sq += x * x;
            }
        }
        const float norm = sqrtf(row_sum<kWarpSize>(sq));
        if (lane == 0) {
            norm_sum += norm;
            if (n == 0) norm0 = norm;
        }
    }
#pragma unroll
    for (int u = 0; u < kMaxChannelsPerLane; ++u) s_absmax[warp * kMaxHeadDim + lane + u * kWarpSize] = absmax[u];
    s_sums[threadIdx.x] = abssum;
    s_sums[kThreads + threadIdx.x] = norm_sum;
    s_sums[2 * kThreads + threadIdx.x] = norm0;
    __syncthreads();
    for (int c = threadIdx.x; c < kMaxHeadDim; c += kThreads) {
        float m = 0.f;
        for (int w = 0; w < kWarps; ++w) m = fmaxf(m, s_absmax[w * kMaxHeadDim + c]);
        out[kChanMax + c] = m;
    }
    if (threadIdx.x == 0) {
        float sum = 0.f, nsum = 0.f, n0 = 0.f;
        for (int i = 0; i < kThreads; ++i) {
            sum += s_sums[i];
            nsum += s_sums[kThreads + i];
            n0 += s_sums[2 * kThreads + i];  // only the thread that read row 0 holds its norm
        }
        out[kChanAbsSum] = sum;
        out[kChanNormSum] = nsum;
        out[kChanNorm0] = n0;
    }
    __syncthreads();  // the scratch is reused by the next tensor
}

// The channel statistics of one tensor from its chunk records, combined in chunk order by
// thread 0 (the per-channel maxima in parallel first). `s_absmax` holds kMaxHeadDim floats.
struct ChannelResult {
    float absmax, absmean, argmax, norm_mean, norm0;
};

DEVICE ChannelResult combine_chunks(const AttnParams& p, int bh, int tensor, int rows, smem_ptr<float> s_absmax) {
    const int chunks = scan_chunks(p), d = p.head_dim;
    for (int c = threadIdx.x; c < d; c += kThreads) {
        float m = 0.f;
        for (int k = 0; k < chunks; ++k) m = fmaxf(m, chunk_record(p, bh, k, tensor)[kChanMax + c]);
        s_absmax[c] = m;
    }
    __syncthreads();
    ChannelResult r = {0.f, 0.f, 0.f, 0.f, 0.f};
    if (threadIdx.x == 0) {
        float best = -1.f;
        int arg = 0;
        for (int c = 0; c < d; ++c) {
            if (s_absmax[c] > best) {  // strict: the lowest channel wins ties
                best = s_absmax[c];
                arg = c;
            }
        }
        float sum = 0.f, norm_sum = 0.f;
        for (int k = 0; k < chunks; ++k) {
            const gmem_ptr<const float> rec = chunk_record(p, bh, k, tensor);
            sum += rec[kChanAbsSum];
            norm_sum += rec[kChanNormSum];
        }
        r.absmax = best;
        r.absmean = sum / ((float)rows * (float)d);
        r.argmax = (float)arg;
        r.norm_mean = norm_sum / (float)rows;
        r.norm0 = chunk_record(p, bh, 0, tensor)[kChanNorm0];
    }
    __syncthreads();
    return r;
}

}  // namespace stats

// Channel statistics of Q (head h) and K, V (the kv head h reads) over one chunk of rows.
// grid: (stats::scan_chunks, B·Hq); block: stats::kThreads.
extern "C" __global__ void __launch_bounds__(stats::kThreads)
channel_partials(const AttnParams p) {
    using namespace stats;
    STATIC_SMEM(float, s_absmax, kWarps * kMaxHeadDim);
    STATIC_SMEM(float, s_sums, 3 * kThreads);
    const int chunk = blockIdx.x, bh = blockIdx.y;
    const int b = bh / p.q_heads, h = bh % p.q_heads;
    const int g_kv = h / p.group;
    const int begin = chunk * kScanRows;
    scan_chunk(p.q, p.lq, b, h, begin, min(begin + kScanRows, p.q_len), p.head_dim,
               chunk_record(p, bh, chunk, 0), s_absmax, s_sums);
    scan_chunk(p.k, p.lk, b, g_kv, begin, min(begin + kScanRows, p.kv_len), p.head_dim,
               chunk_record(p, bh, chunk, 1), s_absmax, s_sums);
    scan_chunk(p.v, p.lv, b, g_kv, begin, min(begin + kScanRows, p.kv_len), p.head_dim,
               chunk_record(p, bh, chunk, 2), s_absmax, s_sums);
}

// One block per (batch, query head): combines the forward kernel's partial records in block
// order and the channel chunks in chunk order. grid: B·Hq; block: stats::kThreads.
extern "C" __global__ void __launch_bounds__(stats::kThreads)
finalize_stats(const AttnParams p) {
    using namespace stats;
    STATIC_SMEM(float, s_absmax, kMaxHeadDim);
    const int bh = blockIdx.x;

    const ChannelResult q = combine_chunks(p, bh, 0, p.q_len, s_absmax);
    const ChannelResult k = combine_chunks(p, bh, 1, p.kv_len, s_absmax);
    const ChannelResult v = combine_chunks(p, bh, 2, p.kv_len, s_absmax);
    if (threadIdx.x != 0) return;

    float part[kPartialCount];
    for (int f = 0; f < kPartialCount; ++f) part[f] = p.partials[(u64)bh * p.m_blocks * kPartialCount + f];
    for (int m = 1; m < p.m_blocks; ++m) {
        const gmem_ptr<const float> rec = p.partials + ((u64)bh * p.m_blocks + m) * kPartialCount;
        for (int f = 0; f < kPartialCount; ++f) {
            if (f == kPartMaxScore || f == kPartGateMax) part[f] = fmaxf(part[f], rec[f]);
            else if (f == kPartGateMin) part[f] = fminf(part[f], rec[f]);
            else part[f] += rec[f];
        }
    }
    // Means over the counted rows: 0/0 = NaN for a head with none, as in the reference.
    const float n = part[kPartRows];
    const gmem_ptr<float> out = p.stats + (u64)bh * kStatCount;
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

// The key mass of HeadsAndKeys: the forward kernel's per-query-block sums
// (key_mass_partials), added in block order. grid: (ceil(Nk / kThreads), B·Hq); block:
// stats::kThreads.
extern "C" __global__ void __launch_bounds__(stats::kThreads)
key_mass(const AttnParams p) {
    using namespace stats;
    const int bh = blockIdx.y;
    const int j = blockIdx.x * kThreads + threadIdx.x;
    if (j >= p.kv_len) return;
    float total = 0.f;
    for (int m = 0; m < p.m_blocks; ++m) total += p.key_mass_partials[((u64)bh * p.m_blocks + m) * p.kv_len + j];
    p.key_mass[(u64)bh * p.kv_len + j] = total;
}
