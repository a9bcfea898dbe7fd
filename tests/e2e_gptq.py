"""`make e2e` (GPTQ): a converted Int4/Int8 release loaded by transformers with its GPTQ
integration (optimum + gptqmodel, CPU kernels, float16), against the Qwen reference forward on
the *source* (dequantized by the reference's own code, float32). Runs in its own environment
(.cache/e2e/gptq: gptqmodel pins its own torch).

Checks per release: our token ids equal AutoTokenizer's; max |Δlogit| / max |logit| <= 1e-2
(float16 activations in the kernels: ~1e-3 seen; float32 round-off would be 1e-6) and top-1
agreement >= 0.98 over every prompt position. A planted defect (gate/up qweight swapped) must
fail the same comparison. Figures go to e2e-out/gptq.json.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "e2e-out" / "gptq"
REL_TOL, TOP1_MIN = 1e-2, 0.98


def compare(folder: Path, reference, prompts) -> dict:
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(folder, device_map="cpu", dtype=torch.float16).eval()
    load_s = time.perf_counter() - t0
    worst_rel, agree, positions = 0.0, 0, 0
    for ids in prompts:
        with torch.no_grad():
            got = model(torch.tensor([ids])).logits[0].float()
        want = reference.logits(ids)
        worst_rel = max(worst_rel, ((got - want).abs().max() / want.abs().max()).item())
        agree += int((got.argmax(-1) == want.argmax(-1)).sum())
        positions += len(ids)
    kernel = type(model.model.layers[0].self_attn.q_proj).__name__
    return {"kernel": kernel, "load_seconds": round(load_s, 1), "max_rel_logit_diff": worst_rel,
            "top1_agreement": agree / positions, "positions": positions,
            "passed": worst_rel <= REL_TOL and agree / positions >= TOP1_MIN}


def plant_gate_up_swap(folder: Path, bad: Path) -> None:
    shutil.copytree(folder, bad)
    path = bad / "model.safetensors"
    t = load_file(path)
    a, b = "model.layers.0.mlp.gate_proj.qweight", "model.layers.0.mlp.up_proj.qweight"
    t[a], t[b] = t[b].clone(), t[a].clone()
    save_file(t, path, metadata={"format": "pt"})


def main() -> int:
    import gptqmodel
    import transformers
    from transformers import AutoTokenizer

    from qwen2llama.convert import convert
    from qwen2llama.reference import QwenReference
    from qwen2llama.sources import open_source
    from qwen2llama.synth import synthesize
    from qwen2llama.verify.prompts import load_prompts, qwen_chat_text, tiktoken_encoder

    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    rows, ok = [], True
    for bits in (4, 8):
        src = synthesize(OUT / f"qwen-tiny-int{bits}", f"tiny-int{bits}", seed=20 + bits)
        dst = OUT / f"llama-tiny-int{bits}"
        convert(src, dst, kind="chat")
        ckpt = open_source(src)
        encode = tiktoken_encoder(ckpt.vocab)
        texts, chats = load_prompts(None, True)
        strings = list(texts) + [qwen_chat_text(m) for m in chats]
        tok = AutoTokenizer.from_pretrained(dst)
        ids_equal = all(tok.encode(s, add_special_tokens=False) == encode(s) for s in strings)
        prompts = [encode(s)[:48] for s in strings]
        reference = QwenReference(ckpt)
        row = {"release": f"Int{bits}", "ids_equal": ids_equal, **compare(dst, reference, prompts)}
        plant_gate_up_swap(dst, OUT / f"bad-int{bits}")
        bad = compare(OUT / f"bad-int{bits}", reference, prompts)
        row["defect_caught"] = not bad["passed"]
        row["defect_max_rel_logit_diff"] = bad["max_rel_logit_diff"]
        rows.append(row)
        ok &= row["passed"] and ids_equal and row["defect_caught"]
        print(json.dumps(row), flush=True)
    summary = {"runtime": "transformers + optimum + gptqmodel (CPU kernels, float16)",
               "versions": {"transformers": transformers.__version__, "gptqmodel": gptqmodel.__version__,
                            "torch": torch.__version__},
               "tolerance": {"max_rel_logit_diff": REL_TOL, "top1_agreement_min": TOP1_MIN}, "rows": rows,
               "passed": ok}
    (ROOT / "e2e-out" / "gptq.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("| release | kernel | ids equal | max rel |Δlogit| | top-1 | defect caught |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['release']} | {r['kernel']} | {r['ids_equal']} | {r['max_rel_logit_diff']:.2e} | "
              f"{r['top1_agreement']:.3f} | {r['defect_caught']} ({r['defect_max_rel_logit_diff']:.2e}) |")
    print("gptq e2e:", "passed" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
