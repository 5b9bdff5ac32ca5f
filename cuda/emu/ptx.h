// outlier-attn CUDA emulator, part 2: the instructions, with their semantics from the PTX ISA
// (not from the kernels that use them). Each function is named after its PTX instruction and
// takes its operands in the instruction's order. tests/cuda_emu_isa.rs checks every (lane,
// register) element of each against the ISA's fragment tables.
#pragma once

#include "runtime.h"

namespace emu {

// ---------------------------------------------------------------------------------------------
// Conversions (cvt): round to nearest, ties to even; overflow to infinity; NaN to the canonical
// NaN 0x7fff. Bit patterns travel as integers, as in the kernels.
// ---------------------------------------------------------------------------------------------
inline float bits_to_float(uint32_t u) { return std::bit_cast<float>(u); }
inline uint32_t float_to_bits(float f) { return std::bit_cast<uint32_t>(f); }

// cvt.f32.f16: exact.
inline float cvt_f32_f16(uint16_t h) {
    const uint32_t sign = uint32_t(h >> 15) << 31;
    const int exp = (h >> 10) & 0x1f;
    const uint32_t man = h & 0x3ff;
    if (exp == 0x1f) return bits_to_float(sign | 0x7f800000u | (man << 13));  // inf, NaN (payload kept)
    if (exp == 0) {
        const float mag = std::ldexp(float(man), -24);  // subnormal (or zero): man · 2^-24
        return sign ? -mag : mag;
    }
    return bits_to_float(sign | (uint32_t(exp - 15 + 127) << 23) | (man << 13));
}

// cvt.rn.f16.f32.
inline uint16_t cvt_rn_f16_f32(float f) {
    const uint32_t u = float_to_bits(f);
    const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
    if (std::isnan(f)) return 0x7fff;
    const float a = std::fabs(f);
    if (a >= 65520.f) return sign | 0x7c00u;  // rounds past the largest finite value (65504)
    if (a < std::ldexp(1.f, -14)) {
        // Subnormal range: a multiple of 2^-24, rounded to nearest even by the FPU (exact scaling).
        const float q = std::nearbyint(a * 16777216.f);  // default rounding: ties to even
        return sign | uint16_t(q);                          // q = 1024 is the smallest normal: right bits
    }
    int e;
    std::frexp(a, &e);  // a = m · 2^e, m in [0.5, 1)
    const float unit = std::ldexp(1.f, e - 11);  // spacing of f16 values in [2^(e-1), 2^e)
    const float q = std::nearbyint(a / unit);    // 1024..2048
    uint32_t man = uint32_t(q);
    int exp = e - 1 + 15;
    if (man == 2048) {
        man = 1024;
        exp += 1;
    }
    if (exp >= 31) return sign | 0x7c00u;
    return sign | uint16_t(exp << 10) | uint16_t(man - 1024);
}

// cvt.rn.bf16.f32.
inline uint16_t cvt_rn_bf16_f32(float f) {
    if (std::isnan(f)) return 0x7fff;
    const uint32_t u = float_to_bits(f);
    const uint32_t lsb = (u >> 16) & 1u;
    return uint16_t((u + 0x7fffu + lsb) >> 16);  // carries into the exponent round up to inf correctly
}

inline float cvt_f32_bf16(uint16_t h) { return bits_to_float(uint32_t(h) << 16); }

// cvt.rn.f16x2.f32 d, a, b: "the value converted from a is stored in the upper half of d and
// the value converted from b in the lower half".
inline uint32_t cvt_rn_f16x2_f32(float a, float b) {
    return (uint32_t(cvt_rn_f16_f32(a)) << 16) | cvt_rn_f16_f32(b);
}
inline uint32_t cvt_rn_bf16x2_f32(float a, float b) {
    return (uint32_t(cvt_rn_bf16_f32(a)) << 16) | cvt_rn_bf16_f32(b);
}

// ex2.approx.f32 (maximum relative error 2^-22 in the ISA; the host's exp2f is closer) and
// ex2.approx.ftz.f32 (subnormal inputs and results flushed to sign-preserving zero).
inline float ex2_approx_f32(float x) { return std::exp2f(x); }
inline float ex2_approx_ftz_f32(float x) {
    if (std::fpclassify(x) == FP_SUBNORMAL) x = std::copysign(0.f, x);
    const float r = std::exp2f(x);
    return std::fpclassify(r) == FP_SUBNORMAL ? 0.f : r;
}

// max.NaN.f32: NaN if either operand is NaN (plain max returns the other operand).
inline float max_NaN_f32(float a, float b) { return std::isnan(a) || std::isnan(b) ? bits_to_float(0x7fffffffu) : std::fmax(a, b); }

// sqrt.approx.f32 (an approximation on the GPU; the host's sqrt is correctly rounded).
inline float sqrt_approx_f32(float x) { return std::sqrt(x); }

// ---------------------------------------------------------------------------------------------
// Warp shuffles (shfl.sync) and votes. Every lane of `mask` must execute the same call; a lane
// reading a lane outside the mask is a fault. The clamp `c` of shfl is derived from `width`
// as __shfl_*_sync do: lanes are split into segments of `width`.
// ---------------------------------------------------------------------------------------------
enum class ShflMode { Idx, Up, Down, Bfly };

template <class T>
inline T shfl_sync(const char* what, ShflMode mode, unsigned mask, T value, int b, int width, std::source_location site) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>);
    if (width < 1 || width > 32 || (width & (width - 1))) fault(std::string(what) + ": width " + std::to_string(width) + " is not a power of two up to 32");
    struct In {
        T value;
        int b, width;
        ShflMode mode;
    } in{value, b, width, mode};
    collective(what, site, mask, in, [](Collective& c) {
        for (int lane = 0; lane < 32; ++lane) {
            if (!(c.mask >> lane & 1u)) continue;
            In me;
            std::memcpy(&me, c.in[lane], sizeof me);
            const int seg = lane & ~(me.width - 1), pos = lane & (me.width - 1);
            int src = lane;
            switch (me.mode) {
                case ShflMode::Idx: src = seg + (me.b & (me.width - 1)); break;
                case ShflMode::Up: src = pos - me.b >= 0 ? lane - me.b : lane; break;
                case ShflMode::Down: src = pos + me.b < me.width ? lane + me.b : lane; break;
                case ShflMode::Bfly: src = (pos ^ me.b) < me.width ? seg + (pos ^ (me.b & 31)) : lane; break;
            }
            if (!(c.mask >> src & 1u)) {
                fault_at(c.warp * 32 + lane, std::string(c.what) + " at " + where(c.site) + " reads lane " + std::to_string(src) +
                                                 ", which is not in the mask " + hex(c.mask));
            }
            In other;
            std::memcpy(&other, c.in[src], sizeof other);
            std::memcpy(g_launch->threads[c.warp * 32 + lane].out, &other.value, sizeof(T));
        }
    });
    T out;
    std::memcpy(&out, g_launch->current->out, sizeof(T));
    return out;
}

// vote.sync.ballot.b32 (and any/all from it).
inline unsigned vote_ballot_sync(const char* what, unsigned mask, bool pred, std::source_location site) {
    collective(what, site, mask, pred, [](Collective& c) {
        unsigned bits = 0;
        for (int lane = 0; lane < 32; ++lane) {
            if ((c.mask >> lane & 1u) && c.in[lane][0]) bits |= 1u << lane;
        }
        for (int lane = 0; lane < 32; ++lane) {
            if (c.mask >> lane & 1u) std::memcpy(g_launch->threads[c.warp * 32 + lane].out, &bits, 4);
        }
    });
    unsigned out;
    std::memcpy(&out, g_launch->current->out, 4);
    return out;
}

// ---------------------------------------------------------------------------------------------
// ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{.trans}.shared.b16 r, [p]
// Matrix i (of `num`) has its eight row addresses in lanes 8i..8i+7; each row is 8 contiguous
// b16 (16 bytes, 16-byte aligned). Register r[i] of lane l receives row l/4, columns
// 2(l%4) and 2(l%4)+1 of matrix i (the lower column in the lower half); with .trans, of the
// transposed matrix: elements (2(l%4), l/4) and (2(l%4)+1, l/4) of the rows as stored.
// All 32 lanes take part; the addresses of lanes past 8·num are not used.
// ---------------------------------------------------------------------------------------------
template <int num, bool trans>
inline void ldmatrix_sync_aligned_m8n8_shared_b16(uint32_t (&r)[num], uintptr_t p,
                                                  std::source_location site = std::source_location::current()) {
    static_assert(num == 1 || num == 2 || num == 4);
    collective(trans ? "ldmatrix.sync.aligned.m8n8.trans.shared.b16" : "ldmatrix.sync.aligned.m8n8.shared.b16", site,
               0xffffffffu, p, [](Collective& c) {
                   uint16_t m[num][8][8];
                   for (int i = 0; i < num; ++i) {
                       for (int row = 0; row < 8; ++row) {
                           const int lane = 8 * i + row;
                           const int thread = c.warp * 32 + lane;
                           uintptr_t a;
                           std::memcpy(&a, c.in[lane], sizeof a);
                           if (a % 16) fault_at(thread, std::string(c.what) + " at " + where(c.site) + ": row address " + hex(a) + " is not 16-byte aligned");
                           Region* reg = check_shared(a, 0, 16, "ldmatrix row read", thread);
                           check_not_pending(reg, a, 16, "ldmatrix row read", thread);
                           check_race(reg, a, 16, false, "an ldmatrix row read", thread);
                           std::memcpy(m[i][row], reinterpret_cast<const void*>(a), 16);
                       }
                   }
                   for (int lane = 0; lane < 32; ++lane) {
                       uint32_t out[num];
                       const int g = lane / 4, t = lane % 4;
                       for (int i = 0; i < num; ++i) {
                           const uint16_t lo = trans ? m[i][2 * t][g] : m[i][g][2 * t];
                           const uint16_t hi = trans ? m[i][2 * t + 1][g] : m[i][g][2 * t + 1];
                           out[i] = uint32_t(lo) | (uint32_t(hi) << 16);
                       }
                       std::memcpy(g_launch->threads[c.warp * 32 + lane].out, out, sizeof out);
                   }
               });
    std::memcpy(r, g_launch->current->out, sizeof r);
}

// ---------------------------------------------------------------------------------------------
// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32 d, a, b, c
// With g = lane / 4 (groupID) and t = lane % 4 (threadID_in_group), the ISA's tables:
//   A 16x16 (a0..a7 in four b32, the lower index in the lower half):
//     row = g for a0, a1, a4, a5 and g + 8 for a2, a3, a6, a7
//     col = 2t + (i & 1) for a0..a3 and 2t + 8 + (i & 1) for a4..a7
//   B 16x8 (b0..b3 in two b32): row (k) = 2t + (i & 1) for b0, b1 and 2t + 8 + (i & 1) for b2, b3;
//     col = g
//   C, D 16x8 f32 (c0..c3): row = g for c0, c1 and g + 8 for c2, c3; col = 2t + (i & 1)
// D = A·B + C. Products of 16-bit values are exact in f32; the emulator sums them exactly (in
// double) and rounds once to f32, at least as accurate as the tensor cores.
// ---------------------------------------------------------------------------------------------
enum class MmaType { F16, Bf16 };

struct MmaOperands {
    uint32_t a[4];
    uint32_t b[2];
    float c[4];
};

inline int mma_a_row(int lane, int i) { return lane / 4 + ((i / 2) % 2) * 8; }
inline int mma_a_col(int lane, int i) { return 2 * (lane % 4) + (i % 2) + (i / 4) * 8; }
inline int mma_b_row(int lane, int i) { return 2 * (lane % 4) + (i % 2) + (i / 2) * 8; }
inline int mma_b_col(int lane, int) { return lane / 4; }
inline int mma_c_row(int lane, int i) { return lane / 4 + (i / 2) * 8; }
inline int mma_c_col(int lane, int i) { return 2 * (lane % 4) + (i % 2); }

template <MmaType type>
inline void mma_sync_aligned_m16n8k16_row_col_f32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                                  const float (&c)[4],
                                                  std::source_location site = std::source_location::current()) {
    MmaOperands in;
    std::memcpy(in.a, a, sizeof in.a);
    std::memcpy(in.b, b, sizeof in.b);
    std::memcpy(in.c, c, sizeof in.c);
    collective(type == MmaType::F16 ? "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32"
                                    : "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32",
               site, 0xffffffffu, in, [](Collective& col) {
                   auto value = [](uint32_t reg, int half) {
                       const uint16_t h = uint16_t(half ? reg >> 16 : reg & 0xffffu);
                       return type == MmaType::F16 ? cvt_f32_f16(h) : cvt_f32_bf16(h);
                   };
                   float A[16][16], B[16][8], C[16][8];
                   for (int lane = 0; lane < 32; ++lane) {
                       MmaOperands op;
                       std::memcpy(&op, col.in[lane], sizeof op);
                       for (int i = 0; i < 8; ++i) A[mma_a_row(lane, i)][mma_a_col(lane, i)] = value(op.a[i / 2], i % 2);
                       for (int i = 0; i < 4; ++i) B[mma_b_row(lane, i)][mma_b_col(lane, i)] = value(op.b[i / 2], i % 2);
                       for (int i = 0; i < 4; ++i) C[mma_c_row(lane, i)][mma_c_col(lane, i)] = op.c[i];
                   }
                   for (int lane = 0; lane < 32; ++lane) {
                       float out[4];
                       for (int i = 0; i < 4; ++i) {
                           const int m = mma_c_row(lane, i), n = mma_c_col(lane, i);
                           double acc = C[m][n];
                           for (int k = 0; k < 16; ++k) acc += double(A[m][k]) * double(B[k][n]);
                           out[i] = float(acc);
                       }
                       std::memcpy(g_launch->threads[col.warp * 32 + lane].out, out, sizeof out);
                   }
               });
    std::memcpy(d, g_launch->current->out, sizeof d);
}

// ---------------------------------------------------------------------------------------------
// cp.async.{ca,cg}.shared.global [dst], [src], cp-size{, src-size}
// Copies src-size bytes (0 <= src-size <= cp-size; 0 reads nothing) and zero-fills the rest of
// cp-size. .cg takes cp-size 16 only, .ca 4, 8 or 16; both addresses aligned to cp-size. The
// copy is asynchronous: its destination is poisoned (0xff) and reading it is a fault until a
// cp.async.wait_group of this thread completes its group; here it completes exactly then.
// ---------------------------------------------------------------------------------------------
inline void cp_async_shared_global(const char* what, uintptr_t dst, uintptr_t src, uint32_t cp_size, uint32_t src_size) {
    if (src_size > cp_size) fault(std::string(what) + ": src-size " + std::to_string(src_size) + " exceeds cp-size " + std::to_string(cp_size));
    if (dst % cp_size) fault(std::string(what) + ": shared address " + hex(dst) + " is not aligned to " + std::to_string(cp_size) + " bytes");
    if (src % cp_size) fault(std::string(what) + ": global address " + hex(src) + " is not aligned to " + std::to_string(cp_size) + " bytes");
    if (src_size > 0) check_global(src, 0, src_size, false, "read by cp.async");
    Region* r = check_shared(dst, 0, cp_size, "cp.async destination");
    // The copy may land any time from now to its wait_group: it races with what others do
    // to these bytes now. (Its completion is recorded as a write by this thread.)
    check_race(r, dst, cp_size, true, "a cp.async write");
    std::memset(reinterpret_cast<void*>(dst), 0xff, cp_size);
    const size_t first = (dst - r->begin) / 4, last = (dst - r->begin + cp_size - 1) / 4;
    for (size_t g = first; g <= last; ++g) ++r->pending[g];
    g_launch->current->open.push_back(AsyncCopy{dst, src, cp_size, src_size, r});
}

inline void cp_async_cg_shared_global_16(uintptr_t dst, uintptr_t src, uint32_t src_size) {
    cp_async_shared_global("cp.async.cg.shared.global", dst, src, 16, src_size);
}
template <uint32_t cp_size>
inline void cp_async_ca_shared_global(uintptr_t dst, uintptr_t src, uint32_t src_size) {
    static_assert(cp_size == 4 || cp_size == 8 || cp_size == 16);
    cp_async_shared_global("cp.async.ca.shared.global", dst, src, cp_size, src_size);
}

// cp.async.commit_group: the copies issued since the last commit become one group (possibly
// empty).
inline void cp_async_commit_group() {
    Thread* me = g_launch->current;
    me->committed.push_back(std::move(me->open));
    me->open.clear();
}

inline void complete(const AsyncCopy& c) {
    const size_t first = (c.dst - c.region->begin) / 4, last = (c.dst - c.region->begin + c.size - 1) / 4;
    for (size_t g = first; g <= last; ++g) --c.region->pending[g];
    check_race(c.region, c.dst, c.size, true, "the completion of a cp.async");
    unsigned char bytes[16] = {};
    if (c.src_size) std::memcpy(bytes, reinterpret_cast<const void*>(c.src), c.src_size);
    std::memcpy(reinterpret_cast<void*>(c.dst), bytes, c.size);
}

// cp.async.wait_group N: waits until at most the N most recent committed groups of this thread
// are pending. Copies not yet committed are not waited for.
inline void cp_async_wait_group(int n) {
    Thread* me = g_launch->current;
    while (me->committed.size() > size_t(n)) {
        for (const AsyncCopy& c : me->committed.front()) complete(c);
        me->committed.erase(me->committed.begin());
    }
}

// cp.async.wait_all = commit_group; wait_group 0.
inline void cp_async_wait_all() {
    cp_async_commit_group();
    cp_async_wait_group(0);
}

}  // namespace emu

// ---------------------------------------------------------------------------------------------
// CUDA's names for what the kernels use, over the emulator. Defined after every system header,
// so that no macro reaches them.
// ---------------------------------------------------------------------------------------------
#define __device__
#define __global__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define threadIdx (::emu::thread_idx())
#define blockIdx (::emu::block_idx())
#define blockDim (::emu::block_dim())
#define gridDim (::emu::grid_dim())

using ::emu::dim3;

inline void __syncthreads(std::source_location site = std::source_location::current()) { ::emu::barrier(site); }
inline void __syncwarp(unsigned mask = 0xffffffffu, std::source_location site = std::source_location::current()) {
    // Orders the shared-memory accesses of the lanes of `mask` (see emu::ordered).
    ::emu::collective("__syncwarp", site, mask, 0, [](::emu::Collective& c) {
        const uint32_t generation = ++::emu::g_launch->warp_generation[c.warp];
        for (int lane = 0; lane < 32; ++lane) {
            if (c.mask >> lane & 1u) ::emu::g_launch->threads[c.warp * 32 + lane].warp_sync = generation;
        }
    });
}

template <class T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32, std::source_location site = std::source_location::current()) {
    return ::emu::shfl_sync("__shfl_sync", ::emu::ShflMode::Idx, mask, v, src, width, site);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32,
                         std::source_location site = std::source_location::current()) {
    return ::emu::shfl_sync("__shfl_xor_sync", ::emu::ShflMode::Bfly, mask, v, lane_mask, width, site);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32,
                        std::source_location site = std::source_location::current()) {
    return ::emu::shfl_sync("__shfl_up_sync", ::emu::ShflMode::Up, mask, v, int(delta), width, site);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32,
                          std::source_location site = std::source_location::current()) {
    return ::emu::shfl_sync("__shfl_down_sync", ::emu::ShflMode::Down, mask, v, int(delta), width, site);
}
inline unsigned __ballot_sync(unsigned mask, int pred, std::source_location site = std::source_location::current()) {
    return ::emu::vote_ballot_sync("__ballot_sync", mask, pred != 0, site);
}
inline int __any_sync(unsigned mask, int pred, std::source_location site = std::source_location::current()) {
    return ::emu::vote_ballot_sync("__any_sync", mask, pred != 0, site) != 0;
}
inline int __all_sync(unsigned mask, int pred, std::source_location site = std::source_location::current()) {
    return ::emu::vote_ballot_sync("__all_sync", mask, pred != 0, site) == mask;
}

inline float __uint_as_float(unsigned u) { return std::bit_cast<float>(u); }
inline unsigned __float_as_uint(float f) { return std::bit_cast<unsigned>(f); }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }

// Memory spaces (see cuda/common.cuh): checked pointers instead of raw ones.
template <class T>
using gmem_ptr = ::emu::gptr<T>;
template <class T>
using smem_ptr = ::emu::sptr<T>;
using ::emu::smem_cast;
template <class T, class U>
inline gmem_ptr<T> gmem_cast(gmem_ptr<U> p) {
    return gmem_ptr<T>(reinterpret_cast<T*>(p.raw()));
}
template <class T>
inline smem_ptr<T> dynamic_smem() {
    return ::emu::dynamic_smem<T>();
}
#define STATIC_SMEM(type, name, count) const smem_ptr<type> name = ::emu::static_smem<type>((count), #name)
