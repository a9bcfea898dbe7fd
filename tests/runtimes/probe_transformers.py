"""Probe: transformers (any release from 4.45 on) loads each folder with AutoModelForCausalLM /
AutoTokenizer, no remote code, float32; dumps ids, full logits and greedy continuations.
Run with the release under test first on PYTHONPATH: python probe_transformers.py REQUEST OUT"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from protocol import read_request, write_result  # noqa: E402


def main(request_path: str, out: str) -> None:
    req = read_request(request_path)
    result = {"runtime": "transformers", "version": transformers.__version__, "folders": {}}
    for label, folder in req["folders"].items():
        tok = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
        if "ids" not in result:
            result["ids"] = [tok.encode(t, add_special_tokens=False) for t in req["texts"]]
            text = tok.apply_chat_template(req["chat"], add_generation_prompt=True, tokenize=False)
            result["chat_ids"] = tok.encode(text, add_special_tokens=False)
        greedy = []
        with torch.no_grad():
            for k, ids in enumerate(req["prompts"]):
                logits = model(torch.tensor([ids])).logits[0].float().numpy()
                np.save(Path(out, f"{label}-{k}.npy"), logits.astype(np.float32))
                seq = list(ids)
                for _ in range(req["greedy"]):  # argmax by hand: no generation_config penalties
                    seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
                greedy.append(seq[len(ids):])
        result["folders"][label] = {"logits": True, "greedy": greedy}
    write_result(out, result)


if __name__ == "__main__":
    main(*sys.argv[1:3])
