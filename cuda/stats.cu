// The statistics record, in every module: `finalize_stats` combines the forward kernel's
// per-block partial records (common.cuh, PartialIndex) in block order, so that the record is
// bit-identical from run to run. The forward kernel took every statistic from what it had in
// shared memory and registers: the row statistics of its rows, Q's channel statistics of its
// Q tile, and K/V's of the K/V tiles it owns (`kv_tile_owner`); there is no other pass over
// Q, K or V. (`key_mass` of HeadsAndKeys is the forward kernel file's: it needs its scores.)

namespace stats {

constexpr int kThreads = kHostStatsThreads;  // from the host (src/cuda/spec.rs)
static_assert(kThreads % kWarpSize == 0, "whole warps");
static_assert(kThreads >= kPartialCount, "one thread per field of the partial record");

// The channel statistics of one tensor over the records of head `first_bh`'s blocks:
// the per-channel maxima in parallel, then the argmax (lowest channel on ties) by thread 0.
// `s_absmax` holds kMaxHeadDim floats. Every thread must call this; the result is thread 0's.
struct ChannelResult {
    float absmax, argmax;
};

DEVICE ChannelResult combine_channels(const AttnParams& p, int first_bh, int tensor, smem_ptr<float> s_absmax) {
    const int d = p.head_dim;
    for (int c = threadIdx.x; c < d; c += kThreads) {
        float m = 0.f;
        for (int k = 0; k < p.part_count; ++k) m = fmaxf(m, partial_record(p, first_bh, k)[channel_max_field(p, tensor) + c]);
        s_absmax[c] = m;
    }
    __syncthreads();
    ChannelResult r = {0.f, 0.f};
    if (threadIdx.x == 0) {
        float best = -1.f;
        int arg = 0;
        for (int c = 0; c < d; ++c) {
            if (s_absmax[c] > best) {  // strict: the lowest channel wins ties
                best = s_absmax[c];
                arg = c;
            }
        }
        r.absmax = best;
        r.argmax = (float)arg;
    }
    __syncthreads();
    return r;
}

}  // namespace stats

// One block per (query head, batch). grid: (Hq, B); block: stats::kThreads.
extern "C" __global__ void __launch_bounds__(stats::kThreads)
finalize_stats(const AttnParams p) {
    using namespace stats;
    STATIC_SMEM(float, s_absmax, kMaxHeadDim);
    STATIC_SMEM(float, s_part, kPartialCount);
    const int h = blockIdx.x, b = blockIdx.y;
    const int bh = b * p.q_heads + h;
    const SeqSpan sp = seq_span(p, b);
    if (sp.bad) {  // the forward blocks wrote no partials: the whole record is NaN
        if (threadIdx.x < kStatCount) p.stats[(u64)bh * kStatCount + threadIdx.x] = quiet_nan();
        return;
    }
    // K and V were counted by the blocks of the first query head of the group.
    const int kv_bh = b * p.q_heads + (h / p.group) * p.group;

    const ChannelResult q = combine_channels(p, bh, kTensorQ, s_absmax);
    const ChannelResult k = combine_channels(p, kv_bh, kTensorK, s_absmax);
    const ChannelResult v = combine_channels(p, kv_bh, kTensorV, s_absmax);

    // Field f over the blocks, in block order, by thread f: Q's and the rows' from this head's
    // blocks, K's and V's from the counting head's.
    if (threadIdx.x < kPartialCount) {
        const int f = threadIdx.x;
        const bool kv_field = f == kPartKAbsSum || f == kPartVAbsSum || f == kPartVNormSum || f == kPartVNorm0;
        const int from = kv_field ? kv_bh : bh;
        float acc = partial_record(p, from, 0)[f];
        for (int m = 1; m < p.part_count; ++m) {
            const float x = partial_record(p, from, m)[f];
            if (f == kPartMaxScore || f == kPartGateMax) acc = fmaxf(acc, x);
            else if (f == kPartGateMin) acc = fminf(acc, x);
            else acc += x;
        }
        s_part[f] = acc;
    }
    __syncthreads();
    if (threadIdx.x != 0) return;

    // Means over the counted rows: 0/0 = NaN for a head with none, as in the reference.
    const float n = s_part[kPartRows];
    // Over a sequence's own queries and keys; over none at all, NaN (as the reference).
    const float q_elems = (float)sp.q_len * (float)p.head_dim, kv_elems = (float)sp.kv_len * (float)p.head_dim;
    const float no_q = sp.q_len == 0 ? quiet_nan() : 0.f, no_kv = sp.kv_len == 0 ? quiet_nan() : 0.f;
    const gmem_ptr<float> out = p.stats + (u64)bh * kStatCount;
    out[kFirstKeyMass] = s_part[kPartFirstKey] / n;
    out[kSinkMass] = s_part[kPartSink] / n;
    out[kMaxScore] = s_part[kPartMaxScore];
    out[kMeanEntropy] = s_part[kPartEntropy] / n;
    out[kQAbsMax] = q.absmax + no_q;
    out[kQAbsMean] = s_part[kPartQAbsSum] / q_elems;
    out[kQArgmax] = q.argmax + no_q;
    out[kKAbsMax] = k.absmax + no_kv;
    out[kKAbsMean] = s_part[kPartKAbsSum] / kv_elems;
    out[kKArgmax] = k.argmax + no_kv;
    out[kVAbsMax] = v.absmax + no_kv;
    out[kVAbsMean] = s_part[kPartVAbsSum] / kv_elems;
    out[kV0NormRatio] = s_part[kPartVNorm0] / (s_part[kPartVNormSum] / (float)sp.kv_len);
    const bool gated = s_part[kPartGateCount] > 0.f;
    out[kGateMin] = gated ? s_part[kPartGateMin] : quiet_nan();
    out[kGateMean] = gated ? s_part[kPartGateSum] / s_part[kPartGateCount] : quiet_nan();
    out[kGateMax] = gated ? s_part[kPartGateMax] : quiet_nan();
    out[kRowMassMean] = s_part[kPartRowMass] / n;
}
