"""A reward model's value head (`value_head.safetensors`, as LLaMA-Factory and TRL save it:
`v_head.summary.weight` [k, H] and `.bias` [k], k = 1). It acts on the final hidden states, which
are the same in the Qwen, LLaMA and Qwen2 layouts, so it is carried unchanged; checked first, so
that a NaN or a head of another model is refused rather than copied."""
from __future__ import annotations

from pathlib import Path

from ..dtypes import NAME_OF
from ..errors import InputError
from ..storage import read_ref
from ..storage.safetensors import read_safetensors_header

FIX = "restore the value_head.safetensors the reward model was saved with, or --ignore it"


def check_value_head(path: Path, hidden: int) -> dict:
    """The head's tensors, checked: their names, shapes against the model's hidden size, a float
    dtype and finite values. Returns {name: shape} for the manifest."""
    refs = read_safetensors_header(path)
    weight, bias = refs.get("v_head.summary.weight"), refs.get("v_head.summary.bias")
    if weight is None or set(refs) - {"v_head.summary.weight", "v_head.summary.bias"}:
        raise InputError(f"value_head.safetensors holds {sorted(refs)[:4]}, not v_head.summary.weight "
                         "(and .bias)", path=path, fix=FIX)
    if len(weight.shape) != 2 or weight.shape[1] != hidden or (
            bias is not None and tuple(bias.shape) != (weight.shape[0],)):
        raise InputError(f"value head shapes {[list(r.shape) for r in refs.values()]} do not fit hidden size "
                         f"{hidden}", path=path, fix=FIX)
    for ref in refs.values():
        if ref.dtype not in NAME_OF:
            raise InputError(f"value head tensor {ref.name} is {ref.dtype}, not a float type", path=path,
                             fix=FIX)
        if not bool(read_ref(ref).float().isfinite().all()):
            raise InputError(f"value head tensor {ref.name} holds NaN or infinite values", path=path, fix=FIX)
    return {name: list(ref.shape) for name, ref in sorted(refs.items())}
