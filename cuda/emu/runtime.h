// outlier-attn CUDA emulator, part 1: the execution model.
//
// The kernels in cuda/*.cu are compiled by the host's C++ compiler (g++ -std=c++20) with
// OUTLIER_ATTN_EMU defined and this header in front of them. A launch runs its blocks one after
// another on the calling OS thread; the threads of a block are fibers run by a cooperative,
// deterministic scheduler, so __syncthreads and warp collectives wait for each
// other as on a GPU. Every access to global and shared memory goes through checked pointers
// (gptr, sptr) and every violation is a Fault naming the kernel, the block and the thread:
//   - global memory outside the buffers the launch was given (or through a null pointer);
//   - shared memory outside the region (dynamic, or one static array) the pointer points into;
//   - a read of a cp.async destination before the wait_group that completes it;
//   - a __syncthreads that not every thread of the block reaches (deadlock, reported);
//   - a warp collective (shuffle, ldmatrix, mma) that some lane of its mask never reaches;
//   - a shared-memory race: two threads touching the same bytes, one of them writing, with no
//     __syncthreads (or __syncwarp of both) between the two accesses.
// The PTX instructions themselves are in ptx.h; the launch entry of a module in module.h.
//
// What it cannot show: speed, races in global memory or those only a weaker memory model than
// "barriers order shared memory" exposes (execution is sequential; every copy completes at the
// latest moment the PTX rules allow), or driver behaviour.
#pragma once

#include <ucontext.h>
#include <sys/mman.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <source_location>
#include <string>
#include <vector>

namespace emu {

// ---------------------------------------------------------------------------------------------
// The C interface between the Rust executor and a compiled module (mirrored by
// src/cuda_emu/ffi.rs, same field order).
// ---------------------------------------------------------------------------------------------
extern "C" {
struct BufferDesc {
    const char* name;   // NUL-terminated, for messages
    uint64_t addr;      // host address of the first byte
    uint64_t bytes;
    int32_t writable;   // 0: the kernel may only read it
    int32_t _pad;
};

struct LaunchDesc {
    const char* entry;
    uint32_t grid[3];
    uint32_t block[3];
    uint64_t dynamic_smem;  // bytes
    const void* args;       // the kernel's argument struct, byte for byte as the GPU gets it
    uint64_t args_len;
    const BufferDesc* buffers;
    uint64_t n_buffers;
    char* error;            // the fault message, NUL-terminated, on failure
    uint64_t error_len;
};
}

enum LaunchStatus : int { kOk = 0, kFault = 1, kNoSuchEntry = 2, kBadArgs = 3 };

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

struct Fault {
    std::string message;
};

struct Launch;
struct Thread;

// ---------------------------------------------------------------------------------------------
// Fiber contexts. On x86-64 a switch saves the callee-saved registers and the floating-point
// control words on the fiber's own stack and swaps stack pointers (glibc's swapcontext also
// makes a sigprocmask system call per switch, which the warp collectives would pay millions of
// times); elsewhere ucontext.
// ---------------------------------------------------------------------------------------------
#if defined(__x86_64__)
extern "C" void outlier_attn_emu_switch(void** save_sp, void* load_sp);
asm(R"(
    .text
    .p2align 4
    .hidden outlier_attn_emu_switch
    .globl outlier_attn_emu_switch
    .type outlier_attn_emu_switch,@function
outlier_attn_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size outlier_attn_emu_switch, .-outlier_attn_emu_switch
)");

struct Context {
    void* sp = nullptr;
};

// Prepares `c` to run `entry` (which never returns) on [stack, stack + bytes): the frame
// outlier_attn_emu_switch pops (control words, six registers), then `entry` as the return
// address, placed so that `entry` starts with the stack alignment of a called function.
inline void context_start(Context& c, void* stack, size_t bytes, void (*entry)()) {
    const uintptr_t top = (reinterpret_cast<uintptr_t>(stack) + bytes) & ~uintptr_t(15);
    uint64_t* frame = reinterpret_cast<uint64_t*>(top - 72);  // 8 (sp % 16) after the ret
    frame[0] = 0x1f80ull | (0x037full << 32);                // MXCSR, x87 control word defaults
    for (int r = 1; r <= 6; ++r) frame[r] = 0;                // r15, r14, r13, r12, rbx, rbp
    frame[7] = reinterpret_cast<uint64_t>(entry);
    frame[8] = 0;  // where a caller's return address would be
    c.sp = frame;
}
inline void context_swap(Context& save, Context& load) { outlier_attn_emu_switch(&save.sp, load.sp); }
#else
struct Context {
    ucontext_t uc;
};
inline void context_start(Context& c, void* stack, size_t bytes, void (*entry)()) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = stack;
    c.uc.uc_stack.ss_size = bytes;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, entry, 0);
}
inline void context_swap(Context& save, Context& load) { swapcontext(&save.uc, &load.uc); }
#endif

// The launch running on this OS thread (one at a time: launches are synchronous).
inline thread_local Launch* g_launch = nullptr;

[[noreturn]] void fault(const std::string& what);
[[noreturn]] void fault_at(int thread, const std::string& what);

inline std::string where(const std::source_location& s) {
    const char* f = s.file_name();
    const char* slash = std::strrchr(f, '/');
    return std::string(slash ? slash + 1 : f) + ":" + std::to_string(s.line());
}

inline std::string hex(uint64_t x) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "0x%llx", (unsigned long long)x);
    return buf;
}

// ---------------------------------------------------------------------------------------------
// Shared memory: one region for the dynamic array and one per static array, per block, poisoned
// (all bytes 0xff: NaN in f16, bf16 and f32) when the block starts. `pending` counts the
// cp.async copies in flight into each 4-byte granule.
// ---------------------------------------------------------------------------------------------
// The last write and the last read(s) of one 2-byte granule (the smallest element the kernels
// store; two threads storing the two bytes of one granule would be reported), for the race
// check: which thread, at which barrier epoch and warp-sync generation (see `ordered`).
struct Access {
    int16_t writer = -1;  // thread, or -1
    int16_t reader = -1;  // thread, -1 none, or kManyReaders
    uint32_t w_epoch = 0, w_sync = 0, r_epoch = 0, r_sync = 0;
};
constexpr int16_t kManyReaders = -2;

struct Region {
    std::string name;
    std::vector<unsigned char> bytes;  // over-allocated by 16 for alignment
    uintptr_t begin = 0, end = 0;
    std::vector<uint16_t> pending;
    std::vector<Access> shadow;
    std::source_location decl;  // static arrays: where declared

    void allocate(size_t n) {
        bytes.assign(n + 16, 0xff);
        begin = (reinterpret_cast<uintptr_t>(bytes.data()) + 15) & ~uintptr_t(15);
        end = begin + n;
        pending.assign((n + 3) / 4, 0);
        shadow.assign((n + 1) / 2, Access{});
    }
    void poison() {
        std::memset(bytes.data(), 0xff, bytes.size());
        std::fill(pending.begin(), pending.end(), 0);
        std::fill(shadow.begin(), shadow.end(), Access{});
    }
    bool contains(uintptr_t a) const { return a >= begin && a <= end; }
};

// One cp.async: `src_size` bytes from global memory, the rest of `size` zero-filled.
struct AsyncCopy {
    uintptr_t dst;
    uintptr_t src;
    uint32_t size, src_size;
    Region* region;
};

enum class State : uint8_t { Ready, AtBarrier, AtCollective, Done };

// A warp collective waiting for its lanes: each lane leaves its operands in `in`; the last to
// arrive runs `complete`, which leaves each lane's result in its Thread::out.
constexpr size_t kOperandBytes = 64;
struct Collective {
    const char* what;
    std::source_location site;
    unsigned mask = 0, arrived = 0;
    int warp = 0;
    alignas(16) unsigned char in[32][kOperandBytes];
    std::function<void(Collective&)> complete;
};

struct Thread {
    Context ctx;
    void* stack = nullptr;
    dim3 idx;
    int linear = 0;
    State state = State::Ready;
    std::source_location site;  // where it waits
    Collective* waiting_on = nullptr;
    uint32_t warp_sync = 0;  // the warp's __syncwarp generation at the last one this thread took part in
    std::vector<std::vector<AsyncCopy>> committed;  // oldest first
    std::vector<AsyncCopy> open;                     // not yet committed
    alignas(16) unsigned char out[kOperandBytes];
};

constexpr size_t kStackBytes = 256 * 1024;

// Fiber stacks, reused from launch to launch on this OS thread; a PROT_NONE page below each
// turns a stack overflow into a crash instead of silent corruption.
struct StackPool {
    std::vector<void*> free;
    ~StackPool() {
        for (void* s : free) munmap(static_cast<char*>(s) - 4096, kStackBytes + 4096);
    }
    void* take() {
        if (!free.empty()) {
            void* s = free.back();
            free.pop_back();
            return s;
        }
        void* m = mmap(nullptr, kStackBytes + 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) return nullptr;
        mprotect(m, 4096, PROT_NONE);
        return static_cast<char*>(m) + 4096;
    }
    void give(void* s) { free.push_back(s); }
};
inline thread_local StackPool g_stacks;

struct Launch {
    const char* kernel = "";
    dim3 grid, block, block_idx;
    int n_threads = 0;
    std::vector<BufferDesc> buffers;
    size_t last_buffer = 0;
    std::vector<Thread> threads;
    Thread* current = nullptr;
    Context scheduler;
    Region dynamic;
    std::vector<std::unique_ptr<Region>> statics;
    int barrier_arrived = 0;
    uint32_t barrier_epoch = 0;               // __syncthreads completed in this block
    std::vector<uint32_t> warp_generation;    // __syncwarp completed, per warp
    std::vector<std::unique_ptr<Collective>> collectives;  // open ones
    bool failed = false;
    std::string error;
    std::function<void()> body;  // one thread's run of the kernel

    std::string block_name() const {
        return "block (" + std::to_string(block_idx.x) + "," + std::to_string(block_idx.y) + "," +
               std::to_string(block_idx.z) + ")";
    }
    std::string thread_name(int t) const {
        const dim3& i = threads[t].idx;
        return "thread (" + std::to_string(i.x) + "," + std::to_string(i.y) + "," + std::to_string(i.z) +
               ") [warp " + std::to_string(t / 32) + ", lane " + std::to_string(t % 32) + "]";
    }
    std::string prefix(int t) const { return std::string(kernel) + ": " + block_name() + " " + thread_name(t) + ": "; }
};

[[noreturn]] inline void fault_at(int thread, const std::string& what) {
    throw Fault{g_launch->prefix(thread) + what};
}
[[noreturn]] inline void fault(const std::string& what) { fault_at(g_launch->current->linear, what); }

// ---------------------------------------------------------------------------------------------
// Built-in variables.
// ---------------------------------------------------------------------------------------------
inline dim3 thread_idx() { return g_launch->current->idx; }
inline dim3 block_idx() { return g_launch->block_idx; }
inline dim3 block_dim() { return g_launch->block; }
inline dim3 grid_dim() { return g_launch->grid; }
inline int lane_id() { return g_launch->current->linear % 32; }
inline int warp_id() { return g_launch->current->linear / 32; }

// ---------------------------------------------------------------------------------------------
// Scheduling.
// ---------------------------------------------------------------------------------------------
// Gives the OS thread back to the scheduler until this thread is Ready again.
inline void park() {
    Launch* L = g_launch;
    Thread* me = L->current;
    context_swap(me->ctx, L->scheduler);
    if (L->failed) throw Fault{L->error};  // another thread faulted: unwind this one
}

// __syncthreads: every thread of the block, at the same call site.
inline void barrier(std::source_location site) {
    Launch* L = g_launch;
    Thread* me = L->current;
    me->state = State::AtBarrier;
    me->site = site;
    if (++L->barrier_arrived == L->n_threads) {
        const std::source_location& first = L->threads[0].site;
        for (Thread& t : L->threads) {
            if (t.site.line() != first.line() || std::strcmp(t.site.file_name(), first.file_name()) != 0) {
                fault_at(t.linear, "waits at __syncthreads " + where(t.site) + " while thread 0 waits at " +
                                       where(first) + ": every thread must reach the same __syncthreads");
            }
        }
        L->barrier_arrived = 0;
        ++L->barrier_epoch;
        for (Thread& t : L->threads) t.state = State::Ready;
        return;
    }
    park();
}

// Joins (or opens) the collective at `site` for `mask`; returns once its result is in `out`.
template <class In>
inline void collective(const char* what, std::source_location site, unsigned mask, const In& operands,
                       const std::function<void(Collective&)>& complete) {
    static_assert(sizeof(In) <= kOperandBytes);
    Launch* L = g_launch;
    Thread* me = L->current;
    const int lane = me->linear % 32, warp = me->linear / 32;
    // Lanes past the block's last thread do not exist: they cannot be in the mask.
    const int warp_lanes = std::min(32, L->n_threads - warp * 32);
    const unsigned existing = warp_lanes == 32 ? 0xffffffffu : ((1u << warp_lanes) - 1u);
    if (!(mask >> lane & 1u)) {
        fault(std::string(what) + " at " + where(site) + ": the calling lane is not in its mask " + hex(mask));
    }
    if (mask & ~existing) {
        fault(std::string(what) + " at " + where(site) + ": mask " + hex(mask) + " names lanes the warp does not have");
    }
    Collective* c = nullptr;
    for (auto& open : L->collectives) {
        if (open->warp == warp && (open->mask >> lane & 1u) && !(open->arrived >> lane & 1u)) {
            c = open.get();
            break;
        }
    }
    if (c == nullptr) {
        L->collectives.push_back(std::make_unique<Collective>());
        c = L->collectives.back().get();
        c->what = what;
        c->site = site;
        c->mask = mask;
        c->warp = warp;
        c->complete = complete;
    } else if (c->mask != mask || c->site.line() != site.line() ||
               std::strcmp(c->site.file_name(), site.file_name()) != 0 || std::strcmp(c->what, what) != 0) {
        fault(std::string(what) + " at " + where(site) + " (mask " + hex(mask) + ") meets lanes of its warp waiting at " +
              c->what + " " + where(c->site) + " (mask " + hex(c->mask) + "): a warp collective with lanes missing");
    }
    std::memcpy(c->in[lane], &operands, sizeof(In));
    c->arrived |= 1u << lane;
    if (c->arrived == c->mask) {
        c->complete(*c);
        for (int l = 0; l < 32; ++l) {
            if (c->mask >> l & 1u) {
                Thread& t = L->threads[warp * 32 + l];
                t.state = State::Ready;
                t.waiting_on = nullptr;
            }
        }
        L->collectives.erase(std::find_if(L->collectives.begin(), L->collectives.end(),
                                          [c](auto& p) { return p.get() == c; }));
        return;
    }
    me->state = State::AtCollective;
    me->site = site;
    me->waiting_on = c;
    park();
}

// The error when no thread can run and some have not finished.
inline std::string deadlock(Launch& L) {
    auto doing = [&](const Thread& t) -> std::string {
        switch (t.state) {
            case State::Done: return "has exited";
            case State::AtBarrier: return "waits at __syncthreads " + where(t.site);
            case State::AtCollective: return std::string("waits at ") + t.waiting_on->what + " " + where(t.site);
            default: return "is ready";
        }
    };
    for (auto& c : L.collectives) {
        for (int l = 0; l < 32; ++l) {
            if ((c->mask >> l & 1u) && !(c->arrived >> l & 1u)) {
                const int t = c->warp * 32 + l;
                const int first = c->warp * 32 + std::countr_zero(c->arrived);
                return L.prefix(t) + "a warp collective with lanes missing: " + c->what + " " + where(c->site) +
                       " (mask " + hex(c->mask) + ", called by " + L.thread_name(first) + ") never sees this lane, which " +
                       doing(L.threads[t]);
            }
        }
    }
    if (L.barrier_arrived > 0) {
        int waiting = -1;
        for (const Thread& t : L.threads) {
            if (t.state == State::AtBarrier) {
                waiting = t.linear;
                break;
            }
        }
        for (const Thread& t : L.threads) {
            if (t.state != State::AtBarrier) {
                return L.prefix(t.linear) + "deadlock: __syncthreads " + where(L.threads[waiting].site) +
                       " is not reached by this thread, which " + doing(t) + " (" + std::to_string(L.barrier_arrived) +
                       " of " + std::to_string(L.n_threads) + " threads wait there)";
            }
        }
    }
    return std::string(L.kernel) + ": " + L.block_name() + ": deadlock";
}

[[noreturn]] inline void fiber_main() {
    Launch* L = g_launch;
    Thread* me = L->current;
    try {
        L->body();
    } catch (const Fault& f) {
        if (!L->failed) {
            L->failed = true;
            L->error = f.message;
        }
    } catch (const std::exception& e) {
        if (!L->failed) {
            L->failed = true;
            L->error = L->prefix(me->linear) + "C++ exception: " + e.what();
        }
    } catch (...) {
        if (!L->failed) {
            L->failed = true;
            L->error = L->prefix(me->linear) + "unknown C++ exception";
        }
    }
    me->state = State::Done;
    context_swap(me->ctx, L->scheduler);  // never resumed
    std::abort();
}

// Runs one block to completion; false (with L.error set) on a fault or deadlock.
inline bool run_block(Launch& L) {
    L.barrier_arrived = 0;
    L.barrier_epoch = 0;
    L.warp_generation.assign((L.n_threads + 31) / 32, 0);
    L.collectives.clear();
    L.dynamic.poison();
    for (auto& s : L.statics) s->poison();
    for (Thread& t : L.threads) {
        t.state = State::Ready;
        t.waiting_on = nullptr;
        t.warp_sync = 0;
        t.committed.clear();
        t.open.clear();
        context_start(t.ctx, t.stack, kStackBytes, fiber_main);
    }
    for (;;) {
        bool ran = false, all_done = true;
        for (Thread& t : L.threads) {
            if (t.state == State::Ready) {
                L.current = &t;
                context_swap(L.scheduler, t.ctx);
                ran = true;
                if (L.failed) {
                    // Unwind nothing: the other fibers are abandoned with their stacks.
                    return false;
                }
            }
            if (t.state != State::Done) all_done = false;
        }
        if (all_done) return true;
        if (!ran) {
            L.failed = true;
            L.error = deadlock(L);
            return false;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Global memory: a pointer that checks every access against the buffer its address lies in.
// 8 bytes, trivially copyable: AttnParams keeps the layout the GPU gets.
// ---------------------------------------------------------------------------------------------
inline const BufferDesc* buffer_of(uintptr_t a) {
    Launch* L = g_launch;
    if (L->last_buffer < L->buffers.size()) {
        const BufferDesc& b = L->buffers[L->last_buffer];
        if (a >= b.addr && a <= b.addr + b.bytes) return &b;
    }
    for (size_t i = 0; i < L->buffers.size(); ++i) {
        const BufferDesc& b = L->buffers[i];
        if (a >= b.addr && a <= b.addr + b.bytes) {
            L->last_buffer = i;
            return &b;
        }
    }
    return nullptr;
}

// Checks [base + offset, + size) against the buffer `base` lies in; returns the address.
inline void* check_global(uintptr_t base, int64_t offset, size_t size, bool write, const char* what = "access") {
    if (base == 0) fault(std::string("global ") + what + " through a null pointer (a buffer the launch did not get)");
    const BufferDesc* b = buffer_of(base);
    if (b == nullptr) fault(std::string("global ") + what + " at " + hex(base + offset) + ": the address is in no buffer of the launch");
    const int64_t start = int64_t(base - b->addr) + offset;
    if (start < 0 || uint64_t(start) + size > b->bytes) {
        fault(std::string("global ") + what + " outside buffer `" + b->name + "`: bytes [" + std::to_string(start) + ", " +
              std::to_string(start + int64_t(size)) + ") of its " + std::to_string(b->bytes));
    }
    if (write && !b->writable) fault(std::string("global write to read-only buffer `") + b->name + "`");
    // A GPU faults on a global access that is not aligned to its size.
    if ((b->addr + uint64_t(start)) % size != 0) {
        fault(std::string("misaligned global ") + what + " of " + std::to_string(size) + " bytes at byte " +
              std::to_string(start) + " of buffer `" + b->name + "`");
    }
    return reinterpret_cast<void*>(b->addr + uint64_t(start));
}

template <class T>
class gptr {
    T* p_;

public:
    gptr() = default;
    gptr(std::nullptr_t) : p_(nullptr) {}
    explicit gptr(T* p) : p_(p) {}
    template <class U, class = std::enable_if_t<std::is_convertible_v<U*, T*>>>
    gptr(gptr<U> o) : p_(o.raw()) {}
    T* raw() const { return p_; }
    explicit operator bool() const { return p_ != nullptr; }

    template <class I>
    T& operator[](I i) const {
        return *static_cast<T*>(check_global(reinterpret_cast<uintptr_t>(p_), int64_t(i) * int64_t(sizeof(T)), sizeof(T),
                                             !std::is_const_v<T>));
    }
    T& operator*() const { return (*this)[0]; }
    template <class I>
    gptr operator+(I i) const {
        return gptr(reinterpret_cast<T*>(reinterpret_cast<uintptr_t>(p_) + uintptr_t(int64_t(i) * int64_t(sizeof(T)))));
    }
    template <class I>
    gptr operator-(I i) const {
        return *this + (-int64_t(i));
    }
    template <class I>
    gptr& operator+=(I i) {
        return *this = *this + i;
    }
};
static_assert(sizeof(gptr<float>) == 8 && std::is_trivially_copyable_v<gptr<float>>);

// ---------------------------------------------------------------------------------------------
// Shared memory: a pointer into one region of this block; reads see in-flight cp.async
// destinations as faults.
// ---------------------------------------------------------------------------------------------
inline Region* region_of(uintptr_t a) {
    Launch* L = g_launch;
    if (L->dynamic.end > L->dynamic.begin && L->dynamic.contains(a)) return &L->dynamic;
    for (auto& s : L->statics) {
        if (s->contains(a)) return s.get();
    }
    return nullptr;
}

inline Region* check_shared(uintptr_t base, int64_t offset, size_t size, const char* what, int thread = -1) {
    if (thread < 0) thread = g_launch->current->linear;
    Region* r = region_of(base);
    if (r == nullptr) fault_at(thread, std::string("shared ") + what + " at " + hex(base + offset) + ": not in this block's shared memory");
    const int64_t start = int64_t(base - r->begin) + offset;
    if (start < 0 || uint64_t(start) + size > r->end - r->begin) {
        fault_at(thread, std::string("shared memory out of range: ") + what + " of bytes [" + std::to_string(start) + ", " +
                             std::to_string(start + int64_t(size)) + ") of " + r->name + " (" +
                             std::to_string(r->end - r->begin) + " bytes)");
    }
    return r;
}

inline void check_not_pending(Region* r, uintptr_t a, size_t size, const char* what, int thread = -1) {
    const size_t first = (a - r->begin) / 4, last = (a - r->begin + size - 1) / 4;
    for (size_t g = first; g <= last; ++g) {
        if (r->pending[g]) {
            if (thread < 0) thread = g_launch->current->linear;
            fault_at(thread, std::string(what) + " of bytes [" + std::to_string(a - r->begin) + ", " +
                                 std::to_string(a - r->begin + size) + ") of " + r->name +
                                 ", a cp.async destination whose wait_group has not been reached (poisoned until then)");
        }
    }
}

// Whether an access by `other` at (epoch, sync) happens before one by `thread` now: a
// __syncthreads completed since, or both are lanes of one warp that both took part in a
// __syncwarp since. (Shuffles and other collectives exchange registers, not memory: they order
// nothing.)
inline bool ordered(int other, uint32_t epoch, uint32_t sync, int thread) {
    Launch* L = g_launch;
    if (L->barrier_epoch > epoch) return true;
    if (other < 0 || other / 32 != thread / 32) return false;
    return L->threads[other].warp_sync > sync && L->threads[thread].warp_sync > sync;
}

// The race check of shared memory: a read of bytes another thread wrote, or a write of bytes
// another thread read or wrote, with nothing between the two accesses that orders them.
inline void check_race(Region* r, uintptr_t a, size_t size, bool write, const char* what, int thread = -1) {
    Launch* L = g_launch;
    if (thread < 0) thread = L->current->linear;
    const uint32_t epoch = L->barrier_epoch, sync = L->warp_generation[thread / 32];
    const size_t first = (a - r->begin) / 2, last = (a - r->begin + size - 1) / 2;
    auto race = [&](int other, const char* other_did) {
        fault_at(thread, std::string("shared memory race: ") + what + " of bytes [" + std::to_string(a - r->begin) + ", " +
                             std::to_string(a - r->begin + size) + ") of " + r->name + " that " +
                             (other == kManyReaders ? std::string("other threads") : L->thread_name(other)) + " " +
                             other_did + " with no __syncthreads (or __syncwarp of both) between");
    };
    for (size_t g = first; g <= last; ++g) {
        Access& acc = r->shadow[g];
        if (acc.writer >= 0 && acc.writer != thread && !ordered(acc.writer, acc.w_epoch, acc.w_sync, thread)) {
            race(acc.writer, "wrote");
        }
        if (write) {
            const bool other_reader = acc.reader == kManyReaders || (acc.reader >= 0 && acc.reader != thread);
            if (other_reader && !ordered(acc.reader, acc.r_epoch, acc.r_sync, thread)) race(acc.reader, "read");
            acc.writer = int16_t(thread);
            acc.w_epoch = epoch;
            acc.w_sync = sync;
            acc.reader = -1;
        } else if (acc.reader == -1 || acc.reader == thread ||
                   (acc.reader != kManyReaders && ordered(acc.reader, acc.r_epoch, acc.r_sync, thread)) ||
                   (acc.reader == kManyReaders && L->barrier_epoch > acc.r_epoch)) {
            acc.reader = int16_t(thread);
            acc.r_epoch = epoch;
            acc.r_sync = sync;
        } else {
            acc.reader = kManyReaders;
            acc.r_epoch = epoch;
            acc.r_sync = sync;
        }
    }
}

template <class T>
class sref {
    T* p_;
    Region* r_;

public:
    sref(T* p, Region* r) : p_(p), r_(r) {}
    operator std::remove_const_t<T>() const {
        check_not_pending(r_, reinterpret_cast<uintptr_t>(p_), sizeof(T), "shared read");
        check_race(r_, reinterpret_cast<uintptr_t>(p_), sizeof(T), false, "a read");
        std::remove_const_t<T> v;
        std::memcpy(&v, p_, sizeof(T));
        return v;
    }
    const sref& operator=(std::remove_const_t<T> v) const {
        static_assert(!std::is_const_v<T>, "write through a pointer to const");
        check_not_pending(r_, reinterpret_cast<uintptr_t>(p_), sizeof(T), "shared write");
        check_race(r_, reinterpret_cast<uintptr_t>(p_), sizeof(T), true, "a write");
        std::memcpy(p_, &v, sizeof(T));
        return *this;
    }
    const sref& operator=(const sref& o) const { return *this = static_cast<std::remove_const_t<T>>(o); }
    template <class U>
    const sref& operator+=(U v) const {
        return *this = static_cast<std::remove_const_t<T>>(static_cast<std::remove_const_t<T>>(*this) + v);
    }
};

template <class T>
class sptr {
    T* p_;

public:
    sptr() = default;
    explicit sptr(T* p) : p_(p) {}
    template <class U, class = std::enable_if_t<std::is_convertible_v<U*, T*>>>
    sptr(sptr<U> o) : p_(o.raw()) {}
    T* raw() const { return p_; }
    uintptr_t addr() const { return reinterpret_cast<uintptr_t>(p_); }

    template <class I>
    sref<T> operator[](I i) const {
        const int64_t off = int64_t(i) * int64_t(sizeof(T));
        Region* r = check_shared(addr(), off, sizeof(T), "access");
        return sref<T>(reinterpret_cast<T*>(addr() + off), r);
    }
    sref<T> operator*() const { return (*this)[0]; }
    template <class I>
    sptr operator+(I i) const {
        return sptr(reinterpret_cast<T*>(addr() + uintptr_t(int64_t(i) * int64_t(sizeof(T)))));
    }
    template <class I>
    sptr operator-(I i) const {
        return *this + (-int64_t(i));
    }
};
static_assert(sizeof(sptr<float>) == 8);

template <class T, class U>
inline sptr<T> smem_cast(sptr<U> p) {
    return sptr<T>(reinterpret_cast<T*>(p.raw()));
}

// The block's dynamic shared memory (`extern __shared__` on the GPU).
template <class T>
inline sptr<T> dynamic_smem() {
    return sptr<T>(reinterpret_cast<T*>(g_launch->dynamic.begin));
}

// A static `__shared__ T name[count]`: one region per declaration, the same for every thread.
template <class T>
inline sptr<T> static_smem(size_t count, const char* name, std::source_location decl = std::source_location::current()) {
    Launch* L = g_launch;
    for (auto& s : L->statics) {
        if (s->decl.line() == decl.line() && std::strcmp(s->decl.file_name(), decl.file_name()) == 0 &&
            s->decl.column() == decl.column()) {
            return sptr<T>(reinterpret_cast<T*>(s->begin));
        }
    }
    auto r = std::make_unique<Region>();
    r->name = std::string("__shared__ ") + name;
    r->decl = decl;
    r->allocate(count * sizeof(T));
    L->statics.push_back(std::move(r));
    return sptr<T>(reinterpret_cast<T*>(L->statics.back()->begin));
}

// ---------------------------------------------------------------------------------------------
// Running a kernel: copies the argument bytes into the kernel's parameter type and runs every
// block. Returns a LaunchStatus.
// ---------------------------------------------------------------------------------------------
template <class P>
inline int launch(void (*kernel)(P), const char* name, const LaunchDesc& d) {
    static_assert(std::is_trivially_copyable_v<P>);
    auto report = [&](const std::string& m) {
        if (d.error && d.error_len) {
            std::snprintf(d.error, d.error_len, "%s", m.c_str());
        }
    };
    if (d.args_len != sizeof(P)) {
        report(std::string(name) + ": argument block of " + std::to_string(d.args_len) + " bytes, the kernel takes " +
               std::to_string(sizeof(P)));
        return kBadArgs;
    }
    P params;
    std::memcpy(&params, d.args, sizeof(P));
    Launch L;
    L.kernel = name;
    L.grid = {d.grid[0], d.grid[1], d.grid[2]};
    L.block = {d.block[0], d.block[1], d.block[2]};
    L.n_threads = int(d.block[0] * d.block[1] * d.block[2]);
    if (L.n_threads < 1 || L.n_threads > 1024) {
        report(std::string(name) + ": " + std::to_string(L.n_threads) + " threads per block (1 to 1024)");
        return kBadArgs;
    }
    L.buffers.assign(d.buffers, d.buffers + d.n_buffers);
    L.dynamic.name = "the dynamic shared memory";
    L.dynamic.allocate(d.dynamic_smem);
    L.threads.resize(L.n_threads);
    for (int t = 0; t < L.n_threads; ++t) {
        Thread& th = L.threads[t];
        th.linear = t;
        th.idx = {unsigned(t) % L.block.x, (unsigned(t) / L.block.x) % L.block.y, unsigned(t) / (L.block.x * L.block.y)};
        th.stack = g_stacks.take();
        if (!th.stack) {
            report("cannot allocate fiber stacks");
            return kBadArgs;
        }
    }
    L.body = [&] { kernel(params); };
    Launch* outer = g_launch;
    g_launch = &L;
    bool ok = true;
    for (unsigned z = 0; z < L.grid.z && ok; ++z)
        for (unsigned y = 0; y < L.grid.y && ok; ++y)
            for (unsigned x = 0; x < L.grid.x && ok; ++x) {
                L.block_idx = {x, y, z};
                ok = run_block(L);
            }
    g_launch = outer;
    for (Thread& th : L.threads) g_stacks.give(th.stack);
    if (!ok) {
        report(L.error);
        return kFault;
    }
    return kOk;
}

}  // namespace emu
