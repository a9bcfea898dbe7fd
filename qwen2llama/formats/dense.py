"""Dense weights: a block of output features is a block of rows, so every output tensor is a
contiguous byte range of its source and a same-dtype conversion is a sequence of copies."""
from __future__ import annotations

from dataclasses import dataclass

from ..dtypes import NAME_OF
from ..layout import Module, name_at
from ..storage import OutputTensor, TensorRef

FLOATS = tuple(NAME_OF)


@dataclass(frozen=True)
class Stored:
    """A tensor a module stores: its shape (from the config) and the element types it may have;
    `optional`: a source may lack it (the zero biases AutoGPTQ adds to every quantized linear)."""

    shape: tuple[int, ...]
    dtypes: tuple[str, ...] = FLOATS
    optional: bool = False


def stored(module: Module, sizes: dict[str, int]) -> dict[str, Stored]:
    """The tensors a Qwen module stores, by suffix."""
    shape = tuple(sizes[s] for s in module.features)
    out = {"weight": Stored(shape)}
    if module.bias:
        out["bias"] = Stored(shape[:1])
    return out


def split_rows(module: Module, layer: int | None, suffix: str, ref: TensorRef,
               dtype: str | None) -> list[OutputTensor]:
    """One stored tensor split by output rows into the module's LLaMA modules (`dtype` None: as stored)."""
    dtype = dtype or ref.dtype
    tensors = []
    for split in module.into:
        start, stop = split.block(ref.shape[0])
        tensors.append(OutputTensor(f"{name_at(split.llama, layer)}.{suffix}", dtype,
                                    (stop - start, *ref.shape[1:]),
                                    ref, start, stop))
    return tensors


def zero_biases(module: Module, layer: int | None, out_features: int, dtype: str, every: bool = False
                ) -> list[OutputTensor]:
    """The biases LLaMA expects where Qwen has none (o_proj; with `every`, each LLaMA module:
    `mlp_bias: true` gives gate/up/down biases), as zeros."""
    return [OutputTensor(f"{name_at(s.llama, layer)}.bias", dtype, (out_features // s.count,), None)
            for s in module.into if s.zero_bias or every]


class Dense:
    """Plain floating-point weights (every Qwen v1 release but the Int4/Int8 ones)."""

    name = "dense"
    quantized = False
    dequantize = None
    mlp_bias = False
    keeps_stored_dtypes = False  # one floating-point type in, one out (--dtype for a mixed source)

    def for_source(self, found: dict) -> Dense:
        return self

    def dropped(self, found: dict) -> list[TensorRef]:
        return []

    def stored(self, module: Module, sizes: dict[str, int]) -> dict[str, Stored]:
        return stored(module, sizes)

    def outputs(self, module: Module, layer: int | None, refs: dict[str, TensorRef],
                dtype: str) -> list[OutputTensor]:
        tensors = [t for suffix in ("weight", "bias") if suffix in refs
                   for t in split_rows(module, layer, suffix, refs[suffix], dtype)]
        return tensors + zero_biases(module, layer, refs["weight"].shape[0], dtype)


DENSE = Dense()
