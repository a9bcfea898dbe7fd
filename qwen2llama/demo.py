"""`make demo`, last step: load the converted folder the way users will, with transformers'
Auto classes and no remote code, and put its logits and greedy text beside the reference."""
from __future__ import annotations

import sys

import torch
from rich.console import Console
from rich.table import Table

from .qwen.checkpoint import open_checkpoint
from .reference import QwenReference
from .verify.judge import TOL_EXACT, logit_limit

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
    worst, failed = 0.0, 0
    for text in PROMPTS:
        ids = tok(text)["input_ids"]
        with torch.no_grad():
            got = model(torch.tensor([ids])).logits[0]
            out = model.generate(torch.tensor([ids]), max_new_tokens=6,
                                 do_sample=False)[0, len(ids):].tolist()
        want = ref.logits(ids)
        seq = list(ids)
        for _ in range(len(out)):
            seq.append(int(ref.logits(seq)[-1].argmax()))
        diff = (got - want).abs().max().item()
        worst = max(worst, diff)
        same = seq[len(ids):] == out
        failed += diff > logit_limit(want.abs().max().item()) or not same
        table.add_row(repr(text), str(len(ids)), f"{diff:.2e}", repr(tok.decode(out)), str(same))
    console.print(table)
    rel = TOL_EXACT["max_abs_logit_diff_rel"]
    console.print(f"worst max |Δlogit| {worst:.2e}; {len(PROMPTS) - failed}/{len(PROMPTS)} prompts pass "
                  "verify's rule "
                  f"(max |Δlogit| <= {rel:g} x max(1, max |logit|), greedy identical); "
                  "random weights, so the text itself is noise")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
