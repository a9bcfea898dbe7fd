"""The model every runtime is given, the defect it must catch, and the reference it is held to.

`prepare_case(root)` synthesizes a float32 chat model with head_dim 64 (vLLM's CPU attention
refuses smaller heads), converts it, plants gate/up swapped in a copy, and computes the Qwen
reference (logits and greedy continuations, float32) on the verification prompts. `judge` holds a
probe's answer against that reference: the runtimes are compared with the reference, not only
with each other.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

MAX_PROMPT, PROMPTS, GREEDY = 32, 4, 6
CHAT = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user",
                                                                        "content": "你好, who are you?"}]


@dataclass
class Case:
    root: Path
    folders: dict[str, Path]
    texts: list[str]
    text_ids: list[list[int]]
    chat_ids: list[int]
    prompts: list[list[int]]
    logits: list[np.ndarray]  # the reference, [tokens, vocab] float32 per prompt
    greedy: list[list[int]]
    request: Path = field(default=None)
    adapter_logits: list[np.ndarray] = field(default_factory=list)  # reference with the LoRA adapter merged
    adapter_greedy: list[list[int]] = field(default_factory=list)


def _swap_gate_up(folder: Path) -> None:
    path = folder / "model.safetensors"
    t = load_file(path)
    a, b = "model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight"
    t[a], t[b] = t[b].clone(), t[a].clone()
    save_file(t, path, metadata={"format": "pt"})


@torch.no_grad()
def prepare_case(root: Path, preset: str = "tiny-hd64", adapter: bool = False,
                 target: str = "llama", context: int | None = None) -> Case:
    from qwen2llama.convert import convert
    from qwen2llama.reference import QwenReference
    from qwen2llama.sources import open_source
    from qwen2llama.synth import synthesize
    from qwen2llama.verify.prompts import load_prompts, qwen_chat_text, tiktoken_encoder

    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    src = synthesize(root / "qwen", preset, dtype="float32", seed=17, chat=True)
    good = root / "llama"
    convert(src, good, kind="chat", target=target, context=context)
    bad = root / "llama-gate-up-swapped"
    shutil.copytree(good, bad)
    _swap_gate_up(bad)
    ckpt = open_source(src)
    encode = tiktoken_encoder(ckpt.vocab)
    texts, chats = load_prompts(None, True)
    strings = list(texts) + [qwen_chat_text(m) for m in chats]
    prompts = [encode(s)[:MAX_PROMPT] for s in strings][:PROMPTS]
    reference = QwenReference(ckpt)
    if context:  # prompts of the band (Qwen picks T's alpha), held to Qwen's own forward with logn off
        filler = [x for s in strings for x in encode(s)]
        band = [ckpt.config.seq_length * 2 + 1, context - GREEDY]  # T = 4S: the band is (2S, 4S]
        prompts = [(filler * (n // len(filler) + 1))[:n] for n in band]
        reference = QwenReference(ckpt, logn=False)
    logits, greedy = _reference(reference, prompts)
    chat_ids = encode(qwen_chat_text(CHAT))  # ends with the assistant turn opened
    case = Case(root, {"good": good, "gate_up_swapped": bad}, strings, [encode(s) for s in strings], chat_ids,
                prompts, logits, greedy)
    request = {"folders": {k: str(v) for k, v in case.folders.items()}, "texts": strings, "prompts": prompts,
               "greedy": GREEDY, "chat": CHAT, **({"max_model_len": context} if context else {})}
    if adapter:  # a LoRA adapter on every block linear, converted for the LLaMA base (vLLM serves it)
        from qwen2llama.lora import convert_adapter_unverified
        from qwen2llama.lora import open_adapter
        from qwen2llama.synth import synthesize_adapter

        lora = synthesize_adapter(root / "qwen-lora", src, targets=("c_attn", "c_proj", "w1", "w2"), seed=5)
        convert_adapter_unverified(lora, root / "llama-lora", base=ckpt, base_name=str(good))
        case.adapter_logits, case.adapter_greedy = _reference(QwenReference(ckpt, open_adapter(lora)),
                                                              prompts)
        request["adapter"] = {"path": str(root / "llama-lora"), "rank": 8}
    case.request = root / "request.json"
    case.request.write_text(json.dumps(request))
    return case


def _reference(ref, prompts) -> tuple[list[np.ndarray], list[list[int]]]:
    logits, greedy = [ref.logits(ids).numpy() for ids in prompts], []
    for ids in prompts:
        seq = list(ids)
        for _ in range(GREEDY):
            seq.append(int(ref.logits(seq)[-1].argmax()))
        greedy.append(seq[len(ids):])
    return logits, greedy


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def _logprob_diff(positions_per_prompt, logits) -> float:
    worst = 0.0
    for k, positions in enumerate(positions_per_prompt):
        ref = _log_softmax(logits[k])
        for pos, top in enumerate(positions):
            if top is None:  # the first token has no log-prob
                continue
            # the log-prob of what comes at pos, given the tokens before: logits of pos - 1
            worst = max(worst, max(abs(lp - ref[pos - 1, int(tid)]) for tid, lp in top.items()))
    return float(worst)


def judge(case: Case, out: Path, logit_rel: float = 1e-4, logprob_abs: float = 1e-3) -> dict:
    """A probe's answers against the reference: per folder the worst difference and whether the
    greedy continuations agree; the good folder must pass, the planted defect must fail."""
    result = json.loads((out / "result.json").read_text())
    row = {"runtime": result["runtime"], "version": result["version"],
           "ids_equal": result["ids"] == case.text_ids,
           "chat_template_equal": result.get("chat_ids") in (None, case.chat_ids),
           "chat_template_checked": result.get("chat_ids") is not None}
    for label, got in result["folders"].items():
        if got.get("logits"):
            diffs = []
            for k, want in enumerate(case.logits):
                have = np.load(out / f"{label}-{k}.npy")
                diffs.append(float(np.abs(have - want).max() / max(1.0, float(np.abs(want).max()))))
            worst, limit, what = max(diffs), logit_rel, "max |Δlogit| / max(1, |logit|)"
        else:
            worst, limit, what = _logprob_diff(got["logprobs"],
                                               case.logits), logprob_abs, "max |Δ logprob| (top-k)"
        greedy_equal = got["greedy"] == case.greedy
        row[label] = {"measure": what, "worst": float(worst), "tolerance": limit,
                      "greedy_equal": greedy_equal,
                      "agrees": bool(worst <= limit and greedy_equal)}
    row["passed"] = (row["ids_equal"] and row["chat_template_equal"] and row["good"]["agrees"]
                     and not row["gate_up_swapped"]["agrees"])
    lora = result.get("adapter")
    if lora is not None:  # base + converted adapter, against the reference with the Qwen adapter merged
        worst = _logprob_diff(lora["logprobs"], case.adapter_logits)
        dropped = _logprob_diff(result["folders"]["good"]["logprobs"], case.adapter_logits)
        row["adapter"] = {"worst": worst, "tolerance": logprob_abs,
                          "greedy_equal": lora["greedy"] == case.adapter_greedy,
                          "dropped_adapter_caught": dropped > logprob_abs, "dropped_worst": dropped}
        row["passed"] = row["passed"] and worst <= logprob_abs and row["adapter"]["greedy_equal"] \
            and row["adapter"]["dropped_adapter_caught"]
    server = result.get("server")
    if server is not None:  # vLLM's OpenAI-compatible server: its own template rendering, its stop rule
        row["server"] = {"chat_template_equal": server["chat_ids"] == case.chat_ids,
                         "stops_on_im_end": server["forced_im_end_finish"] == "stop"
                         and server["forced_im_end_completion_tokens"] == 1
                         and server["forced_im_end_text"] == ""}
        row["passed"] = row["passed"] and all(row["server"].values())
    return row


def run_probe(python: str, probe: str, case: Case, out: Path, pythonpath: str | None = None,
              timeout: int = 900) -> None:
    """Run a probe script of tests/runtimes with another interpreter (or PYTHONPATH)."""
    import os
    import subprocess

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = {**os.environ}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    done = subprocess.run([python, str(Path(__file__).with_name(probe)), str(case.request), str(out)],
                          capture_output=True, text=True, env=env, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"{probe} failed ({done.returncode}):\n"
                           f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
