"""Check 5, logits: an independent Qwen v1 forward on the source against transformers' LLaMA
layers on the converted files, in float32, judged against stated tolerances."""
from __future__ import annotations

import time

import torch

from ..reference import QwenCache, QwenReference, ntk_alpha
from .context import check_band, declared_context
from .lockstep import LayerRejected, beyond_seq_length, greedy, lockstep
from .judge import judge, judge_greedy, summarize, stats_rows, tally, tolerance
from .prompts import greedy_count, prompt_set
from .report import check
from .stats import head_stats



def _first_parting(layers: list[dict]) -> str | None:
    first = next((row for row in layers
                  if row["max_abs_hidden_diff"] > 1e-3 * max(1.0, row["max_abs_hidden"])), None)
    return first and (f"the models part at layer {first['layer']} "
                      f"(max |Δhidden| {first['max_abs_hidden_diff']:.3g})")


def _greedy(result: dict, ref, side, seqs, caches, last, n: int, progress) -> None:
    """The greedy continuations from the caches lockstep filled, judged into `result`, timed."""
    if n:
        t0 = time.perf_counter()
        continued = greedy(ref, side, seqs[: len(caches)], caches, last, n, progress)
        judge_greedy(result, continued, result["lossy_cast"])
        result["seconds_greedy"] = round(time.perf_counter() - t0, 2)


def check_logits(ckpt, side, encode, texts, chats, *, quick: bool, lossy: bool, greedy_tokens: int | None,
                 progress, long_prompt: bool | None = None, adapter=None) -> dict:
    """`adapter`: a QwenAdapter the folder was written with, merged in (the reference merges it too)."""
    cfg = ckpt.config
    context = declared_context(cfg, side.config)  # --context T: the folder computes Qwen with T's alpha
    ref = QwenReference(ckpt, adapter, alpha=ntk_alpha(context, cfg.seq_length, True) if context else None,
                        device=side.device)
    prompts, long_note, long_prompt = prompt_set(cfg, encode, texts, chats, quick, long_prompt)
    seqs = [ids for _, ids in prompts]
    tol = tolerance(lossy)
    layers: list[dict] = []
    model_bytes = sum(r.nbytes for r in ckpt.tensors.values())
    n_greedy = greedy_count(model_bytes, quick, greedy_tokens)
    caches = [QwenCache() for _ in seqs[: min(3, len(seqs))]] if n_greedy else []  # greedy goes on from them
    progress.start("logits: layers", cfg.num_layers, "layers")
    try:
        hr, hl, lens = lockstep(ref, side, seqs, seqs, progress, layers, caches)
    except LayerRejected as rej:
        return check(False,
                     failures=[f"layer {rej.layer}: transformers' decoder layer rejects the weights: "
                                      f"{rej.exc}"[:400]])
    finally:
        progress.finish()
    rows = stats_rows(prompts, head_stats(ref, side, hr, hl), tol)
    failures = [line for row in rows for line in judge(row, tol)]
    if failures and (parting := _first_parting(layers)):
        failures.append(parting)
    band = check_band(ckpt, adapter, side, seqs, context, tol, progress) if context else None
    failures += band[1] if band else []
    result = check(not failures, compute_dtype="float32", tolerance=tol, lossy_cast=lossy,
                   long_prompt=long_note, layers=layers, **tally(rows, failures),
                   **({"context": band[0]} if band else {}))
    ends = (torch.tensor(lens).cumsum(0) - 1)[: len(caches)].to(hr.device)
    _greedy(result, ref, side, seqs, caches, hr[ends], n_greedy, progress)
    if not n_greedy:
        skipped = (f"skipped: the model ({model_bytes / 1e9:.1f} GB) would be re-read per token; "
                   "pass --greedy-tokens N to force")
        result["greedy"] = skipped if greedy_tokens is None else "--greedy-tokens 0"
    if long_prompt and not context and (cfg.use_dynamic_ntk or cfg.use_logn_attn):
        result["beyond_seq_length"] = beyond_seq_length(ref, side, seqs, progress)
    return summarize(result)
