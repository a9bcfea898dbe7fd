"""PEFT LoRA adapters for synthesized Qwen bases, laid out as PEFT 0.21's save_pretrained writes
them (`base_model.model.<module>.lora_A.weight` ...; modules_to_save as
`base_model.model.<module>.weight`). `B` is random and non-zero, unlike a fresh PEFT adapter,
so that the adapter changes the logits and a dropped or misplaced factor shows.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from ..errors import InputError, OutputError
from ..qwen.checkpoint import open_checkpoint
from ..storage import read_ref

LINEARS = ("attn.c_attn", "attn.c_proj", "mlp.w1", "mlp.w2", "mlp.c_proj")
SAVED = {"wte": "transformer.wte.weight", "lm_head": "lm_head.weight", "ln_f": "transformer.ln_f.weight"}


def _targeted(targets: list[str], layers: int, only: list[int] | None) -> list[str]:
    """Qwen module paths PEFT would adapt: a target matches a path it ends after a dot."""
    paths = [f"transformer.h.{i}.{m}" for i in range(layers) if only is None or i in only for m in LINEARS]
    return [p for p in paths if any(p == t or p.endswith("." + t) for t in targets)]


def synthesize_adapter(out: str | Path, base: str | Path, *, targets: tuple[str, ...] = ("c_attn",),
                       r: int = 8, alpha: float = 16, rslora: bool = False, dora: bool = False,
                       modules_to_save: tuple[str, ...] = (), rank_pattern: dict | None = None,
                       alpha_pattern: dict | None = None, layers_to_transform: list[int] | None = None,
                       fmt: str = "safetensors", seed: int = 0) -> Path:
    """Write a PEFT adapter for the Qwen checkpoint `base`; returns its folder."""
    import torch

    out, ckpt = Path(out), open_checkpoint(base)
    if ckpt.quantization is not None:
        raise InputError("synthesized adapters are for dense bases", path=base,
                         fix="give a dense Qwen checkpoint")
    if out.exists() and any(out.iterdir()):
        raise OutputError("the output folder exists and is not empty", path=out, fix="choose a new folder")
    unknown = [m for m in modules_to_save if m not in SAVED]
    if unknown:
        raise InputError(f"modules_to_save {unknown}", fix=f"choose from {', '.join(SAVED)}")
    gen = torch.Generator().manual_seed(seed)
    config = {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "lora_dropout": 0.05,
              "target_modules": list(targets),
              "modules_to_save": list(modules_to_save) or None, "use_rslora": rslora, "use_dora": dora,
              "rank_pattern": rank_pattern or {}, "alpha_pattern": alpha_pattern or {},
              "fan_in_fan_out": False,
              "bias": "none", "layers_to_transform": layers_to_transform,
              "layers_pattern": "h" if layers_to_transform is not None else None, "init_lora_weights": True,
              "inference_mode": True, "task_type": "CAUSAL_LM", "base_model_name_or_path": str(ckpt.folder),
              "revision": None, "peft_version": "0.21.2"}
    tensors: dict[str, "torch.Tensor"] = {}
    for path in _targeted(list(targets), ckpt.config.num_layers, layers_to_transform):
        tensors.update(_factors(path, read_ref(ckpt.tensors[f"{path}.weight"]).float(), config, gen))
    if not tensors:
        raise InputError(f"target_modules {list(targets)} match no Qwen linear",
                         fix="use c_attn, c_proj, w1, w2 (or full module names)")
    for name in modules_to_save:
        base_t = read_ref(ckpt.tensors[SAVED[name]])
        tensors[f"base_model.model.{SAVED[name]}"] = (base_t.float() + 0.05 * torch.randn(
            base_t.shape, generator=gen)).to(base_t.dtype)
    _save(out, config, tensors, fmt)
    return out


def _factors(path: str, weight, config: dict, gen) -> dict:
    """A module's random A and non-zero B (and a DoRA magnitude near the merged weight's norm)."""
    import torch

    from ..lora.read import pattern_value

    rank = pattern_value(config["rank_pattern"], path, config["r"])
    a = torch.randn(rank, weight.shape[1], generator=gen) / math.sqrt(weight.shape[1])
    b = torch.randn(weight.shape[0], rank, generator=gen) * (0.5 / math.sqrt(rank))
    out = {f"base_model.model.{path}.lora_A.weight": a, f"base_model.model.{path}.lora_B.weight": b}
    if config["use_dora"]:
        a_scale = pattern_value(config["alpha_pattern"], path, config["lora_alpha"])
        s = a_scale / math.sqrt(rank) if config["use_rslora"] else a_scale / rank
        norm = (weight + s * b @ a).norm(dim=1)
        out[f"base_model.model.{path}.lora_magnitude_vector"] = norm * (1 + 0.1 * torch.randn(
            norm.shape, generator=gen))
    return out


def _save(out: Path, config: dict, tensors: dict, fmt: str) -> None:
    import torch

    out.mkdir(parents=True, exist_ok=True)
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({n: t.contiguous() for n, t in tensors.items()}, str(out / "adapter_model.safetensors"),
                  metadata={"format": "pt"})
    elif fmt == "bin":
        torch.save(tensors, out / "adapter_model.bin")
    else:
        raise InputError(f"unknown format {fmt!r}", fix="use safetensors or bin")

