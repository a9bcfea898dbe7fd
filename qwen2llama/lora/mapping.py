"""LoRA adapters through the same table: ΔW = s * B @ A splits by output features like W, so
each LLaMA part takes the same `lora_A` (copied) and its rows of `lora_B` (and of DoRA's
magnitude vector, a per-output-row factor). `modules_to_save` tensors are split like weights.

`Merged` instead computes a base weight with ΔW folded in, for `convert --adapter --merge`.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..dtypes import torch_dtype
from ..errors import InputError
from ..layout import AFTER_LAYERS, MODULES, Module, feature_sizes, match, name_at
from .read import PREFIX, LoraFactors, QwenAdapter
from ..storage import OutputTensor, TensorRef, read_ref
from ..storage.refs import COMPUTE_BLOCK, row_blocks
from ..formats.rows import split_rows

def module_at(qwen_path: str) -> tuple[Module, int | None]:
    """The table's module for a Qwen module path, and its layer (layout.match; KeyError if none)."""
    hit = match(qwen_path)
    if hit is None:
        raise KeyError(qwen_path)
    return hit


def factor_outputs(f: LoraFactors, module: Module, layer: int | None) -> list[OutputTensor]:
    """The LLaMA adapter tensors of one adapted Qwen linear."""
    tensors = []
    for split in module.into:
        llama = PREFIX + name_at(split.llama, layer)
        tensors.append(OutputTensor(f"{llama}.lora_A.weight", f.a.dtype, f.a.shape, f.a, 0, f.a.shape[0]))
        start, stop = split.block(f.b.shape[0])
        tensors.append(OutputTensor(f"{llama}.lora_B.weight", f.b.dtype, (stop - start, f.b.shape[1]),
                                    f.b, start, stop))
        if f.magnitude is not None:
            start, stop = split.block(f.magnitude.shape[0])
            tensors.append(OutputTensor(f"{llama}.lora_magnitude_vector", f.magnitude.dtype, (stop - start,),
                                        f.magnitude, start, stop))
    return tensors


def saved_outputs(name: str, ref: TensorRef, prefix: str = PREFIX) -> list[OutputTensor]:
    """A modules_to_save tensor (Qwen name) as LLaMA tensors, split like the base weight."""
    module_path, _, suffix = name.rpartition(".")
    module, layer = module_at(module_path)
    tensors = split_rows(module, layer, suffix, ref, ref.dtype)
    return [OutputTensor(prefix + t.name, t.dtype, t.shape, t.source, t.row_start,
                         t.row_stop) for t in tensors]


def _order(path: str):
    """The table's order: the embedding, then layer by layer, then the final norm and lm_head."""
    module, layer = module_at(path)
    section = 2 if module in AFTER_LAYERS else 1 if layer is not None else 0
    return (section, layer or 0, MODULES.index(module))


def _linear(path: str, adapter: QwenAdapter) -> tuple[Module, int | None]:
    try:
        module, layer = module_at(path)
    except KeyError:
        module = layer = None
    if module is None or module.role != "linear":
        raise InputError(f"LoRA on {path}: not one of Qwen v1's block linears", path=adapter.files[0],
                         fix="qwen2llama converts LoRA on attn.c_attn, attn.c_proj, mlp.w1, "
                             "mlp.w2, mlp.c_proj")
    return module, layer


def _saved_module(name: str, adapter: QwenAdapter) -> str:
    path = name.rpartition(".")[0]
    try:
        module_at(path)
    except KeyError:
        raise InputError(f"modules_to_save tensor {name} is not part of a Qwen v1 model",
                         path=adapter.files[0], fix="check that the adapter was trained on Qwen v1") from None
    return path


def adapter_outputs(adapter: QwenAdapter) -> list[OutputTensor]:
    """Every tensor of the converted adapter, in the table's order of modules."""
    located = {path: _linear(path, adapter) for path in adapter.factors}
    for path, (module, _) in located.items():
        rows = adapter.factors[path].b.shape[0]
        if rows % len(module.into):
            parts = ", ".join(s.llama.rsplit(".", 1)[-1] for s in module.into)
            raise InputError(f"{path}: lora_B has {rows} rows, which do not split into {len(module.into)} "
                             f"equal parts ({parts})",
                             path=adapter.factors[path].b.file, fix="restore the adapter file PEFT wrote")
    out = []
    for path in sorted(located, key=_order):
        out += factor_outputs(adapter.factors[path], *located[path])
    for name in sorted(adapter.saved, key=lambda n: _order(_saved_module(n, adapter))):
        out += saved_outputs(name, adapter.saved[name])
    return out


def check_base(adapter: QwenAdapter, ckpt) -> None:
    """The adapter was trained on a model of this size: every factor and saved tensor fits the base."""
    sizes = feature_sizes(ckpt.config)
    for path, f in adapter.factors.items():
        module, layer = _linear(path, adapter)
        out_f, in_f = (sizes[s] for s in module.features)
        if f.a.shape[1] != in_f or f.b.shape[0] != out_f:
            raise InputError(f"the adapter was made for another base size: {path} has lora_A "
                             f"{list(f.a.shape)} and "
                             f"lora_B {list(f.b.shape)}, but the base's {path} weight is [{out_f}, {in_f}]",
                             path=f.a.file, fix="give --base the Qwen model the adapter was trained on")
        if layer is not None and layer >= ckpt.config.num_layers:
            raise InputError(f"the adapter adapts layer {layer}, the base has "
                             f"{ckpt.config.num_layers} layers",
                             path=f.a.file, fix="give --base the Qwen model the adapter was trained on")
    for name, ref in adapter.saved.items():
        _saved_module(name, adapter)
        base = ckpt.tensors.get(name)
        if base is None or base.shape != ref.shape:
            raise InputError(f"the adapter was made for another base size: modules_to_save {name} is "
                             f"{list(ref.shape)}, the base's is {list(base.shape) if base else 'absent'}",
                             path=ref.file, fix="give --base the Qwen model the adapter was trained on")


def merge_into(tensors: list[OutputTensor], adapter: QwenAdapter) -> list[OutputTensor]:
    """A base model's planned tensors with the adapter folded in: adapted weights computed
    (`Merged`), modules_to_save taken from the adapter file."""
    replace: dict[str, TensorRef | LoraFactors] = {}
    for path, f in adapter.factors.items():
        module, layer = _linear(path, adapter)
        replace.update({f"{name_at(s.llama, layer)}.weight": f for s in module.into})
    for name, ref in adapter.saved.items():
        _saved_module(name, adapter)
        replace.update({t.name: t.source for t in saved_outputs(name, ref, prefix="")})
    out = []
    for t in tensors:
        new = replace.get(t.name)
        if isinstance(new, LoraFactors):
            t = OutputTensor(t.name, t.dtype, t.shape, None,
                             derived=Merged(t.source, new, t.row_start, t.row_stop))
        elif new is not None:
            t = OutputTensor(t.name, t.dtype, t.shape, new, t.row_start, t.row_stop)
        out.append(t)
    return out


@dataclass(frozen=True)
class Merged:
    """Rows [start, stop) of a base weight with an adapter folded in: W + s * B @ A, and with DoRA
    m / ||W + s * B @ A||_row times that; float32, then cast."""

    weight: TensorRef
    factors: LoraFactors
    start: int
    stop: int
    label = "merged with the adapter"

    @property
    def file(self):
        return self.weight.file

    def describe(self) -> str:
        return f"{self.weight.name}[{self.start}:{self.stop}] + LoRA of {self.factors.module}"

    def blocks(self, dtype: str):
        a = read_ref(self.factors.a).float()
        for r0, r1 in row_blocks(self.start, self.stop, 4 * self.weight.shape[1], COMPUTE_BLOCK):
            delta = read_ref(self.factors.b, r0, r1).float() @ a
            w = read_ref(self.weight, r0, r1).float() + self.factors.scaling * delta
            if self.factors.magnitude is not None:
                m = read_ref(self.factors.magnitude, r0, r1).float()
                w = w * (m / w.norm(dim=1))[:, None]
            yield w.to(torch_dtype(dtype))
