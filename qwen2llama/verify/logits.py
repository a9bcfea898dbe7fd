"""Check 5, logits: an independent Qwen v1 forward on the source against transformers' LLaMA
layers on the converted files, in float32, judged against stated tolerances."""
from __future__ import annotations

from ..qwen.config import QwenConfig
from ..reference import QwenReference
from ..tokens import ENDOFTEXT_ID
from .lockstep import LayerRejected, beyond_seq_length, greedy, lockstep
from .prompts import qwen_chat_text
from .report import check
from .stats import head_stats

# float32 compute from bit-identical (or exactly widened) weights: the two sides differ by
# summation order only.
TOL_EXACT = {"max_abs_logit_diff_rel": 1e-4, "kl_max": 1e-6, "top1_agreement_min": 1.0}
# a narrowing cast (--dtype) changes the weights themselves.
TOL_LOSSY = {"max_abs_logit_diff_rel": None, "kl_max": 1e-2, "top1_agreement_min": 0.9}
LONG_PROMPT_MAX_FLOPS = 2e13  # a few minutes of float32 matmuls on 2 cores
GREEDY_MAX_BYTES = 4 << 30  # greedy continuation re-reads the model per token: small models only


def logit_limit(max_abs_logit: float, rel: float = TOL_EXACT["max_abs_logit_diff_rel"]) -> float:
    """The largest |Δlogit| an exact conversion may show: relative to the logits' scale, at least 1."""
    return rel * max(1.0, max_abs_logit)


def long_prompt_flops(cfg: QwenConfig, tokens: int) -> float:
    """Rough cost of one `tokens`-long sequence through both models: matmuls plus attention."""
    layer = 4 * cfg.hidden_size * cfg.projection_size + 3 * cfg.hidden_size * cfg.mlp_width
    per_side = 2 * tokens * (cfg.num_layers * layer + cfg.vocab_rows * cfg.hidden_size)
    per_side += 4 * cfg.num_layers * tokens * tokens * cfg.projection_size
    return 2 * per_side


def _prompt_set(cfg: QwenConfig, encode, texts, chats, quick: bool, long_prompt: bool | None):
    """(named token sequences, note on the seq_length-token prompt, whether it runs)."""
    prompts = [(t[:30], encode(t)) for t in texts]
    prompts += [(f"chat {k}", encode(qwen_chat_text(m))) for k, m in enumerate(chats)]
    prompts = [(n, ids[: cfg.seq_length]) for n, ids in prompts if ids]
    note = None
    if long_prompt is None:  # automatic: on unless it would take hours on a small machine
        flops = long_prompt_flops(cfg, cfg.seq_length)
        long_prompt = not quick and flops <= LONG_PROMPT_MAX_FLOPS
        if not quick and not long_prompt:
            note = (f"skipped the {cfg.seq_length}-token prompt: about {flops / 1e12:.0f} TFLOP, hours on a "
                    "few CPU cores; pass --long-prompt to run it")
    if long_prompt:
        filler = [x for _, ids in prompts for x in ids] or [ENDOFTEXT_ID]
        prompts.append((f"{cfg.seq_length} tokens (= seq_length)",
                        (filler * (cfg.seq_length // len(filler) + 1))[: cfg.seq_length]))
    return prompts, note or ("included" if long_prompt else "not run (--quick)"), long_prompt


def _judge(prompts, stats, tol: dict) -> tuple[list[dict], list[str]]:
    """A row per prompt and the failures against the tolerance. A top-1 disagreement only counts
    where the reference's top two are further apart than the tolerance."""
    rel = tol["max_abs_logit_diff_rel"]
    allowed = (rel or 0.0) * stats.max_ref.clamp_min(1.0)
    agree = (stats.arg_r == stats.arg_l) | (stats.best_r - stats.second_r <= 2 * allowed)
    lens = [len(ids) for _, ids in prompts]
    rows, failures = [], []
    for (name, ids), diff, scale, kl, same in zip(prompts, stats.max_diff.split(lens),
                                                  stats.max_ref.split(lens),
                                                  stats.kl().split(lens), agree.split(lens)):
        row = {"prompt": name, "tokens": len(ids), "max_abs_logit_diff": diff.max().item(),
               "max_abs_logit": scale.max().item(), "kl_mean": kl.mean().item(), "kl_max": kl.max().item(),
               "top1_agreement": same.float().mean().item()}
        rows.append(row)
        if rel is not None and row["max_abs_logit_diff"] > logit_limit(row["max_abs_logit"], rel):
            failures.append(f"{name!r}: max |Δlogit| {row['max_abs_logit_diff']:.3g} > "
                            f"{rel:g} x max(1, |logit|) = {logit_limit(row['max_abs_logit'], rel):.3g}")
        if row["kl_max"] > tol["kl_max"]:
            failures.append(f"{name!r}: KL {row['kl_max']:.3g} > {tol['kl_max']:g}")
        if row["top1_agreement"] < tol["top1_agreement_min"]:
            failures.append(f"{name!r}: top-1 agreement {row['top1_agreement']:.4f} < "
                            f"{tol['top1_agreement_min']}")
    return rows, failures


def _first_parting(layers: list[dict]) -> str | None:
    first = next((row for row in layers
                  if row["max_abs_hidden_diff"] > 1e-3 * max(1.0, row["max_abs_hidden"])), None)
    return first and (f"the models part at layer {first['layer']} "
                      f"(max |Δhidden| {first['max_abs_hidden_diff']:.3g})")


def check_logits(ckpt, side, encode, texts, chats, *, quick: bool, lossy: bool, greedy_tokens: int | None,
                 progress, long_prompt: bool | None = None, adapter=None) -> dict:
    """`adapter`: a QwenAdapter the folder was written with, merged in (the reference merges it too)."""
    cfg = ckpt.config
    ref = QwenReference(ckpt, adapter)
    prompts, long_note, long_prompt = _prompt_set(cfg, encode, texts, chats, quick, long_prompt)
    seqs = [ids for _, ids in prompts]
    tol = TOL_LOSSY if lossy else TOL_EXACT
    layers: list[dict] = []
    progress.start("logits: layers", cfg.num_layers, "layers")
    try:
        hr, hl, _ = lockstep(ref, side, seqs, seqs, progress, layers)
    except LayerRejected as rej:
        return check(False,
                     failures=[f"layer {rej.layer}: transformers' LlamaDecoderLayer rejects the weights: "
                                      f"{rej.exc}"[:400]])
    finally:
        progress.finish()
    rows, failures = _judge(prompts, head_stats(ref, side, hr, hl), tol)
    if failures and (parting := _first_parting(layers)):
        failures.append(parting)
    result = check(not failures, compute_dtype="float32", tolerance=tol, lossy_cast=lossy,
                   long_prompt=long_note,
                   prompts=rows, max_abs_logit_diff=max(r["max_abs_logit_diff"] for r in rows),
                   kl_max=max(r["kl_max"] for r in rows),
                   top1_agreement=min(r["top1_agreement"] for r in rows),
                   layers=layers, failures=failures)
    model_bytes = sum(r.nbytes for r in ckpt.tensors.values())
    n_greedy = greedy_tokens if greedy_tokens is not None else (
        (4 if quick else 8) if model_bytes <= GREEDY_MAX_BYTES else 0)
    if n_greedy:
        result["greedy"] = greedy(ref, side, seqs[: min(3, len(seqs))], n_greedy, progress)
        differing = sum(not g["identical"] for g in result["greedy"])
        if differing and not lossy:
            result["passed"] = False
            result["failures"].append(f"greedy continuations differ on {differing} prompt(s)")
    else:
        skipped = (f"skipped: the model ({model_bytes / 1e9:.1f} GB) would be re-read per token; "
                   "pass --greedy-tokens N to force")
        result["greedy"] = skipped if greedy_tokens is None else "--greedy-tokens 0"
    if long_prompt and (cfg.use_dynamic_ntk or cfg.use_logn_attn):
        result["beyond_seq_length"] = beyond_seq_length(ref, side, seqs, progress)
    return result
