"""The conversion plan: every output tensor and its source slice, from metadata alone.

`inspect`/`--dry-run` print it, the writer executes it, and every error it can find (an
unknown or missing tensor, a shape that disagrees with the config, an unusable dtype) is
raised here, before a byte is written.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import layout
from .dtypes import FLOAT_NAMES, NAME_OF
from .errors import InputError
from .formats import Format, explain_unknown, format_for
from .lora import mapping as lora
from .qwen.checkpoint import Checkpoint
from .storage import OutputTensor, TensorRef
from .targets import Target, target_for

CONFIG_FIX = "use the config.json that came with these weights"


@dataclass
class ConversionPlan:
    checkpoint: Checkpoint
    dtype: str  # of the floating-point tensors
    tensors: list[OutputTensor]
    fmt: Format
    target: Target
    dropped: list[str] = field(default_factory=list)
    zero_dropped: list[TensorRef] = field(default_factory=list)  # stored, all zero, left out (checked)

    @property
    def quantized(self) -> bool:
        """Whether the output is a GPTQ folder (needs a quantization_config)."""
        return self.fmt.quantized

    @property
    def mlp_bias(self) -> bool:
        """Whether the output's MLP linears have biases (config.json `mlp_bias`)."""
        return self.fmt.mlp_bias

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def lossy(self) -> bool:
        """Whether a cast changes values (a narrowing --dtype)."""
        return any(t.narrows for t in self.tensors)


@dataclass
class SourceMap:
    """The source's tensors by (module, layer) and suffix, checked against the table and the config."""

    found: dict[tuple[str, int | None], dict[str, TensorRef]]
    dropped: list[str]


def map_source(ckpt: Checkpoint, fmt: Format | None = None) -> SourceMap:
    """Place every source tensor in the table, or raise naming the first that does not fit."""
    fmt = fmt or format_for(ckpt)
    n_layers = ckpt.config.num_layers
    sizes = layout.feature_sizes(ckpt.config)
    stored = {m.qwen: fmt.stored(m, sizes) for m in layout.MODULES}  # what each module holds, once
    found: dict[tuple[str, int | None], dict[str, TensorRef]] = {}
    dropped: list[str] = []
    for name, ref in ckpt.tensors.items():
        module_path, _, suffix = name.rpartition(".")
        module, layer = layout.match(module_path) or (None, None)
        want = stored[module.qwen].get(suffix) if module is not None else None
        if want is None:
            if layout.is_dropped(name):
                dropped.append(name)
                continue
            raise explain_unknown(ckpt, name, ref)
        if layer is not None and layer >= n_layers:
            raise InputError(f"tensor {name} is for layer {layer}, but config.json says {n_layers} layers",
                             path=ref.file, fix=CONFIG_FIX)
        if ref.shape != want.shape:
            raise InputError(f"tensor {name} has shape {list(ref.shape)}, {fmt.implied_by()} "
                             f"{list(want.shape)}",
                             path=ref.file, fix=CONFIG_FIX)
        if ref.dtype not in want.dtypes:
            raise fmt.wrong_dtype(name, ref, want)
        found.setdefault((module.qwen, layer), {})[suffix] = ref
    missing = [layout.name_at(f"{module.qwen}.{suffix}", layer)
               for module, layer in layout.in_output_order(n_layers)
               for suffix, want in stored[module.qwen].items()
               if not want.optional and suffix not in found.get((module.qwen, layer), {})]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise InputError(f"missing tensors: {', '.join(missing[:5])}{more}", path=ckpt.folder,
                         fix="download every shard of the checkpoint")
    return SourceMap(found, sorted(dropped))


def choose_dtype(ckpt: Checkpoint, requested: str | None, fmt: Format | None = None) -> str | None:
    """The output dtype of floating-point tensors: as requested, else the source's single one;
    None where the format keeps each tensor as stored (GPTQ's mix of types)."""
    fmt = fmt or format_for(ckpt)
    dequantize = fmt.dequantize
    if requested is not None:
        if requested not in FLOAT_NAMES:
            raise InputError(f"unknown --dtype {requested!r}", fix=f"use one of {', '.join(FLOAT_NAMES)}")
        if dequantize is not None and FLOAT_NAMES[requested] != dequantize:
            raise InputError(f"--dtype {requested} and --dequantize {NAME_OF[dequantize]} disagree",
                             fix="give --dequantize alone: it sets the type of every tensor")
        return FLOAT_NAMES[requested]
    if dequantize is not None:
        return dequantize
    if fmt.keeps_stored_dtypes:
        return None
    dtypes = {ref.dtype for name,
              ref in ckpt.tensors.items() if not layout.is_dropped(name) and ref.dtype in NAME_OF}
    if len(dtypes) != 1:
        raise InputError(f"the checkpoint mixes weight dtypes ({', '.join(sorted(dtypes))})",
                         path=ckpt.folder,
                         fix="choose the output type with --dtype bfloat16|float16|float32")
    return dtypes.pop()  # map_source has checked that every weight is a float type


def build_plan(ckpt: Checkpoint, dtype: str | None = None, dequantize: str | None = None,
               adapter=None, target: str | Target | None = None) -> ConversionPlan:
    """Every output tensor, in the table's order, with its source slice, for the output layout
    `target` (a name from targets.TARGETS; None: the default); with `adapter` (a QwenAdapter), the
    adapter merged into the weights."""
    target = target_for(target)
    fmt = format_for(ckpt, dequantize)
    source = map_source(ckpt, fmt)
    target.check_holds(ckpt.config, ckpt.folder / "config.json")
    fmt = fmt.for_source(source.found, target)
    out_dtype = choose_dtype(ckpt, dtype, fmt)
    tensors = [t for module, layer in layout.in_output_order(ckpt.config.num_layers)
               for t in fmt.outputs(module, layer, source.found[module.qwen, layer], out_dtype, target)]
    if adapter is not None:
        if not fmt.mergeable:
            raise InputError(f"--merge needs dense base weights; this base is {fmt.label}",
                             path=ckpt.folder,
                             fix="convert the adapter on its own (`qwen2llama adapter`) and serve "
                                 "it with LoRA")
        lora.check_base(adapter, ckpt)
        tensors = lora.merge_into(tensors, adapter)
    # the type config.json names: the embedding's where the format keeps each tensor as stored
    plan_dtype = out_dtype or next(t.dtype for t in tensors if t.name == "model.embed_tokens.weight")
    return ConversionPlan(ckpt, plan_dtype, tensors, fmt, target, source.dropped,
                          fmt.dropped(source.found, target))
