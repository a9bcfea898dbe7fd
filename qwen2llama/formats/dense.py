"""Dense weights: a block of output features is a block of rows, so every output tensor is a
contiguous byte range of its source and a same-dtype conversion is a sequence of copies."""
from __future__ import annotations

from ..layout import Module, name_at
from ..storage import OutputTensor, TensorRef

NAME = "dense"


def stored(module: Module) -> dict[str, tuple[str, ...]]:
    """The tensors a Qwen module stores, by suffix, with their shapes in feature symbols."""
    out = {"weight": module.features}
    if module.bias:
        out["bias"] = module.features[:1]
    return out


def outputs(module: Module, layer: int | None, refs: dict[str, TensorRef], dtype: str) -> list[OutputTensor]:
    """Each stored tensor split by output rows into its LLaMA modules, then any zero companions."""
    tensors = []
    for suffix in stored(module):
        ref = refs[suffix]
        for split in module.into:
            rows = ref.shape[0] // split.count
            tensors.append(OutputTensor(f"{name_at(split.llama, layer)}.{suffix}", dtype, (rows, *ref.shape[1:]),
                                        ref, split.index * rows, (split.index + 1) * rows))
    out_rows = refs["weight"].shape[0]
    for split in module.into:
        if split.zero_bias:
            tensors.append(OutputTensor(f"{name_at(split.llama, layer)}.bias", dtype, (out_rows // split.count,), None))
    return tensors
