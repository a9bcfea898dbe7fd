"""How logits are judged, once for every comparison: a model against the Qwen reference
(logits.py), against a golden file (replay.py), and an adapter through PEFT (lora/verify.py).

A prompt's row holds max |Δlogit|, the logits' scale and top-1 agreement (plus KL where both full
distributions exist, or the logsumexp difference where a golden file stands in for one); `judge`
turns rows into failure lines against a tolerance, and `tally` sums rows and greedy continuations
into the check's verdict fields.
"""
from __future__ import annotations

# float32 compute from bit-identical (or exactly widened) weights: the two sides differ by
# summation order only.
TOL_EXACT = {"max_abs_logit_diff_rel": 1e-4, "kl_max": 1e-6, "top1_agreement_min": 1.0}
# a narrowing cast (--dtype) changes the weights themselves.
TOL_LOSSY = {"max_abs_logit_diff_rel": None, "kl_max": 1e-2, "top1_agreement_min": 0.9}


def tolerance(lossy: bool) -> dict:
    return TOL_LOSSY if lossy else TOL_EXACT


def logit_limit(max_abs_logit: float, rel: float = TOL_EXACT["max_abs_logit_diff_rel"]) -> float:
    """The largest |Δlogit| an exact conversion may show: relative to the logits' scale, at least 1."""
    return rel * max(1.0, max_abs_logit)


def top1_agreement(ref_best, ref_second, ref_arg, other_arg, scale, tol: dict):
    """Per position: the two sides pick the same top token, or the reference's top two are closer
    than the tolerance allows either side to move (a tie the tolerance cannot resolve)."""
    allowed = (tol["max_abs_logit_diff_rel"] or 0.0) * scale.clamp_min(1.0)
    return (ref_arg == other_arg) | (ref_best - ref_second <= 2 * allowed)


def judge(row: dict, tol: dict) -> list[str]:
    """The failure lines of one prompt's row against the tolerance."""
    name, rel, failures = row["prompt"], tol["max_abs_logit_diff_rel"], []
    limit = None if rel is None else logit_limit(row["max_abs_logit"], rel)
    if limit is not None and row["max_abs_logit_diff"] > limit:
        failures.append(f"{name!r}: max |Δlogit| {row['max_abs_logit_diff']:.3g} > "
                        f"{rel:g} x max(1, |logit|) = {limit:.3g}")
    if limit is not None and row.get("max_abs_lse_diff", 0.0) > limit:
        failures.append(f"{name!r}: logsumexp differs by {row['max_abs_lse_diff']:.3g}")
    if row.get("kl_max", 0.0) > tol["kl_max"]:
        failures.append(f"{name!r}: KL {row['kl_max']:.3g} > {tol['kl_max']:g}")
    if row["top1_agreement"] < tol["top1_agreement_min"]:
        failures.append(f"{name!r}: top-1 agreement {row['top1_agreement']:.4f} < "
                        f"{tol['top1_agreement_min']}")
    return failures


def stats_rows(prompts, stats, tol: dict) -> list[dict]:
    """A row per prompt from full-distribution head statistics (stats.HeadStats)."""
    agree = top1_agreement(stats.best_r, stats.second_r, stats.arg_r, stats.arg_l, stats.max_ref, tol)
    lens = [len(ids) for _, ids in prompts]
    return [{"prompt": name, "tokens": len(ids), "max_abs_logit_diff": diff.max().item(),
             "max_abs_logit": scale.max().item(), "kl_mean": kl.mean().item(), "kl_max": kl.max().item(),
             "top1_agreement": same.float().mean().item()}
            for (name, ids), diff, scale, kl, same in zip(prompts, stats.max_diff.split(lens),
                                                          stats.max_ref.split(lens), stats.kl().split(lens),
                                                          agree.split(lens))]


def tally(rows: list[dict], failures: list[str]) -> dict:
    """The check's summary fields over its prompts' rows (KL where the rows have it)."""
    out = {"prompts": rows, "max_abs_logit_diff": max(r["max_abs_logit_diff"] for r in rows),
           "top1_agreement": min(r["top1_agreement"] for r in rows), "failures": failures}
    if all("kl_max" in r for r in rows):
        out["kl_max"] = max(r["kl_max"] for r in rows)
    return out


def judge_greedy(result: dict, continuations: list[dict], lossy: bool) -> None:
    """Record greedy continuations in a logits check; a difference fails an exact conversion."""
    result["greedy"] = continuations
    differing = sum(not g["identical"] for g in continuations)
    if differing and not lossy:
        result["passed"] = False
        result["failures"].append(f"greedy continuations differ on {differing} prompt(s)")


def summarize(result: dict) -> dict:
    """The logits check's one line: its figures, the greedy tally, the adapter's effect."""
    spread = (f"KL max {result['kl_max']:.1e}" if result.get("kl_max") is not None else
              f"max |Δlogsumexp| {result.get('max_abs_lse_diff', float('nan')):.2e}")
    line = (f"max |Δlogit| {result['max_abs_logit_diff']:.2e}, {spread}, "
            f"top-1 {result['top1_agreement']:.4f}, {len(result['prompts'])} prompts")
    if isinstance(result.get("greedy"), list):
        line += f", greedy {sum(g['identical'] for g in result['greedy'])}/{len(result['greedy'])} identical"
    if result.get("adapter_effect_max_abs_logit") is not None:
        line += f"; the adapter moves logits by up to {result['adapter_effect_max_abs_logit']:.2g}"
    result["summary"] = line
    return result
