"""Probe: MLX (CPU backend) with mlx-lm loads each folder unmodified (`mlx_lm.load`, strict: every
tensor used, none missing); dumps its tokenizer wrapper's ids and chat template, full logits in
float32 and greedy continuations. Run with MLX's own environment: python probe_mlx.py REQUEST OUT"""
from __future__ import annotations

import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx_lm import load

sys.path.insert(0, str(Path(__file__).resolve().parent))
from protocol import read_request, write_result  # noqa: E402


def main(request_path: str, out: str) -> None:
    from importlib.metadata import version

    req = read_request(request_path)
    result = {"runtime": "MLX (CPU) + mlx-lm", "version": f"mlx {version('mlx')}, mlx-lm {version('mlx-lm')}",
              "folders": {}}
    for label, folder in req["folders"].items():
        model, tok = load(folder)  # strict weight loading is mlx-lm's default
        if "ids" not in result:
            result["ids"] = [tok.encode(t, add_special_tokens=False) for t in req["texts"]]
            text = tok.apply_chat_template(req["chat"], add_generation_prompt=True, tokenize=False)
            result["chat_ids"] = tok.encode(text, add_special_tokens=False)
            result["weights_dtype"] = str(next(iter(dict(_leaves(model.parameters())).values())).dtype)
        greedy = []
        for k, ids in enumerate(req["prompts"]):
            logits = model(mx.array([ids]))[0].astype(mx.float32)
            np.save(Path(out, f"{label}-{k}.npy"), np.array(logits))
            seq = list(ids)
            for _ in range(req["greedy"]):
                seq.append(int(mx.argmax(model(mx.array([seq]))[0, -1]).item()))
            greedy.append(seq[len(ids):])
        result["folders"][label] = {"logits": True, "greedy": greedy}
    write_result(out, result)


def _leaves(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaves(v, f"{prefix}{k}.")
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _leaves(v, f"{prefix}{i}.")
    else:
        yield prefix[:-1], tree


if __name__ == "__main__":
    main(*sys.argv[1:3])
