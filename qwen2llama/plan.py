"""The conversion plan: every output tensor and its source slice, from metadata alone.

`inspect`/`--dry-run` print it, the writer executes it, and every error it can find (an
unknown or missing tensor, a shape that disagrees with the config, an unusable dtype) is
raised here, before a byte is written.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from . import layout
from .dtypes import FLOAT_NAMES, NAME_OF, WIDENING
from .errors import InputError
from .formats import dense
from .qwen.checkpoint import Checkpoint
from .storage import OutputTensor, TensorRef

CONFIG_FIX = "use the config.json that came with these weights"


@dataclass
class ConversionPlan:
    checkpoint: Checkpoint
    dtype: str
    tensors: list[OutputTensor]
    dropped: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def lossy(self) -> bool:
        """Whether a cast changes values (a narrowing --dtype)."""
        return any(t.source is not None and t.source.dtype != t.dtype and (t.source.dtype, t.dtype) not in WIDENING
                   for t in self.tensors)


@dataclass
class SourceMap:
    """The source's tensors by (module, layer) and suffix, checked against the table and the config."""

    found: dict[tuple[str, int | None], dict[str, TensorRef]]
    dropped: list[str]


def _patterns(fmt) -> list[tuple[re.Pattern, layout.Module, str]]:
    out = []
    for module in layout.MODULES:
        for suffix in fmt.stored(module):
            template = re.escape(f"{module.qwen}.{suffix}").replace(r"\{i\}", r"(\d+)")
            out.append((re.compile(f"^{template}$"), module, suffix))
    return out


def map_source(ckpt: Checkpoint, fmt=dense) -> SourceMap:
    """Place every source tensor in the table, or raise naming the first that does not fit."""
    n_layers = ckpt.config.num_layers
    sizes = layout.feature_sizes(ckpt.config)
    patterns = _patterns(fmt)
    found: dict[tuple[str, int | None], dict[str, TensorRef]] = {}
    dropped: list[str] = []
    for name, ref in ckpt.tensors.items():
        hit = next(((m, module, suffix) for p, module, suffix in patterns if (m := p.match(name))), None)
        if hit is None:
            if layout.is_dropped(name):
                dropped.append(name)
                continue
            raise InputError(f"unknown tensor {name} (shape {list(ref.shape)}): not part of a Qwen v1 model",
                             path=ref.file, fix="qwen2llama converts unmodified Qwen v1 checkpoints only; "
                             "remove adapters or extra heads first")
        match, module, suffix = hit
        layer = int(match.group(1)) if module.per_layer else None
        if layer is not None and layer >= n_layers:
            raise InputError(f"tensor {name} is for layer {layer}, but config.json says {n_layers} layers",
                             path=ref.file, fix=CONFIG_FIX)
        expected = tuple(sizes[s] for s in fmt.stored(module)[suffix])
        if ref.shape != expected:
            raise InputError(f"tensor {name} has shape {list(ref.shape)}, config.json implies {list(expected)}",
                             path=ref.file, fix=CONFIG_FIX)
        if ref.dtype not in NAME_OF:
            raise InputError(f"tensor {name} is {ref.dtype}, not a floating-point type", path=ref.file,
                             fix="only float32, float16 and bfloat16 weights can be converted")
        found.setdefault((module.qwen, layer), {})[suffix] = ref
    missing = [layout.name_at(f"{module.qwen}.{suffix}", layer)
               for module, layer in layout.in_output_order(n_layers) for suffix in fmt.stored(module)
               if suffix not in found.get((module.qwen, layer), {})]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise InputError(f"missing tensors: {', '.join(missing[:5])}{more}", path=ckpt.folder,
                         fix="download every shard of the checkpoint")
    return SourceMap(found, sorted(dropped))


def choose_dtype(ckpt: Checkpoint, requested: str | None) -> str:
    """The output dtype: as requested, else the source's single weight dtype."""
    if requested is not None:
        if requested not in FLOAT_NAMES:
            raise InputError(f"unknown --dtype {requested!r}", fix=f"use one of {', '.join(FLOAT_NAMES)}")
        return FLOAT_NAMES[requested]
    dtypes = {ref.dtype for name, ref in ckpt.tensors.items() if not layout.is_dropped(name)}
    if len(dtypes) != 1:
        raise InputError(f"the checkpoint mixes weight dtypes ({', '.join(sorted(dtypes))})", path=ckpt.folder,
                         fix="choose the output type with --dtype bfloat16|float16|float32")
    return dtypes.pop()  # map_source has checked that every weight is a float type


def build_plan(ckpt: Checkpoint, dtype: str | None = None, fmt=dense) -> ConversionPlan:
    """Every output tensor, in the table's order, with its source slice."""
    source = map_source(ckpt, fmt)
    out_dtype = choose_dtype(ckpt, dtype)
    tensors = [t for module, layer in layout.in_output_order(ckpt.config.num_layers)
               for t in fmt.outputs(module, layer, source.found[module.qwen, layer], out_dtype)]
    return ConversionPlan(ckpt, out_dtype, tensors, source.dropped)
