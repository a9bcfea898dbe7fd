"""Streaming logit statistics over vocabulary blocks, so neither side's full logits are ever held:
max |Δlogit|, max |logit|, KL(reference ‖ llama) by online logsumexp, and top-1 with the
reference's runner-up (to excuse near-ties)."""
from __future__ import annotations

import math

import torch


HEAD_BLOCK_ROWS = 8192


class HeadStats:
    def __init__(self, n: int):
        self.max_diff = torch.zeros(n)
        self.max_ref = torch.zeros(n)
        self.m_r = torch.full((n,), -math.inf)
        self.m_l = torch.full((n,), -math.inf)
        self.s_r = torch.zeros(n, dtype=torch.float64)
        self.s_l = torch.zeros(n, dtype=torch.float64)
        self.t = torch.zeros(n, dtype=torch.float64)
        self.best_r = torch.full((n,), -math.inf)
        self.best_l = torch.full((n,), -math.inf)
        self.arg_r = torch.zeros(n, dtype=torch.long)
        self.arg_l = torch.zeros(n, dtype=torch.long)
        self.second_r = torch.full((n,), -math.inf)

    def add(self, zr: torch.Tensor, zl: torch.Tensor, offset: int) -> None:
        """Fold in the logits of vocabulary ids [offset, offset + block) of both sides."""
        self.max_diff = torch.maximum(self.max_diff, (zr - zl).abs().amax(-1))
        self.max_ref = torch.maximum(self.max_ref, zr.abs().amax(-1))
        new_mr = torch.maximum(self.m_r, zr.amax(-1))
        new_ml = torch.maximum(self.m_l, zl.amax(-1))
        er = torch.exp((zr - new_mr[:, None]).double())
        scale_r = torch.exp((self.m_r - new_mr).double())
        self.s_r = self.s_r * scale_r + er.sum(-1)
        self.t = self.t * scale_r + (er * (zr - zl).double()).sum(-1)
        el = torch.exp((zl - new_ml[:, None]).double())
        self.s_l = self.s_l * torch.exp((self.m_l - new_ml).double()) + el.sum(-1)
        self.m_r, self.m_l = new_mr, new_ml
        top2 = zr.topk(min(2, zr.shape[-1]), dim=-1).values
        block_second = top2[:, 1] if top2.shape[-1] > 1 else torch.full_like(top2[:, 0], -math.inf)
        vr, ir = zr.max(-1)
        vl, il = zl.max(-1)
        self.second_r = torch.maximum(torch.maximum(self.second_r, block_second),
                                      torch.minimum(self.best_r, vr))
        take_r, take_l = vr > self.best_r, vl > self.best_l
        self.arg_r = torch.where(take_r, ir + offset, self.arg_r)
        self.best_r = torch.where(take_r, vr, self.best_r)
        self.arg_l = torch.where(take_l, il + offset, self.arg_l)
        self.best_l = torch.where(take_l, vl, self.best_l)

    def kl(self) -> torch.Tensor:
        lse_r = self.m_r.double() + self.s_r.log()
        lse_l = self.m_l.double() + self.s_l.log()
        return (self.t / self.s_r - lse_r + lse_l).clamp_min(0.0)


def head_stats(ref, side, hr: torch.Tensor, hl: torch.Tensor) -> HeadStats:
    """lm_head in vocabulary row blocks on both sides: never more than a block of either in memory.
    The logits are computed where the hidden states are; the statistics on the CPU (in float64)."""
    stats = HeadStats(hr.shape[0])
    for start, wr in reference_head_blocks(ref):
        wl = side.head_rows(start, start + wr.shape[0])
        stats.add((hr @ wr.T).cpu(), (hl @ wl.T).cpu(), start)
    return stats


class SideStats:
    """One model's logits over vocabulary blocks: logsumexp, the top-k (ids and values), and the
    values at the fixed ids `gather` (sorted). Golden files record these for the reference and
    verify computes them for the LLaMA side."""

    def __init__(self, n: int, k: int, gather: torch.Tensor):
        self.k, self.gather = k, gather
        self.m = torch.full((n,), -math.inf)
        self.s = torch.zeros(n, dtype=torch.float64)
        self.top_values = torch.empty(n, 0)
        self.top_ids = torch.empty(n, 0, dtype=torch.long)
        self.gathered = torch.empty(n, len(gather))

    def add(self, z: torch.Tensor, offset: int) -> None:
        new_m = torch.maximum(self.m, z.amax(-1))
        self.s = (self.s * torch.exp((self.m - new_m).double())
                  + torch.exp((z - new_m[:, None]).double()).sum(-1))
        self.m = new_m
        values, ids = z.topk(min(self.k, z.shape[-1]), dim=-1)
        values = torch.cat([self.top_values, values], -1)
        ids = torch.cat([self.top_ids, ids + offset], -1)
        keep = values.topk(min(self.k, values.shape[-1]), dim=-1)
        self.top_values, self.top_ids = keep.values, ids.gather(-1, keep.indices)
        inside = (self.gather >= offset) & (self.gather < offset + z.shape[-1])
        self.gathered[:, inside] = z[:, self.gather[inside] - offset]

    def lse(self) -> torch.Tensor:
        return self.m.double() + self.s.log()


def side_stats(blocks, h: torch.Tensor, k: int, gather: torch.Tensor) -> SideStats:
    """Stream `h @ w.T` over (offset, weight block) pairs into a SideStats."""
    stats = SideStats(h.shape[0], k, gather)
    for offset, w in blocks:
        stats.add((h @ w.T).cpu(), offset)
    return stats


def _blocks(model, rows: int):
    for start in range(0, rows, HEAD_BLOCK_ROWS):
        yield start, model.head_rows(start, min(rows, start + HEAD_BLOCK_ROWS))


def reference_head_blocks(ref):
    return _blocks(ref, ref.head_ref().shape[0])


def llama_head_blocks(side):
    return _blocks(side, side.tensors["lm_head.weight"].shape[0])
