"""Verify a converted LoRA adapter: Qwen reference with the Qwen adapter merged in (its own code,
in Qwen's terms) against the transformers model class of the converted base's layout (targets/)
with PEFT's own `PeftModel.from_pretrained` on the converted adapter, in float32.

Checks: integrity (conversion.json digests), tensors (every factor a bit-exact copy or row range),
config (every part of every adapted Qwen module has a LoRA layer in the model PEFT built from
the converted adapter_config.json, with the Qwen module's scaling, read off PEFT's layers), logits
(max |Δlogit|, KL, top-1, greedy, as for models). The whole
converted base is loaded (PEFT wraps a model object): memory is the base in float32.
"""
from __future__ import annotations

import json
import math
import resource
import time
import warnings
from pathlib import Path

import torch

from ..errors import InputError
from .mapping import adapter_outputs, check_base, module_at
from ..layout import name_at
from .read import QwenAdapter, open_adapter
from ..qwen.checkpoint import Checkpoint
from ..reference import QwenReference
from ..sources import open_source
from ..storage.weights import read_shards
from ..verify.integrity import check_integrity
from ..verify.judge import TOL_EXACT, judge, judge_greedy, summarize, stats_rows, tally
from ..verify.prompts import load_prompts, qwen_chat_text, tiktoken_encoder
from ..verify.report import VerifyResult, check, tensors_summary, with_fixes
from ..verify.stats import HeadStats
from ..verify.tensors import compare_planned

GREEDY = 4
MAX_PROMPT = 48


def peft_scalings(model) -> dict[str, float]:
    """ΔW's scale for every LoRA layer PEFT built, by LLaMA module path, as PEFT itself set it."""
    out = {}
    for name, module in model.named_modules():
        scaling = getattr(module, "scaling", None)
        if isinstance(scaling, dict) and "default" in scaling:
            out[name.removeprefix("base_model.model.")] = float(scaling["default"])
    return out


def check_adapter_config(adapter: QwenAdapter, out: Path, scalings: dict[str, float]) -> dict:
    """Every part of every adapted Qwen module has a LoRA layer in PEFT's model, scaled as the
    Qwen adapter scales the module (`scalings`: peft_scalings of the loaded model)."""
    try:
        config = json.loads((out / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return check(False, failures=["adapter_config.json is missing or not JSON"])
    failures = []
    for path, f in adapter.factors.items():
        module, layer = module_at(path)
        for split in module.into:
            llama = name_at(split.llama, layer)
            got = scalings.get(llama)
            if got is None:
                failures.append(f"{llama}: PEFT put no LoRA layer there (target_modules "
                                f"{config.get('target_modules')})")
            elif not math.isclose(got, f.scaling, rel_tol=1e-12):
                failures.append(f"{llama}: PEFT scales ΔW by {got:g}, the Qwen adapter by {f.scaling:g}")
    for key in ("use_dora", "use_rslora"):
        if bool(config.get(key)) != bool(adapter.config.get(key)):
            failures.append(f"{key}: {config.get(key)!r}, the source adapter has {adapter.config.get(key)!r}")
    return check(not failures, f"{len(adapter.factors)} adapted modules: PEFT's LoRA layers scale each LLaMA "
                 "part as the Qwen adapter does", modules=len(adapter.factors), failures=failures)


def _peft_model(llama_base: Path, llama_adapter: Path):
    try:
        from peft import PeftModel
    except ImportError:
        raise InputError("verifying an adapter needs PEFT",
                         fix="pip install 'qwen2llama[adapters]' (peft)") from None
    from transformers.utils import logging

    from ..jsonfile import read_object
    from ..targets import for_config

    # the base's own layout (LLaMA or Qwen2), as its config.json names it
    raw = read_object(Path(llama_base) / "config.json", what="is missing or not a JSON object",
                      fix="give the folder qwen2llama convert wrote")
    model_class = for_config(raw).model_class()

    logging.set_verbosity_error()
    logging.disable_progress_bar()

    with warnings.catch_warnings():  # transformers' deprecation notices about PEFT's calls
        warnings.simplefilter("ignore", FutureWarning)
        model = model_class.from_pretrained(llama_base, dtype=torch.float32)
        return PeftModel.from_pretrained(model, llama_adapter).eval()


def _greedy(step, ids: list[int], n: int) -> list[int]:
    seq = list(ids)
    for _ in range(n):
        seq.append(int(step(seq)[-1].argmax()))
    return seq[len(ids):]


def verify_adapter(src, llama_base: str | Path, qwen_adapter: str | Path | QwenAdapter,
                   llama_adapter: str | Path, *, quick: bool = True, greedy_tokens: int | None = None,
                   display: Path | None = None) -> VerifyResult:
    """Every check of a converted adapter; never raises for a failed check. `qwen_adapter`: a
    folder, or the adapter already opened (convert --adapter opens it once)."""
    t0 = time.perf_counter()
    ckpt = src if isinstance(src, Checkpoint) else open_source(src)
    adapter = qwen_adapter if isinstance(qwen_adapter, QwenAdapter) else open_adapter(qwen_adapter)
    check_base(adapter, ckpt)
    out = Path(llama_adapter)
    checks = {"integrity": check_integrity(out)}
    expected = {t.name: t for t in adapter_outputs(adapter)}
    try:
        written = read_shards(out, "safetensors", ["adapter_model.safetensors"])
    except InputError as exc:
        written, checks["tensors"] = None, check(False, failures=[exc.message])
    if written is not None:
        found = compare_planned(expected, written)
        checks["tensors"] = check(not found["failures"], tensors_summary(found), **found)
    model = _peft_model(Path(llama_base), out)
    checks["config"] = check_adapter_config(adapter, out, peft_scalings(model))
    checks["logits"] = _check_logits(ckpt, adapter, model, quick,
                                     GREEDY if greedy_tokens is None else greedy_tokens)
    with_fixes(checks)
    return VerifyResult(passed=all(c["passed"] is not False for c in checks.values()),
                        source=str(ckpt.folder),
                        output=str(display or out), adapter=str(adapter.folder), quick=quick,
                        seconds=round(time.perf_counter() - t0, 2),
                        peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                        checks=checks)


@torch.no_grad()
def _check_logits(ckpt, adapter, model, quick: bool, n_greedy: int) -> dict:
    """The PEFT model (`model`) against the Qwen reference with the adapter merged."""
    encode = tiktoken_encoder(ckpt.vocab, ckpt.extra_vocab)
    texts, chats = load_prompts(None, quick)
    prompts = [(t[:30], encode(t)[:MAX_PROMPT]) for t in texts]
    prompts += [(f"chat {k}", encode(qwen_chat_text(m))[:MAX_PROMPT]) for k, m in enumerate(chats)]
    reference, plain = QwenReference(ckpt, adapter), QwenReference(ckpt)

    def llama(ids):
        return model(input_ids=torch.tensor([ids])).logits[0].float()

    rows, failures, effect = [], [], 0.0
    for prompt in prompts:  # one prompt at a time: full logits are [tokens, vocab] per side
        zr, zl = reference.logits(prompt[1]), llama(prompt[1])
        stats = HeadStats(len(prompt[1]))
        stats.add(zr, zl, 0)
        effect = max(effect, (zr - plain.logits(prompt[1])).abs().max().item())
        rows += stats_rows([prompt], stats, TOL_EXACT)
    failures = [line for row in rows for line in judge(row, TOL_EXACT)]
    greedy = []
    for _, ids in prompts[:3]:
        a, b = _greedy(reference.logits, ids, n_greedy), _greedy(llama, ids, n_greedy)
        greedy.append({"tokens": n_greedy, "reference": a, "llama": b, "identical": a == b})
    note = None if effect > 10 * max(r["max_abs_logit_diff"] for r in rows) else \
        "the adapter barely changes these logits, so this comparison could not tell it was dropped"
    result = check(not failures, compute_dtype="float32", tolerance=TOL_EXACT,
                   adapter_effect_max_abs_logit=effect,
                   note=note, **tally(rows, failures))
    judge_greedy(result, greedy, lossy=False)
    return summarize(result)
