"""The one Qwen v1 -> LLaMA tensor table.

Every Qwen weight maps to one or more LLaMA weights. A `Part(k, n)` is the k-th of n equal
row blocks along dim 0 (the output rows of an `nn.Linear`), so every LLaMA tensor is a
contiguous byte range of its Qwen source. Both sides store `nn.Linear` weights as
[out, in], so nothing is transposed. `{i}` is the layer index.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Part:
    """Rows [index * n/count, (index + 1) * n/count) of the source tensor."""

    index: int = 0
    count: int = 1


WHOLE = Part()

# Qwen name -> [(LLaMA name, part)]. The order here is the order of the output files.
TENSOR_MAP: dict[str, list[tuple[str, Part]]] = {
    "transformer.wte.weight": [("model.embed_tokens.weight", WHOLE)],
    "transformer.h.{i}.ln_1.weight": [("model.layers.{i}.input_layernorm.weight", WHOLE)],
    "transformer.h.{i}.attn.c_attn.weight": [
        ("model.layers.{i}.self_attn.q_proj.weight", Part(0, 3)),
        ("model.layers.{i}.self_attn.k_proj.weight", Part(1, 3)),
        ("model.layers.{i}.self_attn.v_proj.weight", Part(2, 3)),
    ],
    "transformer.h.{i}.attn.c_attn.bias": [
        ("model.layers.{i}.self_attn.q_proj.bias", Part(0, 3)),
        ("model.layers.{i}.self_attn.k_proj.bias", Part(1, 3)),
        ("model.layers.{i}.self_attn.v_proj.bias", Part(2, 3)),
    ],
    "transformer.h.{i}.attn.c_proj.weight": [("model.layers.{i}.self_attn.o_proj.weight", WHOLE)],
    "transformer.h.{i}.ln_2.weight": [("model.layers.{i}.post_attention_layernorm.weight", WHOLE)],
    # w2 is the branch Qwen passes through SiLU: LLaMA's gate. w1 is the plain branch: up.
    "transformer.h.{i}.mlp.w2.weight": [("model.layers.{i}.mlp.gate_proj.weight", WHOLE)],
    "transformer.h.{i}.mlp.w1.weight": [("model.layers.{i}.mlp.up_proj.weight", WHOLE)],
    "transformer.h.{i}.mlp.c_proj.weight": [("model.layers.{i}.mlp.down_proj.weight", WHOLE)],
    "transformer.ln_f.weight": [("model.norm.weight", WHOLE)],
    "lm_head.weight": [("lm_head.weight", WHOLE)],
}

# LLaMA tensors with no Qwen source: `attention_bias: true` gives o_proj a bias that Qwen lacks.
# Written as zeros, with as many rows as the named Qwen tensor.
ZERO_TENSORS: dict[str, str] = {
    "model.layers.{i}.self_attn.o_proj.bias": "transformer.h.{i}.attn.c_proj.weight",
}
ZERO_AFTER = "model.layers.{i}.self_attn.o_proj.weight"  # where each zero tensor goes in the output order

# Expected Qwen shapes, in terms of H (hidden), P (heads * kv_channels), F (half of the written
# intermediate size) and V (embedding rows).
QWEN_SHAPES: dict[str, tuple[str, ...]] = {
    "transformer.wte.weight": ("V", "H"),
    "transformer.h.{i}.ln_1.weight": ("H",),
    "transformer.h.{i}.attn.c_attn.weight": ("3P", "H"),
    "transformer.h.{i}.attn.c_attn.bias": ("3P",),
    "transformer.h.{i}.attn.c_proj.weight": ("H", "P"),
    "transformer.h.{i}.ln_2.weight": ("H",),
    "transformer.h.{i}.mlp.w2.weight": ("F", "H"),
    "transformer.h.{i}.mlp.w1.weight": ("F", "H"),
    "transformer.h.{i}.mlp.c_proj.weight": ("H", "F"),
    "transformer.ln_f.weight": ("H",),
    "lm_head.weight": ("V", "H"),
}

# Buffers some Qwen files carry that are not weights: recomputed by any runtime, never copied.
DROPPED = [re.compile(p) for p in (
    r"^transformer\.h\.\d+\.attn\.(masked_bias|bias)$",
    r"(^|\.)rotary_emb\.inv_freq$",
    r"(^|\.)logn_tensor$",
)]


def _pattern(template: str) -> re.Pattern:
    return re.compile("^" + re.escape(template).replace(r"\{i\}", r"(\d+)") + "$")


PATTERNS = [(_pattern(name), name) for name in TENSOR_MAP]


def match(qwen_name: str) -> tuple[str, int | None] | None:
    """(table key, layer index or None) for a Qwen tensor name, or None if the table lacks it."""
    for pattern, key in PATTERNS:
        m = pattern.match(qwen_name)
        if m:
            return key, int(m.group(1)) if m.groups() else None
    return None


def is_dropped(qwen_name: str) -> bool:
    return any(p.search(qwen_name) for p in DROPPED)
