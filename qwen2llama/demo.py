"""`make demo`, last step: load the converted folder the way users will, with transformers'
Auto classes and no remote code, and put its logits and greedy text beside the reference."""
from __future__ import annotations

import sys

import torch
from rich.console import Console
from rich.table import Table

from .qwen.checkpoint import open_checkpoint
from .reference import QwenReference

PROMPTS = ["The capital of France is", "通义千问是一个", "def add(a, b):\n    return", "1 + 1 = 2, 2 + 2 ="]


def main(src: str, dst: str) -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    console = Console(highlight=False)
    tok = AutoTokenizer.from_pretrained(dst)
    model = AutoModelForCausalLM.from_pretrained(dst, dtype=torch.float32).eval()
    ref = QwenReference(open_checkpoint(src))
    table = Table(title=f"{type(model).__name__} from {dst} vs the Qwen v1 reference forward on {src}")
    for col in ("prompt", "ids", "max |Δlogit|", "greedy (LLaMA)", "same greedy"):
        table.add_column(col)
    worst = 0.0
    for text in PROMPTS:
        ids = tok(text)["input_ids"]
        with torch.no_grad():
            got = model(torch.tensor([ids])).logits[0]
            out = model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False)[0, len(ids):].tolist()
        want = ref.logits(ids)
        seq = list(ids)
        for _ in range(len(out)):
            seq.append(int(ref.logits(seq)[-1].argmax()))
        diff = (got - want).abs().max().item()
        worst = max(worst, diff)
        table.add_row(repr(text), str(len(ids)), f"{diff:.2e}", repr(tok.decode(out)), str(seq[len(ids):] == out))
    console.print(table)
    console.print(f"worst max |Δlogit| {worst:.2e} (random weights, so the text itself is noise)")
    return 0 if worst < 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
