#!/usr/bin/env python3
"""Writes three engine-shaped attention calls (DESIGN.md section 6) into tests/fixtures/, each with
PyTorch's answer beside it, as an oracle for `outlier-attn run FILE` that does not come from the
crate's own reference.

Inputs are drawn uniformly in [-1, 1] from a fixed torch seed, then q is scaled by 3 so that the
softmax is not flat. Scores are s_ij = σ·(q_i·k_j) with σ = 1/sqrt(d); query head h reads kv head
h // (Hq/Hkv). Masks are aligned bottom-right per sequence: with Nq_b queries and Nk_b keys, key j
is visible to query i iff i + Nk_b - Nq_b - left <= j <= i + Nk_b - Nq_b (left unbounded unless a
window is given).

1. tests/fixtures/packed_prefill.safetensors: packed (varlen) prefill, Softmax, causal, GQA.
     q [total_q=28, Hq=4, 64] f16, k, v [total_k=60, Hkv=2, 64] f16,
     cu_seqlens_q = [0, 7, 8, 28], cu_seqlens_k = [0, 7, 40, 60] (int32; q lens [7, 1, 20],
     k lens [7, 33, 20]). Key 0 of each sequence carries a large value (SINK_VALUE) in channel
     SINK_CHANNEL, and that channel of q is made non-negative, so key 0 becomes an attention sink.
     args: "--variant softmax --mask causal"
2. tests/fixtures/paged_decode.safetensors: batched decode over a paged KV cache, Softmax, no mask.
     q [B=4, 1, Hq=8, 64] f16, k_cache, v_cache [pages=40, page_size=16, Hkv=2, 64] f16,
     block_table [4, 12] int32 (logical page p of sequence b is physical page block_table[b, p];
     physical pages are a random permutation, so sequences interleave; entries past the pages a
     sequence uses are -1), seqlens_k [4] int32 = [1, 16, 77, 190]. Every cache slot outside a
     sequence (unused slots of a last page, unused pages) is NaN, so a kernel that reads one fails.
     args: "--variant softmax"
3. tests/fixtures/gpt_oss_window.safetensors: a gpt-oss-shaped layer, LogitSink, causal with a
   sliding window left = 127, packed, GQA.
     q [total_q=190, Hq=8, 64] bf16, k, v [total_k=350, Hkv=2, 64] bf16,
     cu_seqlens_q = [0, 150, 190], cu_seqlens_k = [0, 150, 350] (q lens [150, 40], k lens
     [150, 200]), sink_logits [8] f32 in [-3, 3]:
     o_i = Σ_j e^{s_ij} v_j / (e^{θ_h} + Σ_j e^{s_ij}); the sink is never masked.
     args: "--variant logit-sink --mask causal --window-left 127"

PyTorch's results, in each file, computed per sequence in float64 from the exact f16/bf16 input
values (upcast), with an explicit boolean band mask and an explicit logsumexp:
  torch.o                 Q's layout ([total_q, Hq, d] packed, [B, Nq, Hq, d] dense), f32
  torch.lse               natural-log LSE of the row's denominator (the sink term e^θ included for
                          LogitSink), f32, [Hq, total_q] for packed Q, [B, Hq, Nq] for dense Q
  torch.first_key_mass    [B, Hq] f32: per (sequence, head), the mean over the sequence's query rows
                          of the probability on the sequence's key 0 (0 for a row that cannot see
                          key 0; rows that see no key are left out of the mean, but with a sink
                          every row counts)
The explicit output is checked against torch.nn.functional.scaled_dot_product_attention in float64
(math backend, enable_gqa; for LogitSink the sink is an extra key with k = 0, v = 0 and an additive
mask of θ_h), and the explicit LSE against a direct log(Σ exp); both must agree to 1e-10.
Metadata: "args" (the outlier-attn flags that replay the file), "torch" (version), "description",
"seed", "generator".

After writing, the script reloads each file and checks names, shapes and dtypes, that NaN appears in
the paged caches exactly in the slots no sequence uses (and nowhere else), that the results are
finite, and that they match a NumPy recomputation from the reloaded file, row by row and head by
head, with visibility written as the scalar rule and paged keys fetched slot by slot through
block_table (rtol 1e-6: the results were rounded once to f32).

Regenerate (PyTorch from PyPI is large, several GB with its CUDA libraries: use a throwaway
virtual environment outside the repository; the CPU is enough):

    python3 -m venv /tmp/venv-torch
    /tmp/venv-torch/bin/pip install torch safetensors numpy
    /tmp/venv-torch/bin/python scripts/make_engine_replays.py

The files are byte-for-byte reproducible for a given torch version (CPU torch's generator seeded
with SEED; the header is written with sorted keys).
"""

import json
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
SEED = 20250206
Q_SCALE = 3.0
AGREE = 1e-10  # explicit vs SDPA (o) and explicit vs direct log Σ exp (lse), float64
SINK_CHANNEL = 5  # packed_prefill: the channel of key 0 that carries the planted value
SINK_VALUE = 24.0  # exactly representable in f16


def uniform(gen: torch.Generator, *shape: int) -> torch.Tensor:
    """Uniform in [-1, 1), float32."""
    return torch.rand(*shape, generator=gen, dtype=torch.float32) * 2.0 - 1.0


def cu(lens: list[int]) -> torch.Tensor:
    out = [0]
    for n in lens:
        out.append(out[-1] + n)
    return torch.tensor(out, dtype=torch.int32)


def band_mask(nq: int, nk: int, left: int | None) -> torch.Tensor:
    """[nq, nk] bool, True where key j is visible to query i (causal, bottom-right aligned,
    optional left window)."""
    i = torch.arange(nq).unsqueeze(1)
    j = torch.arange(nk).unsqueeze(0)
    diag = i + nk - nq
    visible = j <= diag
    if left is not None:
        visible &= j >= diag - left
    return visible


class Agreement:
    """The worst disagreement seen between the explicit computation and its cross-checks."""

    def __init__(self) -> None:
        self.o = 0.0
        self.lse = 0.0

    def update(self, o: float, lse: float) -> None:
        self.o = max(self.o, o)
        self.lse = max(self.lse, lse)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
           sink: torch.Tensor | None, agree: Agreement):
    """One sequence in float64. q [Nq, Hq, d], k/v [Nk, Hkv, d] (already upcast), mask [Nq, Nk]
    bool or None (all visible), sink [Hq] float64 logits or None.

    Returns o [Nq, Hq, d], lse [Hq, Nq], p [Hq, Nq, Nk] (probabilities of the real keys) and
    has_key [Nq] (rows that see at least one key)."""
    assert q.dtype == k.dtype == v.dtype == torch.float64
    nq, hq, d = q.shape
    nk, hkv, _ = k.shape
    group = hq // hkv
    scale = 1.0 / d ** 0.5
    if mask is None:
        mask = torch.ones(nq, nk, dtype=torch.bool)

    qh = q.permute(1, 0, 2)                                   # [Hq, Nq, d]
    kh = k.permute(1, 0, 2).repeat_interleave(group, dim=0)   # [Hq, Nk, d]: head h -> h // group
    vh = v.permute(1, 0, 2).repeat_interleave(group, dim=0)
    s = scale * (qh @ kh.transpose(1, 2))                     # [Hq, Nq, Nk]
    s = s.masked_fill(~mask, float("-inf"))
    if sink is not None:
        s_all = torch.cat([sink.view(hq, 1, 1).expand(hq, nq, 1), s], dim=2)
    else:
        s_all = s
    lse = torch.logsumexp(s_all, dim=2)                       # [Hq, Nq]
    has_key = mask.any(dim=1)
    finite = torch.isfinite(lse)
    # Rows with an empty sum (no key, no sink) give -inf and A_i = 0, never NaN.
    p = torch.where(finite.unsqueeze(2), torch.exp(s - lse.unsqueeze(2)), torch.zeros_like(s))
    o = p @ vh                                                # [Hq, Nq, d]

    # Cross-check 1: the LSE as a direct log Σ exp (scores here are small enough not to overflow).
    direct = torch.log(torch.exp(s_all).sum(dim=2))
    lse_err = (lse[finite] - direct[finite]).abs().max().item() if finite.any() else 0.0
    assert torch.equal(finite, torch.isfinite(direct)), "LSE: finite rows differ"

    # Cross-check 2: PyTorch's own SDPA, float64, math backend, its own GQA expansion.
    rows = torch.ones_like(has_key) if sink is not None else has_key  # rows SDPA defines
    if sink is None:
        sdpa = F.scaled_dot_product_attention(
            qh.unsqueeze(0), k.permute(1, 0, 2).unsqueeze(0), v.permute(1, 0, 2).unsqueeze(0),
            attn_mask=mask, scale=scale, enable_gqa=True)[0]
    else:
        # The sink as one extra key whose score is 0 (k = 0) plus an additive mask of θ_h; its
        # value is 0, so it adds e^θ to the denominator and nothing to the numerator.
        zeros = torch.zeros(hkv, 1, d, dtype=torch.float64)
        k_ext = torch.cat([zeros, k.permute(1, 0, 2)], dim=1).unsqueeze(0)
        v_ext = torch.cat([zeros, v.permute(1, 0, 2)], dim=1).unsqueeze(0)
        additive = torch.zeros(hq, nq, nk, dtype=torch.float64).masked_fill(~mask, float("-inf"))
        additive = torch.cat([sink.view(hq, 1, 1).expand(hq, nq, 1), additive], dim=2)
        sdpa = F.scaled_dot_product_attention(
            qh.unsqueeze(0), k_ext, v_ext, attn_mask=additive.unsqueeze(0), scale=scale,
            enable_gqa=True)[0]
    o_err = (sdpa[:, rows] - o[:, rows]).abs().max().item() if rows.any() else 0.0
    assert o_err <= AGREE, f"SDPA and the explicit output differ by {o_err}"
    assert lse_err <= AGREE, f"logsumexp and log Σ exp differ by {lse_err}"
    agree.update(o_err, lse_err)
    return o.permute(1, 0, 2), lse, p, has_key


def first_key_mass(p: torch.Tensor, has_key: torch.Tensor, with_sink: bool) -> torch.Tensor:
    """[Hq]: mean over counted rows of the probability on key 0 (p is 0 where key 0 is masked)."""
    rows = torch.ones_like(has_key) if with_sink else has_key
    if not rows.any():
        return torch.zeros(p.shape[0], dtype=torch.float64)
    return p[:, rows, 0].mean(dim=1)


def packed(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
           cu_q: torch.Tensor, cu_k: torch.Tensor, left: int | None, sink: torch.Tensor | None,
           agree: Agreement) -> dict[str, torch.Tensor]:
    """PyTorch's results for a packed causal call, sequence by sequence."""
    total_q, hq, d = q.shape
    o = torch.zeros(total_q, hq, d, dtype=torch.float64)
    lse = torch.zeros(hq, total_q, dtype=torch.float64)
    fkm = torch.zeros(len(cu_q) - 1, hq, dtype=torch.float64)
    for b in range(len(cu_q) - 1):
        q0, q1 = int(cu_q[b]), int(cu_q[b + 1])
        k0, k1 = int(cu_k[b]), int(cu_k[b + 1])
        mask = band_mask(q1 - q0, k1 - k0, left)
        ob, lb, pb, has_key = attend(q[q0:q1].double(), k[k0:k1].double(), v[k0:k1].double(),
                                     mask, None if sink is None else sink.double(), agree)
        o[q0:q1], lse[:, q0:q1] = ob, lb
        fkm[b] = first_key_mass(pb, has_key, sink is not None)
    return {"torch.o": o.float(), "torch.lse": lse.float(), "torch.first_key_mass": fkm.float()}


def make_packed_prefill(gen: torch.Generator, agree: Agreement):
    q_lens, k_lens, hq, hkv, d = [7, 1, 20], [7, 33, 20], 4, 2, 64
    cu_q, cu_k = cu(q_lens), cu(k_lens)
    q = uniform(gen, int(cu_q[-1]), hq, d) * Q_SCALE
    q[:, :, SINK_CHANNEL] = q[:, :, SINK_CHANNEL].abs()
    k = uniform(gen, int(cu_k[-1]), hkv, d)
    v = uniform(gen, int(cu_k[-1]), hkv, d)
    k[cu_k[:-1].long(), :, SINK_CHANNEL] = SINK_VALUE
    q, k, v = q.half(), k.half(), v.half()
    tensors = {"q": q, "k": k, "v": v, "cu_seqlens_q": cu_q, "cu_seqlens_k": cu_k}
    tensors |= packed(q, k, v, cu_q, cu_k, left=None, sink=None, agree=agree)
    meta = {
        "args": "--variant softmax --mask causal",
        "description": (
            "packed (varlen) prefill, Softmax, causal aligned bottom-right per sequence, GQA "
            f"Hq=4 Hkv=2 d=64, q lens {q_lens}, k lens {k_lens}; key 0 of each sequence has "
            f"{SINK_VALUE} in channel {SINK_CHANNEL} (q's channel {SINK_CHANNEL} non-negative), "
            "so it is an attention sink"),
    }
    return tensors, meta


def make_paged_decode(gen: torch.Generator, agree: Agreement):
    seqlens, hq, hkv, d = [1, 16, 77, 190], 8, 2, 64
    pages, page_size, max_pages = 40, 16, 12
    b = len(seqlens)
    q = (uniform(gen, b, 1, hq, d) * Q_SCALE).half()
    k_cache = uniform(gen, pages, page_size, hkv, d).half()
    v_cache = uniform(gen, pages, page_size, hkv, d).half()
    used_slots = torch.zeros(pages, page_size, dtype=torch.bool)
    block_table = torch.full((b, max_pages), -1, dtype=torch.int32)
    perm = torch.randperm(pages, generator=gen)
    next_page = 0
    for s, n in enumerate(seqlens):
        for p in range((n + page_size - 1) // page_size):
            phys = int(perm[next_page])
            next_page += 1
            block_table[s, p] = phys
            used_slots[phys, :min(page_size, n - p * page_size)] = True
    assert max(seqlens) <= max_pages * page_size
    k_cache[~used_slots] = float("nan")
    v_cache[~used_slots] = float("nan")

    o = torch.zeros(b, 1, hq, d, dtype=torch.float64)
    lse = torch.zeros(b, hq, 1, dtype=torch.float64)
    fkm = torch.zeros(b, hq, dtype=torch.float64)
    for s, n in enumerate(seqlens):
        n_pages = (n + page_size - 1) // page_size
        table = block_table[s, :n_pages].long()
        ks = k_cache[table].reshape(-1, hkv, d)[:n].double()  # logical order
        vs = v_cache[table].reshape(-1, hkv, d)[:n].double()
        assert torch.isfinite(ks).all() and torch.isfinite(vs).all(), "gathered an unused slot"
        ob, lb, pb, has_key = attend(q[s].double(), ks, vs, None, None, agree)
        o[s], lse[s] = ob, lb
        fkm[s] = first_key_mass(pb, has_key, with_sink=False)
    tensors = {
        "q": q, "k_cache": k_cache, "v_cache": v_cache, "block_table": block_table,
        "seqlens_k": torch.tensor(seqlens, dtype=torch.int32),
        "torch.o": o.float(), "torch.lse": lse.float(), "torch.first_key_mass": fkm.float(),
    }
    meta = {
        "args": "--variant softmax",
        "description": (
            f"batched decode over a paged KV cache, Softmax, no mask, GQA Hq=8 Hkv=2 d=64, "
            f"{pages} pages of {page_size} slots, seqlens_k {seqlens}, physical pages a random "
            "permutation (sequences interleave), block_table -1 past a sequence's pages, every "
            "cache slot outside a sequence NaN"),
    }
    return tensors, meta, used_slots


def make_gpt_oss_window(gen: torch.Generator, agree: Agreement):
    q_lens, k_lens, hq, hkv, d, left = [150, 40], [150, 200], 8, 2, 64, 127
    cu_q, cu_k = cu(q_lens), cu(k_lens)
    q = (uniform(gen, int(cu_q[-1]), hq, d) * Q_SCALE).bfloat16()
    k = uniform(gen, int(cu_k[-1]), hkv, d).bfloat16()
    v = uniform(gen, int(cu_k[-1]), hkv, d).bfloat16()
    sink = uniform(gen, hq) * 3.0
    tensors = {"q": q, "k": k, "v": v, "cu_seqlens_q": cu_q, "cu_seqlens_k": cu_k,
               "sink_logits": sink}
    tensors |= packed(q, k, v, cu_q, cu_k, left=left, sink=sink, agree=agree)
    meta = {
        "args": f"--variant logit-sink --mask causal --window-left {left}",
        "description": (
            "gpt-oss-shaped layer: LogitSink (learned per-head sink logits in the softmax "
            f"denominator, never masked), causal + sliding window left={left}, packed, GQA "
            f"Hq=8 Hkv=2 d=64, q lens {q_lens}, k lens {k_lens}"),
    }
    return tensors, meta


EXPECT = {
    "packed_prefill": {
        "q": ([28, 4, 64], torch.float16), "k": ([60, 2, 64], torch.float16),
        "v": ([60, 2, 64], torch.float16), "cu_seqlens_q": ([4], torch.int32),
        "cu_seqlens_k": ([4], torch.int32), "torch.o": ([28, 4, 64], torch.float32),
        "torch.lse": ([4, 28], torch.float32), "torch.first_key_mass": ([3, 4], torch.float32),
    },
    "paged_decode": {
        "q": ([4, 1, 8, 64], torch.float16), "k_cache": ([40, 16, 2, 64], torch.float16),
        "v_cache": ([40, 16, 2, 64], torch.float16), "block_table": ([4, 12], torch.int32),
        "seqlens_k": ([4], torch.int32), "torch.o": ([4, 1, 8, 64], torch.float32),
        "torch.lse": ([4, 8, 1], torch.float32), "torch.first_key_mass": ([4, 8], torch.float32),
    },
    "gpt_oss_window": {
        "q": ([190, 8, 64], torch.bfloat16), "k": ([350, 2, 64], torch.bfloat16),
        "v": ([350, 2, 64], torch.bfloat16), "cu_seqlens_q": ([3], torch.int32),
        "cu_seqlens_k": ([3], torch.int32), "sink_logits": ([8], torch.float32),
        "torch.o": ([190, 8, 64], torch.float32), "torch.lse": ([8, 190], torch.float32),
        "torch.first_key_mass": ([2, 8], torch.float32),
    },
}


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    """safetensors' own writer, with the JSON header re-serialised with sorted keys: its metadata
    map comes out in hash order, which would make every regeneration a different file."""
    raw = save({k: t.contiguous() for k, t in tensors.items()}, metadata=meta)
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.dumps(json.loads(raw[8:8 + n]), sort_keys=True, separators=(",", ":"))
    header += " " * (-len(header) % 8)  # the data section stays 8-byte aligned
    path.write_bytes(struct.pack("<Q", len(header)) + header.encode() + raw[8 + n:])


def row_by_row(got: dict[str, torch.Tensor], left: int | None, with_mask: bool):
    """The results again from the reloaded file, in NumPy float64, one (row, head) at a time, with
    visibility written as the scalar rule and paged keys fetched slot by slot through
    block_table: a check of the band mask and the gather that does not share their code."""
    f64 = {k: t.double().numpy() if t.is_floating_point() else t.numpy() for k, t in got.items()}
    q = f64["q"]
    paged = "k_cache" in f64
    if paged:
        b = q.shape[0]
        q_rows = [q[s] for s in range(b)]
        page_size = f64["k_cache"].shape[1]

        def keys(s):
            slots = [(int(f64["block_table"][s, j // page_size]), j % page_size)
                     for j in range(int(f64["seqlens_k"][s]))]
            return (np.stack([f64["k_cache"][p, t] for p, t in slots]),
                    np.stack([f64["v_cache"][p, t] for p, t in slots]))
    else:
        cq, ck = f64["cu_seqlens_q"], f64["cu_seqlens_k"]
        b = len(cq) - 1
        q_rows = [q[cq[s]:cq[s + 1]] for s in range(b)]

        def keys(s):
            return f64["k"][ck[s]:ck[s + 1]], f64["v"][ck[s]:ck[s + 1]]
    hq, d = q.shape[-2], q.shape[-1]
    sink = f64.get("sink_logits")
    o_all, lse_all, fkm = [], [], np.zeros((b, hq))
    for s in range(b):
        k, v = keys(s)
        nq, nk, hkv = q_rows[s].shape[0], k.shape[0], k.shape[1]
        o_s, lse_s = np.zeros((nq, hq, d)), np.zeros((hq, nq))
        for h in range(hq):
            g = h // (hq // hkv)
            masses = []
            for i in range(nq):
                vis = [j for j in range(nk) if not with_mask or (
                    j <= i + nk - nq and (left is None or j >= i + nk - nq - left))]
                sc = np.array([q_rows[s][i, h] @ k[j, g] for j in vis]) / np.sqrt(d)
                terms = np.concatenate([[sink[h]] if sink is not None else [], sc])
                if len(terms) == 0:
                    lse_s[h, i] = -np.inf
                    continue
                m = terms.max()
                lse_s[h, i] = m + np.log(np.exp(terms - m).sum())
                w = np.exp(sc - lse_s[h, i])
                o_s[i, h] = (w[:, None] * v[vis, g]).sum(axis=0) if vis else 0.0
                masses.append(w[0] if vis and vis[0] == 0 else 0.0)
            fkm[s, h] = np.mean(masses) if masses else 0.0
        o_all.append(o_s)
        lse_all.append(lse_s)
    if paged:
        return np.stack(o_all), np.stack(lse_all), fkm
    return np.concatenate(o_all), np.concatenate(lse_all, axis=1), fkm


def self_check(name: str, path: Path, used_slots: torch.Tensor | None) -> float:
    """Reloads a written file and checks it against EXPECT, the row-by-row recomputation and the
    NaN rule. Returns the worst difference from the row-by-row recomputation."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        got = {key: f.get_tensor(key) for key in f.keys()}
    assert set(meta) >= {"args", "torch", "description"}, f"{name}: metadata {sorted(meta)}"
    assert set(got) == set(EXPECT[name]), f"{name}: tensors {sorted(got)}"
    for key, (shape, dtype) in EXPECT[name].items():
        t = got[key]
        assert list(t.shape) == shape and t.dtype == dtype, f"{name}.{key}: {t.shape} {t.dtype}"
        if key.startswith("torch."):
            assert torch.isfinite(t).all(), f"{name}.{key} is not finite"
    for key in ("cu_seqlens_q", "cu_seqlens_k"):
        if key in got:
            c = got[key]
            total = got["q" if key.endswith("q") else "k"].shape[0]
            assert c[0] == 0 and bool((c[1:] >= c[:-1]).all()) and c[-1] == total, f"{name}.{key}"
    left = {"packed_prefill": None, "paged_decode": None, "gpt_oss_window": 127}[name]
    o, lse, fkm = row_by_row(got, left, with_mask=name != "paged_decode")
    worst = 0.0
    for key, mine in (("torch.o", o), ("torch.lse", lse), ("torch.first_key_mass", fkm)):
        # torch's float64 results were rounded once to f32: 2^-24 relative, plus a little.
        err = np.abs(got[key].double().numpy() - mine).max()
        worst = max(worst, float(err))
        assert np.allclose(got[key].double().numpy(), mine, rtol=1e-6, atol=1e-7), \
            f"{name}.{key}: row-by-row recomputation differs by {err}"
    if used_slots is None:
        for key in ("q", "k", "v", "sink_logits"):
            if key in got:
                assert torch.isfinite(got[key].float()).all(), f"{name}.{key} has NaN/inf"
        return worst
    assert torch.isfinite(got["q"].float()).all(), f"{name}.q has NaN/inf"
    seqlens, table = got["seqlens_k"], got["block_table"]
    pages, page_size = got["k_cache"].shape[:2]
    # The used slots, recomputed from the file's own block_table and seqlens_k.
    used = torch.zeros(pages, page_size, dtype=torch.bool)
    for s, n in enumerate(seqlens.tolist()):
        n_pages = (n + page_size - 1) // page_size
        assert bool((table[s, :n_pages] >= 0).all()) and bool((table[s, :n_pages] < pages).all())
        assert bool((table[s, n_pages:] == -1).all()), f"{name}: block_table row {s} past its pages"
        for p in range(n_pages):
            used[int(table[s, p]), :min(page_size, n - p * page_size)] = True
    assert torch.equal(used, used_slots)
    assert len(set(table[table >= 0].tolist())) == int((table >= 0).sum()), "a page used twice"
    for key in ("k_cache", "v_cache"):
        nan = torch.isnan(got[key].float())  # [pages, page_size, Hkv, d]
        assert bool(nan[~used].all()), f"{name}.{key}: an unused slot is not NaN"
        assert not bool(nan[used].any()), f"{name}.{key}: NaN in a used slot"
        assert torch.isfinite(got[key][used].float()).all(), f"{name}.{key}: inf in a used slot"
    return worst


def main() -> None:
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    FIXTURES.mkdir(parents=True, exist_ok=True)
    common = {"torch": torch.__version__, "seed": str(SEED),
              "generator": "scripts/make_engine_replays.py"}
    for name in ("packed_prefill", "paged_decode", "gpt_oss_window"):
        agree = Agreement()
        used = None
        if name == "packed_prefill":
            tensors, meta = make_packed_prefill(gen, agree)
        elif name == "paged_decode":
            tensors, meta, used = make_paged_decode(gen, agree)
        else:
            tensors, meta = make_gpt_oss_window(gen, agree)
        path = FIXTURES / f"{name}.safetensors"
        write_safetensors(path, tensors, common | meta)
        row_err = self_check(name, path, used)
        size = path.stat().st_size
        # gpt_oss_window is ~770 KB at the shapes above (torch.o alone, f32, is 389 KB).
        assert size < 1_000_000, f"{path} is {size} bytes"
        fkm = tensors["torch.first_key_mass"]
        print(f"wrote {path.relative_to(FIXTURES.parent.parent)} ({size} bytes); "
              f"max |SDPA - explicit| o = {agree.o:.3e}, "
              f"max |logsumexp - log sum exp| lse = {agree.lse:.3e}; "
              f"max |stored f32 - NumPy row by row| = {row_err:.3e}; "
              f"first_key_mass per sequence (mean over heads) "
              f"{[round(x, 4) for x in fkm.mean(dim=1).tolist()]}")
    print(f"torch {torch.__version__}")


if __name__ == "__main__":
    main()
