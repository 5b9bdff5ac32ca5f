"""Decode bandwidth beside PyTorch and FlashInfer, in the same run as benches/cuda_decode.rs.

Usage: python3 decode_compare.py results/decode.jsonl [--dry-run]
Reads the JSON lines cuda_decode wrote (the copy bandwidth, each measured case, each skipped
case with its reason), times on the same shapes
  - PyTorch's scaled_dot_product_attention on the cache gathered dense ([B, Hkv, Nk, d], GQA by
    enable_gqa; the gather itself is not timed: SDPA's best case),
  - FlashInfer's BatchDecodeWithPagedKVCacheWrapper on a paged cache of the case's page size
    (paged rows), if flashinfer imports,
and prints one table: K/V bytes read per second as a fraction of the copy bandwidth cuda_decode
measured (the issue's bound: >= 0.6 at Nk >= 16k, aim 0.85), then the gpt-oss layer's window
against its dense layer. Anything missing (PyTorch, FlashInfer, an API, memory) is a cell with
its reason; the script never stops on one.
--dry-run: no GPU, the other columns left empty (checks the script on a results file).
"""
import json
import sys


def kv_bytes(r):
    return 2.0 * r["batch"] * r["nk"] * r["hkv"] * r["d"] * 2


def cuda_seconds(torch, f, iters=20):
    for _ in range(3):
        f()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        f()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / iters


def torch_decode(torch, r):
    """Seconds of SDPA at Nq = 1 on the dense cache, or the reason it did not run."""
    b, hq, hkv, d, nk = r["batch"], r["hq"], r["hkv"], r["d"], r["nk"]
    f = torch.nn.functional.scaled_dot_product_attention
    try:
        q = torch.randn(b, hq, 1, d, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(b, hkv, nk, d, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(b, hkv, nk, d, device="cuda", dtype=torch.bfloat16)
        try:
            return cuda_seconds(torch, lambda: f(q, k, v, enable_gqa=True))
        except TypeError:
            return "this torch has no enable_gqa"
    except torch.cuda.OutOfMemoryError:
        return "out of memory"
    except Exception as e:  # noqa: BLE001 - a cell, not the end of the run
        return f"{type(e).__name__}: {e}"[:60]
    finally:
        torch.cuda.empty_cache()


def flashinfer_decode(torch, flashinfer, r, page_size):
    """Seconds of FlashInfer's paged decode, or the reason it did not run."""
    b, hq, hkv, d, nk = r["batch"], r["hq"], r["hkv"], r["d"], r["nk"]
    try:
        pages_per_seq = -(-nk // page_size)
        pages = b * pages_per_seq
        k = torch.randn(pages, page_size, hkv, d, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(pages, page_size, hkv, d, device="cuda", dtype=torch.bfloat16)
        q = torch.randn(b, hq, d, device="cuda", dtype=torch.bfloat16)
        # Each sequence's pages scattered through the cache, as cuda_decode lays them out.
        indices = torch.randperm(pages, device="cuda", dtype=torch.int32)
        indptr = torch.arange(0, b + 1, device="cuda", dtype=torch.int32) * pages_per_seq
        last = torch.full((b,), nk - (pages_per_seq - 1) * page_size, device="cuda", dtype=torch.int32)
        workspace = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device="cuda")
        w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(workspace, "NHD")
        plan = getattr(w, "plan", None) or getattr(w, "begin_forward")
        plan(indptr, indices, last, hq, hkv, d, page_size, data_type=torch.bfloat16)
        run = getattr(w, "run", None) or getattr(w, "forward")
        return cuda_seconds(torch, lambda: run(q, (k, v)))
    except torch.cuda.OutOfMemoryError:
        return "out of memory"
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {e}"[:60]
    finally:
        torch.cuda.empty_cache()


def cell(x, r, copy):
    if x is None:
        return f"{'':>10}"
    if isinstance(x, str):
        return f" {x[:40]}"
    return f"{kv_bytes(r) / x / copy:>10.3f}"


def main():
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    dry = "--dry-run" in sys.argv
    copy_rows = [r for r in rows if r["kind"] == "copy"]
    if not copy_rows:
        print("no copy bandwidth in the results: cuda_decode did not run to its first case")
        return 1
    copy = copy_rows[0]["copy_gbps"] * 1e9
    print(f"device: {copy_rows[0]['device']}, {copy_rows[0]['multiprocessors']} SMs, "
          f"copy bandwidth (read + write) {copy / 1e9:.0f} GB/s")
    torch = flashinfer = None
    why_torch = why_fi = "dry run"
    if not dry:
        try:
            import torch  # noqa: F811

            why_torch = None
            print(f"torch {torch.__version__}, CUDA {torch.version.cuda}")
        except Exception as e:  # noqa: BLE001
            why_torch = f"no torch ({e})"
        try:
            import flashinfer  # noqa: F811

            why_fi = None
            print(f"flashinfer {getattr(flashinfer, '__version__', '?')}")
        except Exception as e:  # noqa: BLE001
            why_fi = "flashinfer not importable"
            print(f"{why_fi}: {e}")

    ours = [r for r in rows if r["kind"] == "ours" and r["case"].startswith("decode/")]
    print("\nK/V bytes read per second / copy bandwidth (decode, bf16, Nq = 1)")
    print(f"{'case':<40} {'ms':>8} {'ours':>10} {'torch':>10} {'flashinfer':>10}")
    torch_cache = {}
    for r in ours:
        key = (r["batch"], r["hq"], r["hkv"], r["d"], r["nk"])
        if key not in torch_cache:
            torch_cache[key] = why_torch if why_torch else torch_decode(torch, r)
        t = torch_cache[key]
        # FlashInfer on the paged rows only (its kernel reads a paged cache; the dense rows'
        # own column is PyTorch's).
        page = r["page_size"]
        fi = None if not page else (why_fi if why_fi else flashinfer_decode(torch, flashinfer, r, page))
        print(f"{r['case']:<40} {r['ms']:>8.3f} {r['of_copy']:>10.3f}{cell(t, r, copy)}{cell(fi, r, copy)}")
    long = [r for r in ours if r["nk"] >= 16384]
    if long:
        worst = min(long, key=lambda r: r["of_copy"])
        print(f"\nNk >= 16k: ours from {worst['of_copy']:.3f} ({worst['case']}) to "
              f"{max(r['of_copy'] for r in long):.3f} of the copy bandwidth (bound 0.6, aim 0.85)")

    layer = {r["case"]: r for r in rows if r["kind"] == "ours" and r["case"].startswith("gpt-oss/")}
    print("\ngpt-oss layer (LogitSink, 64/8 heads, d = 64): 128-token window against the dense layer")
    for n in (8192, 32768):
        for what in ("prefill", "decode"):
            w = layer.get(f"gpt-oss/{what}/window128/n{n}")
            dense = layer.get(f"gpt-oss/{what}/dense/n{n}")
            if w and dense:
                print(f"  {what:<8} n={n:<6} window {w['ms']:.3f} ms, dense {dense['ms']:.3f} ms: "
                      f"{dense['ms'] / w['ms']:.1f}x (bound at 32k prefill: 20x)")
            else:
                print(f"  {what:<8} n={n:<6} not measured (see the skipped cases)")

    skipped = [r for r in rows if r["kind"] == "skipped"]
    if skipped:
        reasons = {}
        for r in skipped:
            reasons.setdefault(r["why"], []).append(r["case"])
        print(f"\nnot measured: {len(skipped)} cases")
        for why, cases in reasons.items():
            print(f"  {len(cases):>3} x {why}   (e.g. {cases[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
