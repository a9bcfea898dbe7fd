"""`make e2e` (GPTQ): a converted Int4/Int8 release loaded by transformers with its GPTQ
integration (optimum + gptqmodel, CPU kernels, float16), against the Qwen reference forward on
the *source* (dequantized by the reference's own code, float32). Runs in its own environment
(.cache/e2e/gptq: gptqmodel pins its own torch).

Sources: our synthesized releases, and files packed by the quantizers' own code
(tests/e2e_gptq_pack.py): AutoGPTQ 0.7.1 (its own environment, .cache/e2e/autogptq) sym and
asym, gptqmodel 7.7.0 (this one). For those, the packed words must unpack to the integers the
packer was given, the conversion must verify exactly, and the converted folder must load in
transformers and in gptqmodel's own loader (`GPTQModel.load`; it refuses any sym=false file in
the original format that an older tool wrote, the AutoGPTQ source included, by its own rule).

Checks per release: our token ids equal AutoTokenizer's; max |Δlogit| / max |logit| <= 1e-2
(float16 activations in the kernels: ~1e-3 seen; float32 round-off would be 1e-6) and top-1
agreement >= 0.98 over every prompt position. A planted defect (gate/up qweight swapped) must
fail the same comparison. Figures go to e2e-out/gptq.json.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "e2e-out" / "gptq"
REL_TOL, TOP1_MIN = 1e-2, 0.98
AUTOGPTQ_PY = ROOT / ".cache" / "e2e" / "autogptq" / "bin" / "python"
PRODUCERS = [("autogptq", 4, "sym"), ("autogptq", 8, "sym"), ("autogptq", 4, "asym"), ("gptqmodel", 4, "sym"),
             ("gptqmodel", 8, "sym")]


def compare(folder: Path, reference, prompts, loader: str = "transformers") -> dict:
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    if loader == "gptqmodel":
        from gptqmodel import GPTQModel

        model = GPTQModel.load(str(folder), device="cpu", dtype=torch.float16).model.eval()
    else:
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


def unpacked_as_given(src: Path, expected: Path, bits: int) -> bool:
    """The packed words hold exactly the integers the quantizer's pack() was given (zero points
    stored minus one, AutoGPTQ's original format)."""
    from qwen2llama.formats.gptq import unpack

    t, want = load_file(src / "model.safetensors"), load_file(expected)
    for stem in {k.rsplit(".", 1)[0] for k in want}:
        q = unpack(t[f"{stem}.qweight"], bits, along=0)
        z = unpack(t[f"{stem}.qzeros"], bits, along=1) + 1
        if not (torch.equal(q,
                            want[f"{stem}.q"].to(q.dtype)) and torch.equal(z, want[f"{stem}.z"].to(z.dtype))):
            return False
    return True


def producer_rows(prompts_for) -> tuple[list[dict], bool]:
    from qwen2llama.convert import convert
    from qwen2llama.reference import QwenReference
    from qwen2llama.sources import open_source
    from qwen2llama.synth import synthesize
    from qwen2llama.verify import verify

    rows, ok = [], True
    for producer, bits, sym in PRODUCERS:
        tag = f"{producer}-int{bits}-{sym}"
        dense = synthesize(OUT / f"dense-{tag}", "tiny",
                           dtype="float16" if producer == "autogptq" else "bfloat16",
                           seed=40 + bits)
        src = OUT / f"qwen-{tag}"
        python = str(AUTOGPTQ_PY) if producer == "autogptq" else sys.executable
        subprocess.run([python, str(ROOT / "tests" / "e2e_gptq_pack.py"), producer, str(dense), str(src),
                        str(bits),
                        sym], check=True, capture_output=True)
        dst = OUT / f"llama-{tag}"
        convert(src, dst, kind="chat")
        result = verify(src, dst, quick=True)
        ckpt = open_source(src)
        reference, prompts = QwenReference(ckpt), prompts_for(ckpt)
        row = {"source": f"{producer} Int{bits} {sym}", "unpacked_as_given":
               unpacked_as_given(src, OUT / f"qwen-{tag}.expected.safetensors", bits),
               "verify_passed": result["passed"],
               "verify_max_abs_logit_diff": result["checks"]["logits"]["max_abs_logit_diff"],
               "source_biases": sorted({k.split(".", 3)[-1] for k in ckpt.tensors if k.endswith(".bias")}),
               "transformers": compare(dst, reference, prompts)}
        try:
            row["gptqmodel"] = compare(dst, reference, prompts, loader="gptqmodel")
        except ValueError as exc:
            row["gptqmodel"] = {"passed": None, "refused": str(exc)[:200]}
        row_ok = row["unpacked_as_given"] and row["verify_passed"] and row["transformers"]["passed"] and (
            row["gptqmodel"]["passed"]
            or (sym == "asym" and "sym=False" in row["gptqmodel"].get("refused", "")))
        row["passed"] = bool(row_ok)
        ok &= row["passed"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows, ok


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
    for bits, target in ((4, "llama"), (8, "llama"), (4, "qwen2"), (8, "qwen2")):  # both output layouts
        src = OUT / f"qwen-tiny-int{bits}"
        if not src.exists():
            synthesize(src, f"tiny-int{bits}", seed=20 + bits)
        dst = OUT / f"{target}-tiny-int{bits}"
        convert(src, dst, kind="chat", target=target)
        ckpt = open_source(src)
        encode = tiktoken_encoder(ckpt.vocab)
        texts, chats = load_prompts(None, True)
        strings = list(texts) + [qwen_chat_text(m) for m in chats]
        tok = AutoTokenizer.from_pretrained(dst)
        ids_equal = all(tok.encode(s, add_special_tokens=False) == encode(s) for s in strings)
        prompts = [encode(s)[:48] for s in strings]
        reference = QwenReference(ckpt)
        row = {"release": f"Int{bits}", "target": target, "ids_equal": ids_equal,
               **compare(dst, reference, prompts)}
        plant_gate_up_swap(dst, OUT / f"bad-{target}-int{bits}")
        bad = compare(OUT / f"bad-{target}-int{bits}", reference, prompts)
        row["defect_caught"] = not bad["passed"]
        row["defect_max_rel_logit_diff"] = bad["max_rel_logit_diff"]
        rows.append(row)
        ok &= row["passed"] and ids_equal and row["defect_caught"]
        print(json.dumps(row), flush=True)
    def prompts_for(ckpt):
        encode = tiktoken_encoder(ckpt.vocab)
        texts, chats = load_prompts(None, True)
        return [encode(s)[:48] for s in list(texts) + [qwen_chat_text(m) for m in chats]]

    # E2E_GPTQ_PRODUCERS=0: the synthesized releases only (without the AutoGPTQ environment)
    producers = os.environ.get("E2E_GPTQ_PRODUCERS") != "0"
    produced, produced_ok = producer_rows(prompts_for) if producers else ([], True)
    ok &= produced_ok
    summary = {"runtime": "transformers + optimum + gptqmodel (CPU kernels, float16)", "producers": produced,
               "versions": {"transformers": transformers.__version__, "gptqmodel": gptqmodel.__version__,
                            "torch": torch.__version__},
               "tolerance": {"max_rel_logit_diff": REL_TOL, "top1_agreement_min": TOP1_MIN}, "rows": rows,
               "passed": ok}
    (ROOT / "e2e-out" / "gptq.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("| release | target | kernel | ids equal | max rel |Δlogit| | top-1 | defect caught "
          "|\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['release']} | {r['target']} | {r['kernel']} | {r['ids_equal']} | "
              f"{r['max_rel_logit_diff']:.2e} | "
              f"{r['top1_agreement']:.3f} | {r['defect_caught']} ({r['defect_max_rel_logit_diff']:.2e}) |")
    print("\n| source (packed by) | unpacked as given | verify max abs dlogit | transformers rel "
          "dlogit / top-1 | "
          "GPTQModel.load rel dlogit / top-1 |\n|---|---|---|---|---|")
    for r in produced:
        g = r["gptqmodel"]
        gm = (f"{g['max_rel_logit_diff']:.2e} / {g['top1_agreement']:.3f}" if g.get("passed") is not None
              else "refused: sym=False v1 not made by gptqmodel")
        print(f"| {r['source']} | {r['unpacked_as_given']} | {r['verify_max_abs_logit_diff']:.2e} | "
              f"{r['transformers']['max_rel_logit_diff']:.2e} / "
              f"{r['transformers']['top1_agreement']:.3f} | {gm} |")
    print("gptq e2e:", "passed" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
