"""Dense weights: a block of output features is a block of rows, so every output tensor is a
contiguous byte range of its source and a same-dtype conversion is a sequence of copies."""
from __future__ import annotations

from dataclasses import dataclass

from ..dtypes import NAME_OF
from ..errors import InputError
from ..layout import Module
from ..storage import OutputTensor, TensorRef
from .rows import split_rows, zero_biases

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


class Dense:
    """Plain floating-point weights (every Qwen v1 release but the Int4/Int8 ones): the format of
    any checkpoint no other format claims."""

    name = "dense"
    label = "dense weights"
    quantized = False
    dequantize = None
    mlp_bias = False
    mergeable = True
    keeps_stored_dtypes = False  # one floating-point type in, one out (--dtype for a mixed source)
    fingerprint = None  # the default format adds nothing to a conversion's fingerprint

    @classmethod
    def detect(cls, ckpt, dequantize: str | None = None) -> Dense:
        if dequantize is not None:
            raise InputError("--dequantize applies to GPTQ checkpoints; this one has dense weights",
                             path=ckpt.folder, fix="drop --dequantize (use --dtype to change the type)")
        return DENSE

    @staticmethod
    def explain_unknown(ckpt, name: str, ref: TensorRef) -> InputError | None:
        return None

    def describe(self, dtype: str) -> str | None:
        """One line for inspect and --dry-run; None: nothing to say beyond the plan."""
        return None

    def implied_by(self) -> str:
        return "config.json implies"

    def wrong_dtype(self, name: str, ref: TensorRef, want: Stored) -> InputError:
        return InputError(f"tensor {name} is {ref.dtype}, not a floating-point type", path=ref.file,
                          fix="only float32, float16 and bfloat16 weights can be converted")

    def output_config(self) -> dict:
        """Entries the output's config.json gets from the format."""
        return {}

    def output_files(self) -> dict[str, dict]:
        """JSON files the output folder gets from the format, by name."""
        return {}

    def for_source(self, found: dict, target) -> Dense:
        return self

    def dropped(self, found: dict, target) -> list[TensorRef]:
        return []

    def stored(self, module: Module, sizes: dict[str, int]) -> dict[str, Stored]:
        return stored(module, sizes)

    def outputs(self, module: Module, layer: int | None, refs: dict[str, TensorRef],
                dtype: str, target) -> list[OutputTensor]:
        """Rows of each stored tensor; zeros where the target has a bias Qwen lacks (every target
        holds the biases Qwen stores: q/k/v's)."""
        tensors = [t for suffix in ("weight", "bias") if suffix in refs
                   for t in split_rows(module, layer, suffix, refs[suffix], dtype)]
        if "bias" in refs:
            return tensors
        return tensors + zero_biases(module, layer, refs["weight"].shape[0], dtype, target)


DENSE = Dense()
