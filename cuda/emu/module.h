// outlier-attn CUDA emulator, part 3: a module's launch entry. The Rust side appends
//   OUTLIER_ATTN_EMU_MODULE(EMU_KERNEL(attention_tc) EMU_KERNEL(channel_partials) ...)
// after the kernel sources; each named kernel takes one argument struct by value, as on the GPU.
#pragma once

#include "ptx.h"

#define EMU_KERNEL(fn) \
    if (std::strcmp(d->entry, #fn) == 0) return ::emu::launch(fn, #fn, *d);

// No C++ exception leaves the module: the caller is Rust.
#define OUTLIER_ATTN_EMU_MODULE(kernels)                                                       \
    extern "C" __attribute__((visibility("default"))) int outlier_attn_emu_launch(             \
        const ::emu::LaunchDesc* d) {                                                           \
        try {                                                                                   \
            kernels                                                                             \
        } catch (const std::exception& e) {                                                     \
            if (d->error && d->error_len) std::snprintf(d->error, d->error_len, "%s", e.what()); \
            return ::emu::kBadArgs;                                                             \
        }                                                                                       \
        if (d->error && d->error_len)                                                           \
            std::snprintf(d->error, d->error_len, "no kernel `%s` in this module", d->entry);     \
        return ::emu::kNoSuchEntry;                                                             \
    }
