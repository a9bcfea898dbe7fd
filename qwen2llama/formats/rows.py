"""The dense rule, shared by the formats and the LoRA mapping: a block of output features is a
block of rows, so each part of a module is a contiguous byte range of its stored tensor."""
from __future__ import annotations

from ..layout import Module, name_at
from ..storage import OutputTensor, TensorRef


def split_rows(module: Module, layer: int | None, suffix: str, ref: TensorRef,
               dtype: str | None) -> list[OutputTensor]:
    """One stored tensor split by output rows into the module's LLaMA modules (`dtype` None: as stored)."""
    dtype = dtype or ref.dtype
    tensors = []
    for split in module.into:
        start, stop = split.block(ref.shape[0])
        tensors.append(OutputTensor(f"{name_at(split.llama, layer)}.{suffix}", dtype,
                                    (stop - start, *ref.shape[1:]), ref, start, stop))
    return tensors


def zero_biases(module: Module, layer: int | None, out_features: int, dtype: str, target,
                mlp_bias: bool = False) -> list[OutputTensor]:
    """The biases the target expects where the source stores none, as zeros (LLaMA's o_proj; with
    `mlp_bias`, gate/up/down too)."""
    return [OutputTensor(f"{name_at(s.llama, layer)}.bias", dtype, (out_features // s.count,), None)
            for s in module.into if target.has_bias(s.llama, mlp_bias)]
