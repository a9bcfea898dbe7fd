"""`--context T`: Qwen's own RoPE past `seq_length`, as a fixed base every runtime applies alike.

Qwen picks its NTK factor once, at prefill, from the prompt's length L (S = seq_length):
alpha(L) = max(2**ceil(log2(L/S) + 1) - 1, 1) past S (3 up to 2S, 7 up to 4S, 15 up to 8S), and
rotates every position, those below S too, with base * alpha ** (d/(d-2)), d the head size; decoding
keeps that alpha. Writing that base as `rope_theta` with `max_position_embeddings = T` therefore
gives Qwen's function exactly for prompts whose length gets the same alpha as T — the band
(S * 2**(k-1), T], T in (S * 2**(k-1), S * 2**k] — and their generation up to T. Shorter prompts get
another alpha in Qwen, and logn attention (queries past S scaled by log(i)/log(S)) has no equivalent
in the LLaMA or Qwen2 layout: both differences are measured by verify and stated, not hidden.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import InputError
from .qwen.config import QwenConfig

LOGN_TABLE = 32768  # Qwen's logn table ends here: it supports no longer context


def qwen_alpha(length: int, seq_length: int) -> int:
    """Qwen's dynamic NTK factor for a prompt of `length` tokens (1 up to seq_length)."""
    if length <= seq_length:
        return 1
    return max(2 ** math.ceil(math.log2(length / seq_length) + 1) - 1, 1)


@dataclass(frozen=True)
class Context:
    tokens: int  # T: max_position_embeddings
    alpha: int
    rope_theta: float
    band: tuple[int, int]  # prompt lengths [first, last] that get Qwen's RoPE exactly
    logn: bool  # the source uses logn attention (not carried)

    def record(self) -> dict:
        return {"context_tokens": self.tokens, "ntk_alpha": self.alpha, "rope_theta": self.rope_theta,
                "exact_for_prompt_lengths": list(self.band), "logn_attention_carried": False,
                "logn_attention_in_source": self.logn}


def context_for(cfg: QwenConfig, tokens: int | None, path=None) -> Context | None:
    """The long-context settings for `--context tokens`, or bad input saying why there are none."""
    if tokens is None:
        return None
    s = cfg.seq_length
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens <= s:
        raise InputError(f"--context {tokens!r}: up to seq_length ({s}) the default output is exact already",
                         path=path, fix=f"give a context longer than {s} tokens, or leave --context out")
    if not cfg.use_dynamic_ntk:
        raise InputError("--context: this model has dynamic NTK off, so its RoPE is the same at every length "
                         f"and the default output is exact as far as it goes (max_position_embeddings {s}"
                         + (", logn attention on: not carried past it" if cfg.use_logn_attn else "") + ")",
                         path=path, fix="leave --context out")
    if tokens > LOGN_TABLE:
        raise InputError(f"--context {tokens}: Qwen itself supports at most {LOGN_TABLE} tokens (its logn "
                         "table)", path=path, fix=f"give at most {LOGN_TABLE}")
    alpha = qwen_alpha(tokens, s)
    d = cfg.head_dim
    first = s * 2 ** (math.ceil(math.log2(tokens / s)) - 1) + 1
    return Context(tokens, alpha, cfg.rotary_emb_base * alpha ** (d / (d - 2)), (first, tokens),
                   cfg.use_logn_attn)
