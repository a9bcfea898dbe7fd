"""The long-context check of a `--context T` output (config.json max_position_embeddings T past
Qwen's seq_length S, rope_theta Qwen's base for a T-token prompt). Written from the reference's own
NTK rule, apart from the converter's context.py.

Proves: a prompt of the band (the shortest length for which Qwen picks T's alpha) gives Qwen's
logits exactly, with logn attention off (the layouts cannot express logn); where a full forward at
that length would cost more than the long-prompt budget, the hidden states after the first layers
that fit it. Reports, as information: logn's effect there, and how a short prompt differs from
Qwen's own (which rotates it with alpha 1).
"""
from __future__ import annotations

from ..reference import QwenReference, ntk_alpha
from .judge import judge, stats_rows
from .lockstep import llama_layers, reference_layers
from .prompts import LONG_PROMPT_MAX_FLOPS, long_prompt_flops
from .stats import head_stats

HIDDEN_REL = 1e-4  # |Δhidden| <= 1e-4 x max(1, |hidden|): float32 round-off, as the logits' exact rule


def declared_context(cfg, side_config) -> int | None:
    """T when the folder declares more positions than seq_length on a model with dynamic NTK and a
    RoPE base other than Qwen's (a --context output); a folder that keeps Qwen's base computes
    Qwen's function for prompts up to seq_length whatever it declares (the config check says what
    it declares past that)."""
    tokens = getattr(side_config, "max_position_embeddings", None)
    rope = getattr(side_config, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(side_config, "rope_theta", None))
    long = cfg.use_dynamic_ntk and isinstance(tokens, int) and tokens > cfg.seq_length
    return tokens if long and theta != cfg.rotary_emb_base else None


def band_start(tokens: int, seq_length: int) -> int:
    """The shortest prompt for which Qwen's alpha is T's: one past the last power-of-two step."""
    alpha = ntk_alpha(tokens, seq_length, True)
    return next(n for n in (seq_length * 2 ** j + 1 for j in range(32))
                if ntk_alpha(n, seq_length, True) == alpha)


def _run(ref, side, ids, layers: int, progress, what: str):
    """Both sides' hidden states after `layers` layers (all: after the final norms)."""
    hr, hl = ref.embed(ids), side.embed(ids)
    progress.start(f"logits: context band, {what} ({len(ids)} tokens)", layers, "layers")
    steps_r, steps_l = reference_layers(ref), llama_layers(side)
    for i in range(layers):  # not zip(): its cached result tuple keeps a layer alive while the next loads
        progress.detail(f"layer {i + 1}/{layers} reference")
        hr = next(steps_r)(hr)
        progress.detail(f"layer {i + 1}/{layers} converted")
        hl = next(steps_l)(hl)
        progress.advance(1)
    progress.finish()
    if layers == ref.cfg.num_layers:
        return ref.final_norm(hr), side.final_norm(hl)
    return hr, hl


SAMPLED = 96  # positions whose full logits a long prompt's rows compare (the hidden states: all)


def _row(name, ref, side, ids, hr, hl, tol) -> dict:
    """The logits row of a prompt at SAMPLED positions spread over it, the last ones included
    (memory: SAMPLED x a vocabulary block, whatever the length), and the hidden states' difference
    at every position."""
    n = len(ids)
    pick = sorted(set(range(0, n, max(1, n // (SAMPLED // 2)))) | set(range(max(0, n - SAMPLED // 2), n)))
    row = stats_rows([(name, [ids[i] for i in pick])], head_stats(ref, side, hr[pick], hl[pick]), tol)[0]
    return row | {"tokens": n, "positions_compared": len(pick),
                  "max_abs_hidden_diff": (hr - hl).abs().max().item()}


def check_band(ckpt, adapter, side, seqs, tokens: int, tol: dict, progress) -> tuple[dict, list[str]]:
    cfg = ckpt.config
    length = band_start(tokens, cfg.seq_length)
    filler = [x for s in seqs for x in s]
    ids = (filler * (length // len(filler) + 1))[:length]
    per_layer = long_prompt_flops(cfg, length) / max(cfg.num_layers, 1)
    layers = max(1, min(cfg.num_layers, int(LONG_PROMPT_MAX_FLOPS // max(per_layer, 1))))
    qwen = QwenReference(ckpt, adapter, logn=False, device=side.device)  # Qwen's alpha for this length
    hr, hl = _run(qwen, side, ids, layers, progress, f"logn off, {layers} of {cfg.num_layers} layers")
    record = {"context_tokens": tokens, "band": [length, tokens], "tokens": length, "layers": layers,
              "ntk_alpha": ntk_alpha(length, cfg.seq_length, True)}
    if layers < cfg.num_layers:  # the hidden states after the layers the budget allows
        diff, scale = (hr - hl).abs().max().item(), hr.abs().max().item()
        record |= {"max_abs_hidden_diff": diff, "max_abs_hidden": scale}
        failures = [] if diff <= HIDDEN_REL * max(1.0, scale) else [
            f"context band ({length} tokens): max |Δhidden| {diff:.3g} after {layers} layers > "
            f"{HIDDEN_REL:g} x max(1, |hidden|)"]
        return record, failures
    row = _row(f"context band ({length} tokens, logn off)", qwen, side, ids, hr, hl, tol)
    record["band_row"] = row
    if cfg.use_logn_attn:  # information: what logn, which no layout expresses, changes there
        hq, _ = _run(QwenReference(ckpt, adapter, device=side.device), side, ids, cfg.num_layers, progress,
                     "with logn")
        record["logn_effect"] = _row("with logn (information)", qwen, side, ids, hq, hl, tol)
    short = seqs[0]  # information: Qwen rotates a short prompt with alpha 1, this output with T's
    hs, hl_short = _run(QwenReference(ckpt, adapter, device=side.device), side, short, cfg.num_layers,
                        progress, "a short prompt")
    record["short_prompt_vs_qwen"] = _row(f"a {len(short)}-token prompt vs Qwen's own alpha (information)",
                                          qwen, side, short, hs, hl_short, tol)
    return record, judge(row, tol)
