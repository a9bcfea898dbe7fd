"""How a module's output-feature split becomes tensor slices, one small piece per storage format.

A format says which tensors a Qwen module stores (`stored`: suffix -> shape in feature symbols)
and turns a module's tensors into output tensors (`outputs`). The plan picks the format; a new
format (GPTQ columns, LoRA factors) adds a module here instead of a branch in the plan.
"""
from . import dense

__all__ = ["dense"]
