"""The conversion plan: every output tensor, its source byte range and its shard, from metadata alone.

`inspect`/`--dry-run` print it, the writer executes it, and every error it can find (an
unknown or missing tensor, a shape that disagrees with the config, an unusable dtype) is
raised here, before a byte is written.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from math import prod

from . import layout
from .dtypes import FLOAT_NAMES, ITEMSIZE, NAME_OF
from .errors import InputError
from .qwen.checkpoint import Checkpoint, TensorRef


@dataclass(frozen=True)
class OutputTensor:
    """One LLaMA tensor: rows [row_start, row_stop) of `source`, or zeros when source is None."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    source: TensorRef | None
    row_start: int = 0
    row_stop: int = 0

    @property
    def nbytes(self) -> int:
        return prod(self.shape) * ITEMSIZE[self.dtype]

    @property
    def is_byte_copy(self) -> bool:
        return self.source is not None and self.source.dtype == self.dtype


@dataclass
class ConversionPlan:
    checkpoint: Checkpoint
    dtype: str
    tensors: list[OutputTensor]
    dropped: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def _expected_shape(key: str, ckpt: Checkpoint) -> tuple[int, ...]:
    c = ckpt.config
    sizes = {"H": c.hidden_size, "P": c.projection_size, "3P": 3 * c.projection_size, "F": c.mlp_width,
             "V": c.vocab_rows}
    return tuple(sizes[s] for s in layout.QWEN_SHAPES[key])


def choose_dtype(ckpt: Checkpoint, requested: str | None) -> str:
    if requested is not None:
        if requested not in FLOAT_NAMES:
            raise InputError(f"unknown --dtype {requested!r}", fix=f"use one of {', '.join(FLOAT_NAMES)}")
        return FLOAT_NAMES[requested]
    dtypes = {ckpt.tensors[n].dtype for n in ckpt.tensors if not layout.is_dropped(n)}
    if len(dtypes) != 1:
        raise InputError(f"the checkpoint mixes weight dtypes ({', '.join(sorted(dtypes))})", path=ckpt.folder,
                         fix="choose the output type with --dtype bfloat16|float16|float32")
    (dtype,) = dtypes
    if dtype not in NAME_OF:
        raise InputError(f"weights are stored as {dtype}, not a floating-point type", path=ckpt.folder,
                         fix="only float32, float16 and bfloat16 checkpoints can be converted")
    return dtype


def build_plan(ckpt: Checkpoint, dtype: str | None = None) -> ConversionPlan:
    """Map every source tensor through `layout`, check it against the config, and order the output."""
    n_layers = ckpt.config.num_layers
    found: dict[tuple[str, int | None], TensorRef] = {}
    dropped: list[str] = []
    for name, ref in ckpt.tensors.items():
        hit = layout.match(name)
        if hit is None:
            if layout.is_dropped(name):
                dropped.append(name)
                continue
            raise InputError(f"unknown tensor {name} (shape {list(ref.shape)}): not part of a Qwen v1 model",
                             path=ref.file, fix="qwen2llama converts unmodified Qwen v1 checkpoints only; "
                             "remove adapters or extra heads first")
        key, layer = hit
        if layer is not None and layer >= n_layers:
            raise InputError(f"tensor {name} is for layer {layer}, but config.json says {n_layers} layers",
                             path=ref.file, fix="use the config.json that came with these weights")
        expected = _expected_shape(key, ckpt)
        if ref.shape != expected:
            raise InputError(f"tensor {name} has shape {list(ref.shape)}, config.json implies {list(expected)}",
                             path=ref.file, fix="use the config.json that came with these weights")
        if ref.dtype not in NAME_OF:
            raise InputError(f"tensor {name} is {ref.dtype}, not a floating-point type", path=ref.file,
                             fix="only float32, float16 and bfloat16 weights can be converted")
        found[key, layer] = ref
    wanted = [(k, None) for k in layout.TENSOR_MAP if "{i}" not in k]
    wanted += [(k, i) for i in range(n_layers) for k in layout.TENSOR_MAP if "{i}" in k]
    missing = [k.replace("{i}", str(i)) for k, i in wanted if (k, i) not in found]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise InputError(f"missing tensors: {', '.join(missing[:5])}{more}", path=ckpt.folder,
                         fix="download every shard of the checkpoint")

    out_dtype = choose_dtype(ckpt, dtype)
    tensors: list[OutputTensor] = []

    def emit(key: str, layer: int | None) -> None:
        ref = found[key, layer]
        for target, part in layout.TENSOR_MAP[key]:
            rows = ref.shape[0] // part.count
            name = target.replace("{i}", str(layer))
            tensors.append(OutputTensor(name, out_dtype, (rows, *ref.shape[1:]), ref,
                                        part.index * rows, (part.index + 1) * rows))
            if target == layout.ZERO_AFTER:
                for zero_name, like in layout.ZERO_TENSORS.items():
                    rows_like = found[like, layer].shape[0]
                    tensors.append(OutputTensor(zero_name.replace("{i}", str(layer)), out_dtype, (rows_like,), None))

    layer_keys = [k for k in layout.TENSOR_MAP if "{i}" in k]
    emit("transformer.wte.weight", None)
    for i in range(n_layers):
        for key in layer_keys:
            emit(key, i)
    for key in layout.TENSOR_MAP:
        if "{i}" not in key and key != "transformer.wte.weight":
            emit(key, None)
    return ConversionPlan(ckpt, out_dtype, tensors, sorted(dropped))
