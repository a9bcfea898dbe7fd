"""How a module's output-feature split becomes tensor slices, one small piece per storage format.

A format says which tensors a Qwen module stores (`stored`: suffix -> shape and element types)
and turns a module's tensors into output tensors (`outputs`). The plan picks the format with
`format_for`; a new format adds a module here instead of a branch in the plan.
"""
from __future__ import annotations

from ..dtypes import FLOAT_NAMES
from ..errors import InputError
from .dense import DENSE, Dense
from . import lora
from .gptq import Gptq

__all__ = ["DENSE", "Dense", "Gptq", "format_for", "lora"]


def format_for(ckpt, dequantize: str | None = None):
    """The format of a checkpoint's weights; `dequantize` (a dtype name) asks GPTQ for dense output."""
    if ckpt.quantization is None:
        if dequantize is not None:
            raise InputError("--dequantize applies to GPTQ checkpoints; this one has dense weights",
                             path=ckpt.folder, fix="drop --dequantize (use --dtype to change the type)")
        return DENSE
    if dequantize is not None and dequantize not in FLOAT_NAMES:
        raise InputError(f"unknown --dequantize {dequantize!r}", fix=f"use one of {', '.join(FLOAT_NAMES)}")
    return Gptq(ckpt.quantization, FLOAT_NAMES[dequantize] if dequantize else None)
