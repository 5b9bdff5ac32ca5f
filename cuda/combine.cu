// Split-KV decode: the combine of each row's splits (common.cuh, "Split-KV decode"), in the
// tensor-core modules. Rows, like every address, come from the sequence map of common.cuh.
//
// One warp per row, kWarps rows of one (batch, head) per block. Every lane merges the splits'
// scalars in split order (the same loads in every lane) and owns channels lane, lane + 32, ...
// of O. Split s weighs 2^(m_s − m) in the row's units, m the largest m_s; a split that saw
// nothing (m_s = −inf) weighs 0, or 1 when no split saw anything (its sums are then 0, or the
// sink alone), so that (−inf) − (−inf) is never formed, while a NaN sum still reaches the row.
// The order is fixed by the split count, which the host fixes from the shape and the device:
// the same inputs give the same bits.
//
// With statistics, block c writes partial record m_blocks·splits + c of its head (the forward
// blocks of a split call left the row and Q fields of theirs neutral): its rows' statistics,
// Q's channel statistics of its rows (Q is read once more here, a row per warp: the decode's Q
// is tiny next to K/V), and zero K/V fields, which are the forward blocks'.
// grid: (ceil(Nq / kWarps), Hq, B); block: combine::kThreads; no dynamic shared memory.

namespace combine {

constexpr int kWarps = kHostCombineWarps;  // from the host (src/cuda/spec.rs)
constexpr int kThreads = kWarps * kWarpSize;
constexpr int kChannelsPerLane = kMaxHeadDim / kWarpSize;

// Split s's weight `alpha` and the move of its max `shift` (m_s − m, in the row's units: log2
// on the fast path), as the forward kernel rescales a row when its max moves.
DEVICE void split_weight(bool fast, float m_s, float m, float& alpha, float& shift) {
    if (m_s == neg_inf()) {
        alpha = m == neg_inf() ? 1.f : 0.f;
        shift = 0.f;
        return;
    }
    shift = m_s - m;
    alpha = exp2f(fast ? shift : shift * kLog2e);
}

}  // namespace combine

extern "C" __global__ void __launch_bounds__(combine::kThreads)
combine_splits(const AttnParams p) {
    using namespace combine;
    STATIC_SMEM(float, s_scratch, kWarps * kPartialCount);
    STATIC_SMEM(float, s_q_max, kWarps * kMaxHeadDim);  // [kWarps][kMaxHeadDim]: Q's channel maxima
    const int h = blockIdx.y, b = blockIdx.z;
    const int bh = b * p.q_heads + h;
    const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
    const int row = blockIdx.x * kWarps + warp;
    const SeqSpan sp = seq_span(p, b);
    // A sequence that read a bad index: split 0's forward blocks wrote its rows as NaN, and
    // finalize_stats its statistics.
    if (sp.bad) return;
    const bool fast = takes_fast_path(p);
    const bool stats = p.stats_on;
    const bool scaled = p.variant == kContextScale;

    BlockStats bs;
    bs.init();
    float q_max[kChannelsPerLane];
    float q_abs = 0.f;
#pragma unroll
    for (int u = 0; u < kChannelsPerLane; ++u) q_max[u] = 0.f;

    if (row < sp.q_len) {
        const gmem_ptr<const float> part0 = split_partial(p, bh, row, 0);
        float m = neg_inf();
        for (int s = 0; s < p.splits; ++s) m = fmaxf(m, part0[(u64)s * p.split_record + kSplitMax]);
        OnlineRow r;
        r.init();
        float acc[kChannelsPerLane];
#pragma unroll
        for (int u = 0; u < kChannelsPerLane; ++u) acc[u] = 0.f;
        for (int s = 0; s < p.splits; ++s) {
            const gmem_ptr<const float> part = part0 + (u64)s * p.split_record;
            float alpha, shift;
            split_weight(fast, part[kSplitMax], m, alpha, shift);
            const float l_s = part[kSplitL];
            r.t = fmaf(alpha, fmaf(shift, l_s, part[kSplitT]), r.t);
            r.l = fmaf(alpha, l_s, r.l);
            r.e0 = fmaf(alpha, part[kSplitE0], r.e0);
            r.es = fmaf(alpha, part[kSplitEs], r.es);
            r.weight_sum += part[kSplitWeightSum];  // Sigmoid's weights need no max
            r.max_score = fmaxf(r.max_score, part[kSplitMaxScore]);
            // O accumulated softmax terms against m_s (Sigmoid: absolute weights).
            const float w = accumulates_softmax(p.variant) ? alpha : 1.f;
#pragma unroll
            for (int u = 0; u < kChannelsPerLane; ++u) {
                const int c = lane + u * kWarpSize;
                if (c < p.head_dim) acc[u] = fmaf(w, part[kSplitScalars + c], acc[u]);
            }
        }
        // The row in finish_row's (natural) units, as the forward kernel's epilogue has it.
        r.m = fast && m != neg_inf() ? m * kLn2 : m;
        if (fast) r.t *= kLn2;
        const KeyRange kr = key_range(p, sp, row);
        const RowResult res = finish_row(p, r, kr.end > kr.begin, part0[kSplitSinkLogit]);
        if (lane == 0) write_row_outputs(p, sp, h, row, res, m, r.weight_sum);
        const float gamma_head = scaled && !p.gate_per_channel ? gate_at(p, sp, row, h, 0) : 1.f;
        if (stats && res.counted && lane == 0) {
            bs.add_row(res, r.max_score);
            if (scaled && !p.gate_per_channel) bs.add_gate(gamma_head);
        }
        const gmem_ptr<elem_t> o_row = p.o + q_offset(p, p.lo, sp, row, h);
        const gmem_ptr<const elem_t> q_row = p.q + q_offset(p, p.lq, sp, row, h);
#pragma unroll
        for (int u = 0; u < kChannelsPerLane; ++u) {
            const int c = lane + u * kWarpSize;
            if (c >= p.head_dim) break;
            const float gamma = scaled && p.gate_per_channel ? gate_at(p, sp, row, h, c) : gamma_head;
            o_row[c] = from_float(output_channel(p, res, acc[u], h, c, gamma));
            if (stats) {
                if (scaled && p.gate_per_channel && res.counted) bs.add_gate(gamma);
                const float a = fabsf(to_float(q_row[c]));
                q_max[u] = fmaxf(q_max[u], a);
                q_abs += a;
            }
        }
    }
    if (!stats) return;  // uniform over the block

    const int record = p.m_blocks * p.splits + blockIdx.x;
    bs.q_abs = q_abs;                                   // write_partials adds the lanes
    write_partials<kWarps>(p, bs, s_scratch, bh, record);  // begins with a barrier
#pragma unroll
    for (int u = 0; u < kChannelsPerLane; ++u) {
        const int c = lane + u * kWarpSize;
        if (c < p.head_dim) s_q_max[warp * kMaxHeadDim + c] = q_max[u];
    }
    __syncthreads();
    const gmem_ptr<float> rec = partial_record(p, bh, record);
    for (int c = threadIdx.x; c < p.head_dim; c += kThreads) {
        float mx = 0.f;
        for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, s_q_max[w * kMaxHeadDim + c]);
        rec[channel_max_field(p, kTensorQ) + c] = mx;
        rec[channel_max_field(p, kTensorK) + c] = 0.f;
        rec[channel_max_field(p, kTensorV) + c] = 0.f;
    }
}
