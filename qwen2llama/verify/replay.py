"""`verify OUT --golden FILE`: the checks that need no source, against what a golden file recorded.

Integrity against the digests the golden file holds (else conversion.json's), the config against
the recorded Qwen config, the tokenizer against the recorded tiktoken ids, and the LLaMA forward
(layer-streamed, as in `verify`) against the recorded reference numbers: at every position the
logits at the sampled ids and at the reference's top-k ids, the logsumexp and the top-1, plus the
greedy continuations. Same tolerances and report schema as `verify`; each check says it ran
against a golden file.
"""
from __future__ import annotations

import torch

from ..tokenizer.files import tokens_from_vocab_json, vocab_digest
from ..errors import InputError
from .golden import Golden
from .lockstep import LayerRejected, compare_continuations, forward, llama_layers
from .judge import judge, judge_greedy, summarize, tally, tolerance, top1_agreement
from .integrity import check_files
from .report import check
from .stats import llama_head_blocks, side_stats


def check_same_model(golden: Golden, dst_tensors: dict, dst) -> None:
    """A golden file for another model or another vocabulary is bad input, not a failed check."""
    cfg = golden.config
    emb = dst_tensors.get("model.embed_tokens.weight")
    if emb is None or tuple(emb.shape) != (cfg.vocab_rows, cfg.hidden_size):
        raise InputError("the golden file is for another model: embedding "
                         f"{[cfg.vocab_rows, cfg.hidden_size]}, "
                         f"the folder's {list(emb.shape) if emb else None}", path=golden.path,
                         fix="use the golden file recorded for this model")
    tokens = tokens_from_vocab_json(dst / "vocab.json")
    if tokens is not None and vocab_digest(tokens) != golden.meta["vocab_digest"]:
        raise InputError("the golden file was recorded for another vocabulary than the folder's vocab.json",
                         path=golden.path, fix="use the golden file recorded for this model")


def check_integrity_golden(golden: Golden, dst) -> dict | None:
    """Against the digests recorded with the golden file; None when it holds none."""
    recorded = golden.meta.get("files")
    if not recorded:
        return None
    found = check_files(dst, recorded["hash"], recorded["files"], "the golden file")
    return {**found, "against": str(golden.path)}


def _extended(golden: Golden, seqs: list[list[int]]) -> list[list[int]]:
    """The prompts, the first few followed by the reference's greedy continuation but its last
    token: one pass then gives the prompts' logits (causal: unchanged by what follows them) and the
    converted model's choice at every step of the recorded continuation."""
    n = golden.meta["greedy_tokens"]
    if not n:
        return seqs
    recorded = [golden.tensors[f"greedy.{k}"].tolist() for k in range(min(3, len(seqs)))]
    return [s + recorded[k][:-1] if k < len(recorded) else s for k, s in enumerate(seqs)]


def _llama_stats(side, seqs, gather, k, progress):
    lens = [len(s) for s in seqs]
    h = forward(side.embed([x for s in seqs for x in s]), llama_layers(side), lens, progress)
    return side_stats(llama_head_blocks(side), side.final_norm(h), k, gather), lens


def _greedy(golden: Golden, seqs, stats, starts) -> list[dict]:
    """The recorded continuations against the converted model's choices after each of their
    prefixes (lockstep.compare_continuations)."""
    n = golden.meta["greedy_tokens"]
    recorded = [golden.tensors[f"greedy.{k}"].tolist() for k in range(min(3, len(seqs)))]
    chosen = [stats.top_ids[start + len(s) - 1: start + len(s) - 1 + n, 0].tolist()
              for s, start in zip(seqs, starts)]
    diffs = [None] * len(recorded)  # the golden file keeps no logits along the continuations
    return [{k: v for k, v in row.items() if v is not None}
            for row in compare_continuations(recorded, chosen, diffs)]


def _golden_row(golden: Golden, k: int, name: str, stats, part, sample, gather, tol: dict) -> dict:
    """Prompt k's row: the LLaMA logits at the sampled and the reference's top-k ids against the
    recorded values, the logsumexp and the top-1."""
    at = {int(i): j for j, i in enumerate(gather.tolist())}
    ref_sample, ref_topv = golden.prompt(k, "sample_values"), golden.prompt(k, "topk_values")
    ref_topi = golden.prompt(k, "topk_ids").long()
    got = stats.gathered[part]
    got_sample = got[:, [at[int(i)] for i in sample]]
    got_top = got.gather(1, torch.tensor([[at[int(i)] for i in row] for row in ref_topi.tolist()]))
    diff = torch.maximum((got_sample - ref_sample).abs().amax(-1), (got_top - ref_topv).abs().amax(-1))
    scale = torch.maximum(ref_sample.abs().amax(-1), ref_topv.abs().amax(-1))
    lse_diff = (stats.lse().float()[part] - golden.prompt(k, "lse")).abs()
    agree = top1_agreement(ref_topv[:, 0], ref_topv[:, 1], ref_topi[:, 0], stats.top_ids[part, 0], scale, tol)
    return {"prompt": name, "tokens": len(part), "max_abs_logit_diff": diff.max().item(),
            "max_abs_logit": scale.max().item(), "max_abs_lse_diff": lse_diff.max().item(),
            "top1_agreement": agree.float().mean().item()}


def check_logits_golden(golden: Golden, side, progress) -> dict:
    names = golden.meta["prompts"]
    seqs = [golden.prompt(k, "ids").tolist() for k in range(len(names))]
    sample = golden.tensors["sample_ids"].long()
    ref_top = torch.cat([golden.prompt(k, "topk_ids") for k in range(len(names))]).long()
    gather = torch.unique(torch.cat([sample, ref_top.reshape(-1)]))  # sorted
    progress.start("logits: layers (golden)", side.config.num_hidden_layers, "layers")
    try:
        stats, lens = _llama_stats(side, _extended(golden, seqs), gather, 1, progress)
    except LayerRejected as rej:
        return check(False, against=str(golden.path), failures=[
            f"layer {rej.layer}: transformers' decoder layer rejects the weights: {rej.exc}"[:400]])
    finally:
        progress.finish()
    lossy = bool(golden.meta.get("lossy_cast"))
    tol = tolerance(lossy)
    starts = (torch.tensor(lens).cumsum(0) - torch.tensor(lens)).tolist()
    rows = [_golden_row(golden, k, name, stats, torch.arange(start, start + len(s)), sample, gather, tol)
            for k, (name, s, start) in enumerate(zip(names, seqs, starts))]
    failures = [line for row in rows for line in judge(row, tol)]
    result = check(not failures, against=str(golden.path), compute_dtype="float32", tolerance=tol,
                   lossy_cast=lossy, long_prompt=golden.meta["long_prompt"], kl_max=None,
                   kl_note="a golden file keeps the logsumexp, the top-k and a sample of the logits, "
                           "not the whole distribution: max_abs_lse_diff stands in for KL",
                   max_abs_lse_diff=max(r["max_abs_lse_diff"] for r in rows), layers=[],
                   **tally(rows, failures))
    if golden.meta["greedy_tokens"]:
        judge_greedy(result, _greedy(golden, seqs, stats, starts), lossy)
    else:
        result["greedy"] = "not recorded in the golden file"
    return summarize(result)
