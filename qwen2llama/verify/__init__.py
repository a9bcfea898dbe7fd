"""`verify`: does the converted folder compute what the Qwen checkpoint computes?

Five checks, one module each, each with its own verdict: integrity (manifest hashes), tensors
(bit-exact slices), config (same network), tokenizer (tiktoken's ids, specials, chat template,
stop tokens) and logits (an independent Qwen forward vs transformers' LLaMA layers). Problems
with the source or the arguments are bad input (exit 2); problems with the converted folder are
failed checks (exit 1). Rendering is the CLI's.
"""
from __future__ import annotations

from .report import CHECKS, VerifyOptions, VerifyResult

__all__ = ["CHECKS", "VerifyOptions", "VerifyResult", "verify", "verify_golden"]


def __getattr__(name: str):
    """`verify` and `verify_golden` (checks.py) need torch and transformers: imported on first use,
    so that the command line and the pipeline start without them."""
    if name in ("verify", "verify_golden"):
        from . import checks

        return getattr(checks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
