"""Both models side by side, one layer at a time, each on its own hidden states: memory is about
one layer of each, whatever the model size. Also greedy continuation and the run past seq_length."""
from __future__ import annotations

import time
from functools import partial

import torch

from .stats import head_stats, side_stats


class LayerRejected(Exception):
    """transformers' decoder layer would not load the converted weights of `layer`."""

    def __init__(self, layer: int, exc: Exception):
        self.layer, self.exc = layer, exc


def reference_layers(ref):
    """The Qwen blocks in order, each as a function of one sequence's hidden states. Nothing here
    keeps a layer's weights: once the caller drops a step, its weights are freed."""
    for i in range(ref.cfg.num_layers):
        yield partial(ref.block, ref.layer_weights(i))


def _llama_layer(side, i: int):
    try:
        return side.layer(i)
    except (RuntimeError, KeyError) as exc:
        raise LayerRejected(i, exc) from None


def llama_layers(side):
    """transformers' decoder layers in order, each as a function of one sequence's hidden states."""
    for i in range(side.config.num_hidden_layers):
        yield partial(side.run_layer, _llama_layer(side, i))


def _apply(step, h: torch.Tensor, lens: list[int]) -> torch.Tensor:
    return torch.cat([step(x) for x in h.split(lens)])


def forward(h: torch.Tensor, layers, lens: list[int], progress) -> torch.Tensor:
    """One model alone over every layer (golden files record the reference, replay the LLaMA side)."""
    for step in layers:
        h = _apply(step, h, lens)
        del step  # before the next layer loads: one layer in memory at a time
        progress.advance(1)
    return h


def continue_greedily(embed, layers, final_norm, head_blocks, seqs, n: int, progress) -> list[list[int]]:
    """One model alone appends its argmax to each sequence, n times (the lm_head runs on the last
    positions only). `layers()` and `head_blocks()` start a fresh pass over the model."""
    seqs = [list(s) for s in seqs]
    no_ids = torch.empty(0, dtype=torch.long)
    for _ in range(n):
        lens = [len(s) for s in seqs]
        h = forward(embed([x for s in seqs for x in s]), layers(), lens, progress)
        last = final_norm(h)[torch.tensor(lens).cumsum(0) - 1]
        for s, t in zip(seqs, side_stats(head_blocks(), last, 1, no_ids).top_ids[:, 0].tolist()):
            s.append(t)
    return seqs


def lockstep(ref, side, ref_seqs, llama_seqs, progress, layer_log: list | None = None):
    """(reference hidden states, llama hidden states, sequence lengths) after the final norms."""
    lens = [len(s) for s in ref_seqs]
    hr = ref.embed([x for s in ref_seqs for x in s])
    hl = side.embed([x for s in llama_seqs for x in s])
    ref_steps, llama_steps = reference_layers(ref), llama_layers(side)
    for i in range(ref.cfg.num_layers):
        t0 = time.perf_counter()
        hr = _apply(next(ref_steps), hr, lens)
        t1 = time.perf_counter()
        hl = _apply(next(llama_steps), hl, lens)
        t2 = time.perf_counter()
        if layer_log is not None:
            layer_log.append({"layer": i, "max_abs_hidden_diff": (hr - hl).abs().max().item(),
                              "max_abs_hidden": hr.abs().max().item(),
                              "seconds_reference": round(t1 - t0, 4), "seconds_llama": round(t2 - t1, 4)})
        progress.advance(1)
    return ref.final_norm(hr), side.final_norm(hl), lens


def greedy(ref, side, seqs, n: int, progress) -> list[dict]:
    """Each side continues each prompt with its own argmax, n tokens."""
    ref_seqs, llama_seqs = [list(s) for s in seqs], [list(s) for s in seqs]
    progress.start(f"logits: greedy ({n} tokens)", n * ref.cfg.num_layers, "layers")
    for _ in range(n):
        hr, hl, lens = lockstep(ref, side, ref_seqs, llama_seqs, progress)
        ends = torch.tensor(lens).cumsum(0) - 1
        stats = head_stats(ref, side, hr[ends], hl[ends])
        for s, t in zip(ref_seqs, stats.arg_r.tolist()):
            s.append(t)
        for s, t in zip(llama_seqs, stats.arg_l.tolist()):
            s.append(t)
    progress.finish()
    return [{"tokens": n, "reference": r[len(p):], "llama": m[len(p):], "identical": r == m}
            for p, r, m in zip(seqs, ref_seqs, llama_seqs)]


def beyond_seq_length(ref, side, seqs, progress) -> dict:
    """Information only: past seq_length Qwen rescales RoPE (dynamic NTK) and queries (logn)."""
    cfg = ref.cfg
    filler = [x for s in seqs for x in s]
    length = cfg.seq_length + max(16, cfg.seq_length // 8)
    ids = (filler * (length // len(filler) + 1))[:length]
    progress.start("logits: beyond seq_length", cfg.num_layers, "layers")
    hr, hl, _ = lockstep(ref, side, [ids], [ids], progress)
    progress.finish()
    stats = head_stats(ref, side, hr, hl)
    inside, outside = slice(0, cfg.seq_length), slice(cfg.seq_length, length)
    result = {"tokens": length,
              "note": "a prompt past seq_length: Qwen rescales RoPE for the whole prompt (dynamic NTK) and "
                      "scales late queries (logn); the layouts have neither, so divergence there is "
                      "expected and not a failure (--context gives a band Qwen's RoPE exactly)",
              "max_abs_logit_diff_within": stats.max_diff[inside].max().item(),
              "max_abs_logit_diff_beyond": stats.max_diff[outside].max().item(),
              "top1_agreement_beyond": (stats.arg_r[outside] == stats.arg_l[outside]).float().mean().item()}
    if cfg.use_logn_attn:  # a prompt of at most seq_length decoded past it: alpha stays 1, only logn acts
        decoded = type(ref)(ref.ckpt, ref.adapter, alpha=1)
        progress.start("logits: decoded past seq_length", cfg.num_layers, "layers")
        hr, hl, _ = lockstep(decoded, side, [ids], [ids], progress)
        progress.finish()
        stats = head_stats(decoded, side, hr, hl)
        result["decoded_past_seq_length"] = {
            "note": "a prompt of at most seq_length tokens decoded past it: Qwen keeps alpha 1, so RoPE "
                    "is exact; what differs past seq_length is logn attention alone",
            "max_abs_logit_diff_beyond": stats.max_diff[outside].max().item(),
            "top1_agreement_beyond": (stats.arg_r[outside] == stats.arg_l[outside]).float().mean().item()}
    return result
