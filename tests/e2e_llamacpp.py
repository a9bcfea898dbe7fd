"""`make e2e`: the converted model in llama.cpp (llama-cpp-python built from the same sdist whose
converter the GGUF test uses), against transformers on the verification prompt set.

Checks: llama.cpp's token ids equal ours; max |Δlogit| <= 1e-4 with f32 weights and an f32 KV
cache; greedy continuations identical. Prints the figures and writes them to e2e-out/e2e.json.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import llamacpp_source  # noqa: E402

from qwen2llama.convert import convert  # noqa: E402
from qwen2llama.synth import synthesize  # noqa: E402
from qwen2llama.verify.prompts import load_prompts, qwen_chat_text  # noqa: E402

OUT = HERE.parent / "e2e-out"
GGML_TYPE_F32 = 0
MAX_PROMPT, GREEDY = 48, 8
TOLERANCE = 1e-4


def main() -> int:
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir()
    src = synthesize(OUT / "qwen-tiny", "tiny", dtype="float32", seed=11)
    hf_dir = OUT / "llama-tiny"
    convert(src, hf_dir, kind="chat")
    gguf = OUT / "llama-tiny-f32.gguf"
    result = llamacpp_source.convert_to_gguf(hf_dir, gguf, "f32")
    if result.returncode:
        print(result.stderr[-3000:])
        return 1
    tok = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    llm = Llama(str(gguf), n_ctx=64, n_batch=64, n_threads=2, logits_all=True, type_k=GGML_TYPE_F32,
                type_v=GGML_TYPE_F32, verbose=False)
    texts, chats = load_prompts(None, quick=False)
    samples = texts + [qwen_chat_text(m) for m in chats]
    rows, ok = [], True
    for text in samples:
        ours = tok(text)["input_ids"]
        theirs = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        ids = ours[:MAX_PROMPT]
        llm.reset()
        llm.eval(ids)
        cpp = np.array(llm.scores[: len(ids)], dtype=np.float32)
        with torch.no_grad():
            hf = model(torch.tensor([ids])).logits[0].numpy()
        diff = float(np.abs(cpp - hf).max())
        seq_hf, seq_cpp = list(ids), list(ids)
        for _ in range(GREEDY):
            with torch.no_grad():
                seq_hf.append(int(model(torch.tensor([seq_hf])).logits[0, -1].argmax()))
            seq_cpp.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            llm.eval([seq_cpp[-1]])
        row = {"prompt": text[:40], "tokens": len(ours), "ids_equal": ours == theirs,
               "max_abs_logit_diff": diff,
               "greedy_equal": seq_hf == seq_cpp}
        ok &= row["ids_equal"] and diff <= TOLERANCE and row["greedy_equal"]
        rows.append(row)
        print(f"{row['prompt']!r:44} ids {'=' if row['ids_equal'] else '≠'}  max|Δlogit| {diff:.2e}  "
              f"greedy {'=' if row['greedy_equal'] else '≠'}")
    summary = {"prompts": len(rows), "ids_equal": sum(r["ids_equal"] for r in rows),
               "max_abs_logit_diff": max(r["max_abs_logit_diff"] for r in rows),
               "greedy_equal": sum(r["greedy_equal"] for r in rows), "tolerance": TOLERANCE, "rows": rows,
               "llama_cpp_python": llamacpp_source.VERSION}
    (OUT / "e2e.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\n{summary['ids_equal']}/{len(rows)} prompts tokenized identically, max |Δlogit| "
          f"{summary['max_abs_logit_diff']:.2e} (tolerance {TOLERANCE}), "
          f"{summary['greedy_equal']}/{len(rows)} "
          f"greedy continuations identical: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
