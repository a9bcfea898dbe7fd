"""Streaming logit statistics over vocabulary blocks, so neither side's full logits are ever held:
max |Δlogit|, max |logit|, KL(reference ‖ llama) by online logsumexp, and top-1 with the
reference's runner-up (to excuse near-ties)."""
from __future__ import annotations

import math

import torch

from ..storage import read_ref

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
        self.second_r = torch.maximum(torch.maximum(self.second_r, block_second), torch.minimum(self.best_r, vr))
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
    """lm_head in vocabulary row blocks on both sides: never more than a block of either in memory."""
    stats = HeadStats(hr.shape[0])
    src_ref = ref.head_ref()
    rows = src_ref.shape[0]
    for start in range(0, rows, HEAD_BLOCK_ROWS):
        stop = min(rows, start + HEAD_BLOCK_ROWS)
        wr = read_ref(src_ref, start, stop).float()
        wl = side.tensor("lm_head.weight", start, stop)
        stats.add(hr @ wr.T, hl @ wl.T, start)
    return stats
