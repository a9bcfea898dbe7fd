"""Both models side by side, one layer at a time, each on its own hidden states: memory is about
one layer of each, whatever the model size. Also greedy continuation and the run past seq_length."""
from __future__ import annotations

import time
from functools import partial

import torch

from .stats import head_stats, reference_head_blocks, side_stats


class LayerRejected(Exception):
    """transformers' decoder layer would not load the converted weights of `layer`."""

    def __init__(self, layer: int, exc: Exception):
        self.layer, self.exc = layer, exc


def reference_layers(ref):
    """The Qwen blocks in order, each a function of one sequence's hidden states (and its cache).
    Nothing here keeps a layer's weights: once the caller drops a step, its weights are freed."""
    for i in range(ref.cfg.num_layers):
        yield partial(ref.block, ref.layer_weights(i), layer=i)


def _llama_layer(side, i: int):
    try:
        return side.layer(i)
    except (RuntimeError, KeyError) as exc:
        raise LayerRejected(i, exc) from None


def llama_layers(side):
    """transformers' decoder layers in order, each as a function of one sequence's hidden states."""
    for i in range(side.config.num_hidden_layers):
        yield partial(side.run_layer, _llama_layer(side, i))


def _apply(step, h: torch.Tensor, lens: list[int], caches=(), pulse=None) -> torch.Tensor:
    """A layer on each sequence of h; sequence j with caches[j] where there is one (the reference)."""
    out = []
    for j, x in enumerate(h.split(lens)):
        out.append(step(x, cache=caches[j]) if j < len(caches) else step(x))
        if pulse is not None:
            pulse(j)
    return torch.cat(out)


def _pulse(progress, where: str, lens: list[int]):
    return lambda j: progress.detail(f"{where}, prompt {j + 1}/{len(lens)}")


def forward(h: torch.Tensor, layers, lens: list[int], progress, caches=()) -> torch.Tensor:
    """One model alone over every layer (golden files record the reference, replay the LLaMA side);
    `caches`: the reference's QwenCache for the first sequences, filled on the way."""
    i = 0  # not enumerate(): its cached result tuple would keep a layer alive while the next loads
    for step in layers:
        i += 1
        h = _apply(step, h, lens, caches, _pulse(progress, f"layer {i}", lens))
        del step  # before the next layer loads: one layer in memory at a time
        progress.advance(1)
    return h


def lockstep(ref, side, ref_seqs, llama_seqs, progress, layer_log: list | None = None, caches=()):
    """(reference hidden states, llama hidden states, sequence lengths) after the final norms.
    `caches`: QwenCache objects the reference fills for its first sequences (greedy goes on from them)."""
    lens, n = [len(s) for s in ref_seqs], ref.cfg.num_layers
    hr = ref.embed([x for s in ref_seqs for x in s])
    hl = side.embed([x for s in llama_seqs for x in s])
    ref_steps, llama_steps = reference_layers(ref), llama_layers(side)
    for i in range(n):
        t = [time.perf_counter()]
        step = next(ref_steps)  # the layer's weights read here
        t.append(time.perf_counter())
        hr = _apply(step, hr, lens, caches, _pulse(progress, f"layer {i + 1}/{n} reference", lens))
        del step  # before the next layer loads: one layer in memory at a time
        t.append(time.perf_counter())
        step = next(llama_steps)
        t.append(time.perf_counter())
        hl = _apply(step, hl, lens, pulse=_pulse(progress, f"layer {i + 1}/{n} converted", lens))
        del step
        t.append(time.perf_counter())
        if layer_log is not None:
            layer_log.append({"layer": i, "max_abs_hidden_diff": (hr - hl).abs().max().item(),
                              "max_abs_hidden": hr.abs().max().item(),
                              "seconds_reference": round(t[2] - t[0], 4),
                              "seconds_llama": round(t[4] - t[2], 4),  # both: reading included
                              "seconds_reading": round(t[1] - t[0] + t[3] - t[2], 4)})
        progress.advance(1)
    return ref.final_norm(hr), side.final_norm(hl), lens


def continue_reference(ref, caches, last: torch.Tensor, n: int, progress) -> tuple[list, torch.Tensor]:
    """The reference's greedy continuation of each cached sequence, n tokens: (tokens per sequence,
    the final-normed hidden state each token was chosen from [sequences, n, H]). `last`: those of
    the sequences' last positions. Each new token costs one position per layer (Qwen's cache)."""
    tokens: list[list[int]] = [[] for _ in caches]
    path, no_ids = [], torch.empty(0, dtype=torch.long)
    for t in range(n):
        path.append(last)
        chosen = side_stats(reference_head_blocks(ref), last, 1, no_ids).top_ids[:, 0].tolist()
        for seq, token in zip(tokens, chosen):
            seq.append(token)
        if t == n - 1:
            break
        step = _Step(progress, f"token {t + 2}/{n}")
        x = forward(ref.embed(chosen), reference_layers(ref), [1] * len(caches), step, caches)
        last = ref.final_norm(x)
    return tokens, torch.stack(path, 1)


class _Step:
    """Progress of one greedy token's pass: layers advance the bar, the detail names the token."""

    def __init__(self, progress, where: str):
        self.progress, self.where = progress, where

    def advance(self, k: int) -> None:
        self.progress.advance(k)

    def detail(self, text: str) -> None:
        self.progress.detail(f"{self.where}, {text}")


def teacher_forced(side, prompts, tokens, progress) -> torch.Tensor:
    """transformers' layers over each prompt followed by the reference's continuation but its last
    token, in one pass: the final-normed hidden states from which the converted model chooses each
    continuation token, [prompts * n, H]."""
    seqs = [p + t[:-1] for p, t in zip(prompts, tokens)]
    lens = [len(s) for s in seqs]
    h = side.final_norm(forward(side.embed([x for s in seqs for x in s]), llama_layers(side), lens,
                                _Step(progress, "the converted model on the continuations")))
    starts = torch.tensor([0, *lens[:-1]]).cumsum(0) + torch.tensor([len(p) - 1 for p in prompts])
    return h[(starts[:, None] + torch.arange(len(tokens[0]))).reshape(-1).to(h.device)]


def compare_continuations(reference: list[list[int]], chosen: list[list[int]], diffs) -> list[dict]:
    """A record per prompt. `chosen[j][t]`: the converted model's token after the reference's first t;
    as long as they agree, that is the converted model's own continuation (greedy is deterministic),
    so where they first part, its own continuation is known up to and including that token."""
    rows = []
    for ref_tokens, own, diff in zip(reference, chosen, diffs):
        parted = next((t for t, (a, b) in enumerate(zip(ref_tokens, own)) if a != b), None)
        row = {"tokens": len(ref_tokens), "reference": ref_tokens,
               "llama": ref_tokens if parted is None else ref_tokens[:parted] + [own[parted]],
               "identical": parted is None, "max_abs_logit_diff": diff}
        if parted is not None:
            row["parted_at"] = parted
        rows.append(row)
    return rows


def greedy(ref, side, prompts, caches, last: torch.Tensor, n: int, progress) -> list[dict]:
    """Each prompt continued n tokens by the reference's argmax from its cache (filled by
    lockstep), then the converted model's choice at every step of that continuation from one
    pass of transformers' layers: identical exactly when the two greedy continuations are."""
    layers = ref.cfg.num_layers
    progress.start(f"logits: greedy ({n} tokens)", n * layers, "layers")
    tokens, path = continue_reference(ref, caches, last, n, progress)
    hl = teacher_forced(side, prompts, tokens, progress)
    progress.finish()
    stats = head_stats(ref, side, path.reshape(-1, path.shape[-1]), hl)
    return compare_continuations(tokens, stats.arg_l.view(len(prompts), n).tolist(),
                                 stats.max_diff.view(len(prompts), n).amax(-1).tolist())


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
        decoded = type(ref)(ref.ckpt, ref.adapter, alpha=1, device=ref.device)
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
