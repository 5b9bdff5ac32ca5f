// Test kernels for the emulator's PTX instructions (tests/cuda_emu_isa.rs). Each runs one warp,
// feeds an instruction index-encoded operands laid out by the PTX ISA's tables as written here,
// and stores every (lane, register) result; the Rust test checks them against the same tables
// written in Rust. Compiled by the emulator only (the emu:: calls are its instructions).

struct LdmatrixArgs {
    gmem_ptr<const unsigned short> in;  // [4 matrices][8 rows][8 columns]
    gmem_ptr<unsigned> out;             // [32 lanes][4 registers]
    int num;                            // 1, 2 or 4 matrices
    int trans;
};

template <int num, bool trans>
void ldmatrix_case(const LdmatrixArgs& a, smem_ptr<const unsigned short> tile, int row_stride) {
    const int lane = threadIdx.x;
    // Lanes 8i..8i+7 give the addresses of rows 0..7 of matrix i.
    const smem_ptr<const unsigned short> row = tile + (lane / 8 * 8 + lane % 8) * row_stride;
    unsigned r[num];
    emu::ldmatrix_sync_aligned_m8n8_shared_b16<num, trans>(r, row.addr());
    for (int i = 0; i < num; ++i) a.out[lane * 4 + i] = r[i];
}

extern "C" __global__ void ldmatrix_test(const LdmatrixArgs a) {
    constexpr int kRowStride = 24;  // elements: 48-byte rows, 16-byte aligned, not contiguous
    const smem_ptr<unsigned short> tile = dynamic_smem<unsigned short>();
    const int lane = threadIdx.x;
    for (int e = lane; e < 4 * 8 * 8; e += 32) tile[(e / 8) * kRowStride + e % 8] = a.in[e];
    __syncwarp();
    switch (a.num * 2 + a.trans) {
        case 2: ldmatrix_case<1, false>(a, tile, kRowStride); break;
        case 3: ldmatrix_case<1, true>(a, tile, kRowStride); break;
        case 4: ldmatrix_case<2, false>(a, tile, kRowStride); break;
        case 5: ldmatrix_case<2, true>(a, tile, kRowStride); break;
        case 8: ldmatrix_case<4, false>(a, tile, kRowStride); break;
        default: ldmatrix_case<4, true>(a, tile, kRowStride); break;
    }
}

struct MmaArgs {
    gmem_ptr<const unsigned short> a;  // A [16][16], 16-bit bits, row-major
    gmem_ptr<const unsigned short> b;  // B [16][8] (k, n), row-major
    gmem_ptr<const float> c;           // C [16][8]
    gmem_ptr<float> d;                 // [32 lanes][4]
    int bf16;
};

// The ISA's m16n8k16 .f16/.bf16 fragment tables, with groupID = lane >> 2 and
// threadID_in_group = lane % 4, element i of a thread's fragment:
//   A: row = groupID + 8 for a2, a3, a6, a7 (else groupID); col = 2·tig + (i & 1), + 8 for a4..a7
//   B: row = 2·tig + (i & 1), + 8 for b2, b3; col = groupID
//   C: row = groupID, + 8 for c2, c3; col = 2·tig + (i & 1)
extern "C" __global__ void mma_test(const MmaArgs m) {
    const int lane = threadIdx.x, group = lane >> 2, tig = lane % 4;
    unsigned a[4], b[2];
    float c[4], d[4];
    for (int reg = 0; reg < 4; ++reg) {
        unsigned halves[2];
        for (int h = 0; h < 2; ++h) {
            const int i = 2 * reg + h;
            const bool lower_rows = i == 2 || i == 3 || i == 6 || i == 7;
            const int row = group + (lower_rows ? 8 : 0);
            const int col = 2 * tig + (i & 1) + (i >= 4 ? 8 : 0);
            halves[h] = m.a[row * 16 + col];
        }
        a[reg] = halves[0] | (halves[1] << 16);
    }
    for (int reg = 0; reg < 2; ++reg) {
        unsigned halves[2];
        for (int h = 0; h < 2; ++h) {
            const int i = 2 * reg + h;
            const int row = 2 * tig + (i & 1) + (i >= 2 ? 8 : 0);
            halves[h] = m.b[row * 8 + group];
        }
        b[reg] = halves[0] | (halves[1] << 16);
    }
    for (int i = 0; i < 4; ++i) c[i] = m.c[(group + (i >= 2 ? 8 : 0)) * 8 + 2 * tig + (i & 1)];
    if (m.bf16) {
        emu::mma_sync_aligned_m16n8k16_row_col_f32<emu::MmaType::Bf16>(d, a, b, c);
    } else {
        emu::mma_sync_aligned_m16n8k16_row_col_f32<emu::MmaType::F16>(d, a, b, c);
    }
    for (int i = 0; i < 4; ++i) m.d[lane * 4 + i] = d[i];
}

struct CopyArgs {
    gmem_ptr<const unsigned char> src;  // 2 x 32 x 16 bytes
    gmem_ptr<unsigned char> out;        // 2 x 32 x 16 bytes, as shared memory held them
};

// Two groups: lane l copies 16 bytes with src-size 16, 8, 4 or 0 (l % 4) into region 0 (.cg),
// then 4 or 8 bytes (.ca) into region 1; wait_group 1 completes the first group only.
extern "C" __global__ void cp_async_test(const CopyArgs a) {
    const int lane = threadIdx.x;
    const smem_ptr<unsigned char> s = dynamic_smem<unsigned char>();
    const uintptr_t src0 = reinterpret_cast<uintptr_t>(a.src.raw()) + lane * 16;
    const unsigned sizes[4] = {16, 8, 4, 0};
    emu::cp_async_cg_shared_global_16((s + lane * 16).addr(), src0, sizes[lane % 4]);
    emu::cp_async_commit_group();
    const uintptr_t src1 = src0 + 512;
    if (lane % 2) {
        emu::cp_async_ca_shared_global<8>((s + 512 + lane * 16).addr(), src1, lane % 4 == 1 ? 8 : 4);
    } else {
        emu::cp_async_ca_shared_global<4>((s + 512 + lane * 16).addr(), src1, 4);
    }
    emu::cp_async_commit_group();
    emu::cp_async_wait_group(1);
    for (int e = 0; e < 16; ++e) a.out[lane * 16 + e] = s[lane * 16 + e];
    emu::cp_async_wait_group(0);
    // Only the cp-size bytes were written: the rest of the 16 keeps the block's poison (0xff).
    for (int e = 0; e < 16; ++e) a.out[512 + lane * 16 + e] = s[512 + lane * 16 + e];
}

struct CvtArgs {
    gmem_ptr<const float> x;  // n floats
    gmem_ptr<unsigned> f16x2;   // n / 2: cvt.rn.f16x2.f32 of (x[2i], x[2i + 1])
    gmem_ptr<unsigned> bf16x2;  // n / 2
    gmem_ptr<float> widened;    // 65536: cvt.f32.f16 of every bit pattern
    gmem_ptr<float> ex2;        // n: ex2.approx.ftz.f32
    int n;
};

extern "C" __global__ void cvt_test(const CvtArgs a) {
    for (int i = threadIdx.x; i < a.n / 2; i += blockDim.x) {
        a.f16x2[i] = emu::cvt_rn_f16x2_f32(a.x[2 * i], a.x[2 * i + 1]);
        a.bf16x2[i] = emu::cvt_rn_bf16x2_f32(a.x[2 * i], a.x[2 * i + 1]);
    }
    for (int i = threadIdx.x; i < 65536; i += blockDim.x) a.widened[i] = emu::cvt_f32_f16((unsigned short)i);
    for (int i = threadIdx.x; i < a.n; i += blockDim.x) a.ex2[i] = emu::ex2_approx_ftz_f32(a.x[i] * 1e-3f);
}

struct ShflArgs {
    gmem_ptr<int> out;  // [6][32]
};

extern "C" __global__ void shfl_test(const ShflArgs a) {
    const int lane = threadIdx.x;
    const int v = 100 + lane;
    a.out[0 * 32 + lane] = __shfl_xor_sync(0xffffffffu, v, 5);
    a.out[1 * 32 + lane] = __shfl_sync(0xffffffffu, v, 7);
    a.out[2 * 32 + lane] = __shfl_up_sync(0xffffffffu, v, 3, 8);
    a.out[3 * 32 + lane] = __shfl_down_sync(0xffffffffu, v, 2, 16);
    a.out[4 * 32 + lane] = (int)__ballot_sync(0xffffffffu, lane % 3 == 0);
    // A sub-warp collective: only the even lanes, reading even lanes.
    int partial = -1;
    if (lane % 2 == 0) partial = __shfl_xor_sync(0x55555555u, v, 2);
    a.out[5 * 32 + lane] = partial;
}

struct MaxNanArgs {
    gmem_ptr<const float> x;  // n floats
    gmem_ptr<float> out;      // n * n: max.NaN.f32 of (x[i], x[j]) at i·n + j
    int n;
};

extern "C" __global__ void max_nan_test(const MaxNanArgs a) {
    for (int e = threadIdx.x; e < a.n * a.n; e += blockDim.x) a.out[e] = emu::max_NaN_f32(a.x[e / a.n], a.x[e % a.n]);
}
