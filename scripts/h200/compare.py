"""PyTorch's scaled_dot_product_attention (flash backend) on the shapes the CUDA benchmark ran,
in the same run, and one table of the comparison.

Usage: python3 compare.py results/ours.jsonl
Reads the JSON lines benches/cuda.rs wrote (OUTLIER_ATTN_BENCH_OUT), times PyTorch on each
plain-softmax shape (bf16 and f16, d = 64 and 128, causal and not, N = 1k..16k) with CUDA
events, and prints one table: a row per shape with both TFLOP/s and their ratio, then a row per
statistics level and variant measured at bf16, d = 128, N = 4096 with its cost over Softmax on
the same shape (the issue's bounds: Heads <= 5 %, HeadsAndKeys <= 60 %, ContextScale and
LogitSink <= 3 %).
"""
import json
import sys

DTYPES = {"bf16": "bfloat16", "f16": "float16"}


def torch_seconds(torch, dtype, batch, heads, n, d, causal, iters=10):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    shape = (batch, heads, n, d)
    kind = getattr(torch, DTYPES[dtype])
    q, k, v = (torch.randn(shape, device="cuda", dtype=kind) for _ in range(3))
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


def shape_key(r):
    return (r.get("dtype", "bf16"), r["d"], r["causal"], r["n"], r["batch"])


def table(rows, torch_tflops):
    """The lines of the table; `torch_tflops(r)` times PyTorch on a plain-softmax row."""
    lines = [
        f"{'case':<56} {'ours ms':>9} {'ours TF/s':>10} {'torch TF/s':>11} {'ratio':>6} {'vs Softmax':>11}"
    ]
    base = {}
    for r in rows:
        if r["variant"] == "Softmax" and r["stats"] == "Off":
            base[shape_key(r)] = r
    for r in rows:
        mask = "causal" if r["causal"] else "full"
        what = f"{r.get('dtype', 'bf16')} d={r['d']} {mask} N={r['n']} B={r['batch']}"
        if r["variant"] == "Softmax" and r["stats"] == "Off":
            theirs = torch_tflops(r)
            lines.append(
                f"{what:<56} {r['ms']:>9.3f} {r['tflops']:>10.1f} {theirs:>11.1f} {r['tflops'] / theirs:>6.2f} {'':>11}"
            )
    for r in rows:
        key = shape_key(r)
        if (r["variant"] != "Softmax" or r["stats"] != "Off") and key in base:
            mask = "causal" if r["causal"] else "full"
            what = f"  {r['variant']} stats={r['stats']} ({r.get('dtype', 'bf16')} d={r['d']} {mask} N={r['n']})"
            extra = r["ms"] / base[key]["ms"] - 1.0
            lines.append(
                f"{what:<56} {r['ms']:>9.3f} {r['tflops']:>10.1f} {'':>11} {'':>6} {100 * extra:>+10.1f}%"
            )
    return lines


def main():
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    if "--dry-run" in sys.argv:
        # No GPU: the table with PyTorch's column taken as equal to ours (checks the script).
        lines = table(rows, lambda r: r["tflops"])
    else:
        import torch

        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}")

        def theirs(r):
            t = torch_seconds(torch, r.get("dtype", "bf16"), r["batch"], r["heads"], r["n"], r["d"], r["causal"])
            return flops(r) / t / 1e12

        lines = table(rows, theirs)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
