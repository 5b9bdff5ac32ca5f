#!/usr/bin/env python3
"""PyTorch's CPU scaled_dot_product_attention on the shapes of BENCHMARKS.md's WGSL table.

B = 1, Hq = 8, Hkv = 2 (GQA), no mask, f32, d = 64 and 128, Nq = Nk = 512 and 2048; prints one
line per shape: `d N median_ms GFLOP/s` (4·B·Hq·N²·d FLOP). Run it in a throwaway venv:

    python3 -m venv /tmp/venv-torch && /tmp/venv-torch/bin/pip install torch
    /tmp/venv-torch/bin/python scripts/torch_sdpa_cpu.py [--reps 10]

Threads: PyTorch's default (all cores), as a user would run it.
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads")
    for d in (64, 128):
        for n in (512, 2048):
            q = torch.randn(1, 8, n, d)
            k = torch.randn(1, 2, n, d)
            v = torch.randn(1, 2, n, d)
            times = []
            for i in range(args.reps + 2):
                start = time.perf_counter()
                F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
                if i >= 2:
                    times.append(time.perf_counter() - start)
            ms = statistics.median(times) * 1e3
            flop = 4 * 8 * n * n * d
            print(f"{d} {n} {ms:.3f} {flop / ms / 1e6:.1f}")


if __name__ == "__main__":
    main()
