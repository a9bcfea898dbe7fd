"""A PEFT LoRA adapter trained on a Qwen v1 model: its settings and where each factor is stored.

PEFT saves `base_model.model.<module>.lora_A.weight` [r, in], `.lora_B.weight` [out, r] (and
with DoRA `.lora_magnitude_vector` [out]) per adapted linear, and `base_model.model.<module>.weight`
for each of `modules_to_save`. ΔW = scaling * B @ A with scaling alpha / r (alpha / sqrt(r) with
rsLoRA), per module when `rank_pattern` / `alpha_pattern` say so. What does not convert exactly
is refused here, with a message saying what is supported.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from ..jsonfile import read_object
from ..schemas import AdapterConfig, validated
from ..storage import TensorRef
from ..storage.weights import read_shards

PREFIX = "base_model.model."
FACTORS = ("lora_A.weight", "lora_B.weight", "lora_magnitude_vector")
FILES = {"safetensors": "adapter_model.safetensors", "bin": "adapter_model.bin"}
SUPPORTED = ("PEFT LoRA (and DoRA) adapters on Qwen v1's block linears (c_attn, c_proj, w1, w2), with "
             "modules_to_save wte / lm_head / norms, rsLoRA, rank and alpha patterns by module name")


@dataclass
class LoraFactors:
    """One adapted Qwen linear: where its factors are, its rank and alpha (after rank_pattern /
    alpha_pattern), and so its ΔW scaling."""

    module: str  # Qwen module path, e.g. transformer.h.0.attn.c_attn
    a: TensorRef
    b: TensorRef
    magnitude: TensorRef | None
    rank: int
    alpha: float
    rslora: bool

    @property
    def scaling(self) -> float:
        return self.alpha / math.sqrt(self.rank) if self.rslora else self.alpha / self.rank


@dataclass
class QwenAdapter:
    folder: Path
    config: dict
    format: str
    files: list[Path]
    factors: dict[str, LoraFactors]  # by Qwen module path
    saved: dict[str, TensorRef] = field(default_factory=dict)  # modules_to_save: Qwen tensor name -> ref

    @property
    def rank(self) -> int:
        return self.config["r"]


def _refuse(what: str, path: Path) -> InputError:
    return InputError(f"unsupported adapter: {what}", path=path, fix=f"qwen2llama converts {SUPPORTED}")


def pattern_value(patterns: dict, module: str, default):
    """PEFT's per-module override: a key matches a module path it ends (after a dot) or equals."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?{key}$", module):
            return value
    return default


def read_adapter_config(folder: Path) -> dict:
    path = folder / "adapter_config.json"
    if not path.is_file():
        raise InputError("no adapter_config.json: not a PEFT adapter folder", path=folder,
                         fix="give the folder PEFT's save_pretrained wrote")
    config = read_object(path, fix="restore it")
    if config.get("peft_type") != "LORA":
        raise _refuse(f"peft_type {config.get('peft_type')!r}", path)
    validated(AdapterConfig, config, path, fix="restore the adapter_config.json PEFT wrote",
              where="adapter_config.json: ")
    if config.get("fan_in_fan_out"):
        raise _refuse("fan_in_fan_out true (Qwen v1's linears are nn.Linear; this adapter was made for "
                      "transposed Conv1D weights)", path)
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        raise _refuse(f"bias {config.get('bias')!r} / lora_bias (trained biases are not LoRA factors)", path)
    if config.get("layer_replication") or config.get("target_parameters"):
        raise _refuse("layer_replication / target_parameters", path)
    layers_given = isinstance(config.get("layers_to_transform"), (int, list))
    if layers_given and config.get("layers_pattern") not in (None, "h"):
        raise _refuse(f"layers_pattern {config.get('layers_pattern')!r}", path)
    return config


def _sorted_tensors(tensors: dict[str, TensorRef]) -> tuple[dict[str, dict[str, TensorRef]], dict]:
    """(LoRA factors by module and factor name, saved whole modules by name)."""
    parts: dict[str, dict[str, TensorRef]] = {}
    saved: dict[str, TensorRef] = {}
    for name, ref in tensors.items():
        if not name.startswith(PREFIX):
            raise _refuse(f"tensor {name} is not under {PREFIX}", ref.file)
        key = name[len(PREFIX):]
        if "lora_embedding" in key:
            raise _refuse(f"LoRA on the embedding ({key})", ref.file)
        factor = next((f for f in FACTORS if key.endswith("." + f)), None)
        if factor is None:
            saved[key] = ref
            continue
        parts.setdefault(key[: -len(factor) - 1], {})[factor] = ref
    return parts, saved


def _factors(module: str, found: dict[str, TensorRef], config: dict, folder: Path) -> LoraFactors:
    """One module's A, B (and DoRA magnitude), with its rank and alpha from the patterns."""
    if "lora_A.weight" not in found or "lora_B.weight" not in found:
        raise InputError(f"{module} has {', '.join(sorted(found))} but not both lora_A and lora_B",
                         path=folder, fix="restore the adapter file")
    a, b = found["lora_A.weight"], found["lora_B.weight"]
    magnitude = found.get("lora_magnitude_vector")
    if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[0] != b.shape[1] or (
            magnitude is not None and magnitude.shape != (b.shape[0],)):
        raise InputError(f"{module}: lora_A {list(a.shape)}, lora_B {list(b.shape)} do not form B @ A",
                         path=a.file, fix="restore the adapter file")
    rank = pattern_value(config.get("rank_pattern") or {}, module, config["r"])
    if a.shape[0] != rank:
        raise InputError(f"{module}: lora_A has rank {a.shape[0]}, adapter_config.json gives {rank}",
                         path=a.file, fix="restore the adapter_config.json that came with the weights")
    if (magnitude is not None) != bool(config.get("use_dora")):
        raise InputError(f"{module}: use_dora is {bool(config.get('use_dora'))} but the magnitude vector is "
                         f"{'present' if magnitude is not None else 'absent'}", path=a.file,
                         fix="restore the adapter_config.json that came with the weights")
    return LoraFactors(module, a, b, magnitude, rank,
                       pattern_value(config.get("alpha_pattern") or {}, module, config["lora_alpha"]),
                       bool(config.get("use_rslora")))


def open_adapter(folder: str | Path) -> QwenAdapter:
    """Index a PEFT adapter folder (metadata only), refusing what cannot be converted exactly."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("the adapter is not a folder", path=folder, fix="give the folder PEFT saved")
    config = read_adapter_config(folder)
    fmt = next((f for f, name in FILES.items() if (folder / name).is_file()), None)
    if fmt is None:
        raise InputError("no adapter_model.safetensors or adapter_model.bin", path=folder,
                         fix="download the adapter weights into this folder")
    parts, saved = _sorted_tensors(read_shards(folder, fmt, [FILES[fmt]]))
    factors = {module: _factors(module, found, config, folder) for module, found in sorted(parts.items())}
    if not factors and not saved:
        raise InputError("the adapter holds no tensors", path=folder, fix="restore the adapter file")
    return QwenAdapter(folder, config, fmt, [folder / FILES[fmt]], factors, saved)
