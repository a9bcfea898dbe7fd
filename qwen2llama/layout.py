"""The one Qwen v1 -> LLaMA mapping: modules and their output features.

Each Qwen module becomes one or more LLaMA modules (the Qwen2 layout uses the same names; which of
them carry a bias is the target's answer, targets/); a `Split(k, n)` takes the k-th of n equal
blocks of the module's output features (c_attn's q/k/v thirds). How a block of output features
becomes tensor slices depends on how the weights are stored, and is the job of `formats/`: for
dense weights it is a row range, hence a byte range. Both sides are `nn.Linear` ([out, in]) with
the same "rotate half" RoPE, so nothing is transposed or permuted. `{i}` is the layer index.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .qwen.config import QwenConfig


@dataclass(frozen=True)
class Split:
    """LLaMA module `llama` takes output-feature block `index` of `count`."""

    llama: str
    index: int = 0
    count: int = 1

    def block(self, total: int) -> tuple[int, int]:
        """[start, stop) of this part among `total` output features (rows or columns)."""
        size = total // self.count
        return self.index * size, (self.index + 1) * size


@dataclass(frozen=True)
class Module:
    """A Qwen module. `features` are its sizes in terms of H (hidden), P (heads x kv_channels),
    F (half the written intermediate size) and V (embedding rows): (out, in) for tables and
    linears, (out,) for norms. `role` lets a format treat modules differently (GPTQ quantizes
    the block linears only)."""

    qwen: str
    role: str  # "embedding" | "norm" | "linear" | "head"
    features: tuple[str, ...]
    into: tuple[Split, ...]
    bias: bool = False

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.qwen


L = "model.layers.{i}."
# The output order is: BEFORE_LAYERS, then LAYER for each layer, then AFTER_LAYERS.
BEFORE_LAYERS = (
    Module("transformer.wte", "embedding", ("V", "H"), (Split("model.embed_tokens"),)),
)
LAYER = (
    Module("transformer.h.{i}.ln_1", "norm", ("H",), (Split(L + "input_layernorm"),)),
    Module("transformer.h.{i}.attn.c_attn", "linear", ("3P", "H"), (
        Split(L + "self_attn.q_proj", 0, 3), Split(L + "self_attn.k_proj", 1, 3),
        Split(L + "self_attn.v_proj", 2, 3),
    ), bias=True),
    Module("transformer.h.{i}.attn.c_proj", "linear", ("H", "P"), (Split(L + "self_attn.o_proj"),)),
    Module("transformer.h.{i}.ln_2", "norm", ("H",), (Split(L + "post_attention_layernorm"),)),
    # w2 is the branch Qwen passes through SiLU: LLaMA's gate. w1 is the plain branch: up.
    Module("transformer.h.{i}.mlp.w2", "linear", ("F", "H"), (Split(L + "mlp.gate_proj"),)),
    Module("transformer.h.{i}.mlp.w1", "linear", ("F", "H"), (Split(L + "mlp.up_proj"),)),
    Module("transformer.h.{i}.mlp.c_proj", "linear", ("H", "F"), (Split(L + "mlp.down_proj"),)),
)
AFTER_LAYERS = (
    Module("transformer.ln_f", "norm", ("H",), (Split("model.norm"),)),
    Module("lm_head", "head", ("V", "H"), (Split("lm_head"),)),
)
MODULES = BEFORE_LAYERS + LAYER + AFTER_LAYERS

# Buffers some Qwen files carry that are not weights: recomputed by any runtime, never copied.
DROPPED = [re.compile(p) for p in (
    r"^transformer\.h\.\d+\.attn\.(masked_bias|bias)$",
    r"(^|\.)rotary_emb\.inv_freq$",
    r"(^|\.)logn_tensor$",
)]


_PATHS = [(re.compile("^" + re.escape(m.qwen).replace(r"\{i\}", r"(\d+)") + "$"), m) for m in MODULES]
BY_QWEN = {m.qwen: m for m in MODULES}  # by template ("transformer.h.{i}.mlp.w1")


def match(qwen_path: str) -> tuple[Module, int | None] | None:
    """The one reverse lookup: the table's module for a Qwen module path
    ("transformer.h.3.mlp.w1") and its layer, or None when the table has no such module."""
    for pattern, module in _PATHS:
        if hit := pattern.match(qwen_path):
            return module, int(hit.group(1)) if module.per_layer else None
    return None


def in_output_order(num_layers: int) -> list[tuple[Module, int | None]]:
    """Every (module, layer) of a model, in the order of the output files."""
    return ([(m, None) for m in BEFORE_LAYERS] + [(m, i) for i in range(num_layers) for m in LAYER]
            + [(m, None) for m in AFTER_LAYERS])


def feature_sizes(cfg: QwenConfig) -> dict[str, int]:
    p = cfg.projection_size
    return {"H": cfg.hidden_size, "P": p, "3P": 3 * p, "F": cfg.mlp_width, "V": cfg.vocab_rows}


def name_at(template: str, layer: int | None) -> str:
    return template if layer is None else template.replace("{i}", str(layer))


def is_dropped(qwen_name: str) -> bool:
    return any(p.search(qwen_name) for p in DROPPED)
