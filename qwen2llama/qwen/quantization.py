"""A Qwen v1 GPTQ release's quantization settings, from `config.json`'s `quantization_config`
and/or `quantize_config.json` (AutoGPTQ writes the second; the releases carry both).

Only what the conversion is exact for is accepted: GPTQ, 4 or 8 bits, AutoGPTQ's original
checkpoint format (zero points stored minus one), block linears only. Anything else is bad
input with a message saying what is supported, never a silent mis-split.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..jsonfile import read_object
from ..schemas import GptqConfig, validated

BITS = (4, 8)
SUPPORTED = ("GPTQ with bits 4 or 8, any group_size (or -1), desc_act true or false, AutoGPTQ's original "
             "checkpoint format, lm_head not quantized (every Qwen v1 Int4/Int8 release)")
# The keys a LLaMA GPTQ config carries over, from the top level (AutoGPTQ) or gptqmodel's `meta`;
# the rest describe the old folder (model_name_or_path, model_file_base_name) or are refused by
# current loaders (AutoGPTQ 0.7's `is_marlin_format: false`: gptqmodel 7.7 will not load it).
KEPT = ("bits", "group_size", "damp_percent", "desc_act", "static_groups", "sym", "true_sequential")
CARRIED = ("meta", "pack_dtype")  # gptqmodel's, kept as written


@dataclass(frozen=True)
class GptqSettings:
    bits: int
    group_size: int  # -1: one group per input dimension
    desc_act: bool
    sym: bool
    raw: dict  # the settings as found, for the output config
    path: Path  # where they were read

    @property
    def pack(self) -> int:
        """Values per int32 word."""
        return 32 // self.bits

    def groups(self, inputs: int) -> int:
        return 1 if self.group_size == -1 else inputs // self.group_size

    def output_config(self) -> dict:
        """quantization_config for the LLaMA folder: the same settings, nothing Qwen-specific."""
        meta = self.raw.get("meta") if isinstance(self.raw.get("meta"), dict) else {}
        out = {k: self.raw.get(k, meta.get(k)) for k in KEPT if k in self.raw or k in meta}
        out.update({k: self.raw[k] for k in CARRIED if k in self.raw})
        return {**out, "bits": self.bits, "group_size": self.group_size, "desc_act": self.desc_act,
                "sym": self.sym, "quant_method": "gptq", "checkpoint_format": "gptq"}


def _unsupported(what: str, path: Path) -> InputError:
    return InputError(f"unsupported quantization: {what}", path=path, fix=f"qwen2llama converts {SUPPORTED}")


def _parse(raw: dict, path: Path) -> GptqSettings:
    method = str(raw.get("quant_method", "gptq")).lower()
    if method != "gptq":
        raise _unsupported(f"quant_method {method!r}", path)
    validated(GptqConfig, raw, path, fix="restore the settings the quantizer wrote", where=f"{path.name}: ")
    fmt = str(raw.get("checkpoint_format", raw.get("format", "gptq"))).lower()
    if fmt != "gptq":
        raise _unsupported(f"checkpoint_format {fmt!r} (not AutoGPTQ's original packing)", path)
    if raw.get("is_marlin_format"):
        raise _unsupported("is_marlin_format true (Marlin's repacked layout)", path)
    bits = raw.get("bits")
    if bits not in BITS:
        raise _unsupported(f"bits {bits!r}", path)
    group = raw.get("group_size", -1)
    if isinstance(group, bool) or not isinstance(group, int) or (group <= 0 and group != -1):
        raise _unsupported(f"group_size {group!r}", path)
    if raw.get("lm_head") or raw.get("quant_lm_head"):
        raise _unsupported("a quantized lm_head", path)
    return GptqSettings(bits, group, bool(raw.get("desc_act", False)), bool(raw.get("sym", True)), raw, path)


def read_quantization(folder: Path, config: dict) -> GptqSettings | None:
    """The settings, None for a dense checkpoint; both sources present must agree."""
    found = []
    if isinstance(config.get("quantization_config"), dict):
        found.append(_parse(config["quantization_config"], folder / "config.json"))
    path = folder / "quantize_config.json"
    if path.is_file():
        found.append(_parse(read_object(path, fix="restore it from the checkpoint"), path))
    if len(found) == 2:
        a, b = found
        if (a.bits, a.group_size, a.desc_act, a.sym) != (b.bits, b.group_size, b.desc_act, b.sym):
            raise InputError(f"config.json says bits {a.bits}, group_size {a.group_size}, desc_act "
                             f"{a.desc_act}; "
                             f"quantize_config.json says bits {b.bits}, group_size {b.group_size}, "
                             f"desc_act {b.desc_act}", path=folder,
                             fix="keep the settings the weights were quantized with")
    return found[0] if found else None
