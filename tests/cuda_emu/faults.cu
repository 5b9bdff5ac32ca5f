// Kernels that each commit one fault the emulator must report (tests/cuda_emu_faults.rs), with
// the kernel, block and thread that commits it. One block of 64 threads unless noted; the
// faulting thread is `culprit` (block (1,0,0) of a grid of 2 where it matters).

struct FaultArgs {
    gmem_ptr<const float> in;  // 64 floats
    gmem_ptr<float> out;       // 64 floats
    int culprit;               // the thread that faults
};

// Reads one element past the end of `in`.
extern "C" __global__ void global_read_past_end(const FaultArgs a) {
    const int t = threadIdx.x;
    a.out[t] = a.in[t == a.culprit ? 64 : t];
}

// Writes one element before the start of `out`.
extern "C" __global__ void global_write_before_start(const FaultArgs a) {
    const int t = threadIdx.x;
    if (blockIdx.x == 1) a.out[t == a.culprit ? -1 : t] = 1.f;
}

// Stores 8 bytes at a 4-byte aligned address of `out` (as a packed store would with an odd
// channel offset).
extern "C" __global__ void global_store_misaligned(const FaultArgs a) {
    const int t = threadIdx.x;
    if (t % 2 == 0) gmem_cast<unsigned long long>(a.out + (t == a.culprit ? t + 1 : t))[0] = 0ull;
}

// Writes through a pointer into `in`, which the launch gave as read-only.
extern "C" __global__ void global_write_to_input(const FaultArgs a) {
    const gmem_ptr<float> in(const_cast<float*>(a.in.raw()));
    if ((int)threadIdx.x == a.culprit) in[0] = 2.f;
}

// Dynamic shared memory of 64 floats (the launch gives 256 bytes); one thread writes at 64.
extern "C" __global__ void shared_write_past_end(const FaultArgs a) {
    const smem_ptr<float> s = dynamic_smem<float>();
    const int t = threadIdx.x;
    s[t == a.culprit ? 64 : t] = a.in[t];
    __syncthreads();
    a.out[t] = s[63 - t];
}

// A static __shared__ array of 32 floats read at 32.
extern "C" __global__ void static_shared_read_past_end(const FaultArgs a) {
    STATIC_SMEM(float, s_small, 32);
    const int t = threadIdx.x;
    if (t < 32) s_small[t] = a.in[t];
    __syncthreads();
    if (t == a.culprit) a.out[0] = s_small[32];
}

// One thread returns early: the others wait at a __syncthreads it never reaches.
extern "C" __global__ void barrier_skipped(const FaultArgs a) {
    const int t = threadIdx.x;
    if (t == a.culprit) return;
    __syncthreads();
    a.out[t] = a.in[t];
}

// Two warps wait at two different __syncthreads.
extern "C" __global__ void barrier_divergent(const FaultArgs a) {
    const int t = threadIdx.x;
    if (t < 32) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    a.out[t] = a.in[t];
}

// Reads shared memory a cp.async is still filling (before its wait_group).
extern "C" __global__ void cp_async_read_before_wait(const FaultArgs a) {
    const smem_ptr<float> s = dynamic_smem<float>();
    const int t = threadIdx.x;
    if (t < 16) {
        emu::cp_async_cg_shared_global_16((s + 4 * t).addr(), reinterpret_cast<uintptr_t>(a.in.raw() + 4 * t), 16);
    }
    emu::cp_async_commit_group();
    if (t == a.culprit) a.out[0] = s[4 * t];  // missing: cp_async_wait_group(0) and __syncthreads
    emu::cp_async_wait_group(0);
    __syncthreads();
    a.out[t] = s[t];
}

// wait_group 1 leaves the most recent group in flight; reading its destination is a fault.
extern "C" __global__ void cp_async_wait_too_shallow(const FaultArgs a) {
    const smem_ptr<float> s = dynamic_smem<float>();
    const int t = threadIdx.x;
    if (t < 8) {
        const uintptr_t src = reinterpret_cast<uintptr_t>(a.in.raw());
        emu::cp_async_cg_shared_global_16((s + 4 * t).addr(), src + 16 * t, 16);
        emu::cp_async_commit_group();
        emu::cp_async_cg_shared_global_16((s + 32 + 4 * t).addr(), src + 128 + 16 * t, 16);
        emu::cp_async_commit_group();
        emu::cp_async_wait_group(1);
        a.out[t] = s[4 * t];                                    // the first group: complete
        if (t == a.culprit) a.out[32 + t] = s[32 + 4 * t];      // the second: still in flight
    }
}

// A shuffle with one lane of its full mask missing.
extern "C" __global__ void shuffle_lane_missing(const FaultArgs a) {
    const int t = threadIdx.x;
    float x = a.in[t];
    if (t != a.culprit) x = __shfl_xor_sync(0xffffffffu, x, 1);
    a.out[t] = x;
}

// An mma.sync that one lane of the warp skips.
extern "C" __global__ void mma_lane_missing(const FaultArgs a) {
    const int t = threadIdx.x;
    const unsigned frag_a[4] = {0, 0, 0, 0}, frag_b[2] = {0, 0};
    const float c[4] = {0, 0, 0, 0};
    float d[4];
    if (t != a.culprit) emu::mma_sync_aligned_m16n8k16_row_col_f32<emu::MmaType::F16>(d, frag_a, frag_b, c);
    a.out[t] = t < 32 ? 0.f : 1.f;
}

// ldmatrix with a row address that is not 16-byte aligned.
extern "C" __global__ void ldmatrix_misaligned(const FaultArgs a) {
    const smem_ptr<unsigned short> s = dynamic_smem<unsigned short>();
    const int lane = threadIdx.x % 32;
    for (int e = threadIdx.x; e < 128; e += blockDim.x) s[e] = 0;
    __syncthreads();
    const int offset = (int)threadIdx.x == a.culprit ? 1 : 0;  // 2 bytes off
    unsigned r[4];
    emu::ldmatrix_sync_aligned_m8n8_shared_b16<4, false>(r, (s + (lane % 8) * 8 + offset).addr());
    a.out[threadIdx.x] = (float)r[0];
}

// Thread 0 writes a shared word and `culprit` reads it with no __syncthreads between.
extern "C" __global__ void shared_race_no_barrier(const FaultArgs a) {
    const smem_ptr<float> s = dynamic_smem<float>();
    const int t = threadIdx.x;
    if (t == 0) s[0] = a.in[0];
    if (t == a.culprit) a.out[0] = s[0];
}

// Lane 0 writes, another lane of the warp reads: ordered only by a __syncwarp of both.
// culprit >= 100: with the __syncwarp, lane culprit - 100 reads (no race).
extern "C" __global__ void shared_race_in_warp(const FaultArgs a) {
    const smem_ptr<float> s = dynamic_smem<float>();
    const int t = threadIdx.x;
    const bool synced = a.culprit >= 100;
    const int reader = synced ? a.culprit - 100 : a.culprit;
    if (t == 0) s[0] = a.in[0];
    if (synced) __syncwarp();
    if (t == reader) a.out[0] = s[0];
}

// Two threads write the same shared word in one barrier interval.
extern "C" __global__ void shared_write_write_race(const FaultArgs a) {
    const smem_ptr<float> s = dynamic_smem<float>();
    const int t = threadIdx.x;
    if (t == 0 || t == a.culprit) s[3] = (float)t;
    __syncthreads();
    a.out[t] = s[3];
}
