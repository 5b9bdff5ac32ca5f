"""PyTorch's scaled_dot_product_attention (flash backend) on the shapes the CUDA benchmark ran,
in the same process run, and the comparison table.

Usage: python3 compare.py results/ours.jsonl
Reads the JSON lines benches/cuda.rs wrote (OUTLIER_ATTN_BENCH_OUT), times PyTorch on each
plain-softmax shape with CUDA events, and prints TFLOP/s of both and their ratio, then the cost
of the Heads statistics and of ContextScale relative to Softmax on the same shape.
"""
import json
import sys

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel


def torch_seconds(batch, heads, n, d, causal, iters=10):
    shape = (batch, heads, n, d)
    q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    f = torch.nn.functional.scaled_dot_product_attention
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        for _ in range(3):
            f(q, k, v, is_causal=causal)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            f(q, k, v, is_causal=causal)
        end.record()
        end.synchronize()
    return start.elapsed_time(end) / 1e3 / iters


def flops(r):
    f = 4.0 * r["batch"] * r["heads"] * r["n"] * r["n"] * r["d"]
    return f / 2 if r["causal"] else f


def main():
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    print(f"{'d':>4} {'mask':>6} {'N':>6} {'B':>3} {'ours TF/s':>10} {'torch TF/s':>11} {'ratio':>6}")
    base = {}
    for r in rows:
        key = (r["d"], r["causal"], r["n"], r["batch"])
        if r["variant"] == "Softmax" and r["stats"] == "Off":
            base[key] = r
            t = torch_seconds(r["batch"], r["heads"], r["n"], r["d"], r["causal"])
            theirs = flops(r) / t / 1e12
            print(f"{r['d']:>4} {'causal' if r['causal'] else 'full':>6} {r['n']:>6} {r['batch']:>3} "
                  f"{r['tflops']:>10.1f} {theirs:>11.1f} {r['tflops'] / theirs:>6.2f}")
    print("overheads against Softmax on the same shape (bf16, d = 128, N = 4096):")
    for r in rows:
        key = (r["d"], r["causal"], r["n"], r["batch"])
        if (r["variant"] != "Softmax" or r["stats"] != "Off") and key in base:
            what = f"{r['variant']} stats={r['stats']}"
            extra = r["ms"] / base[key]["ms"] - 1.0
            print(f"  {what:<28} {'causal' if r['causal'] else 'full':>6}  {100 * extra:+.1f} %")


if __name__ == "__main__":
    main()
