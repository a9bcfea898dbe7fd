"""Converting a PEFT LoRA adapter: `prepare_adapter` reads metadata and checks everything (the
factors, the settings, the base it was trained on, the output location); `write_adapter`
streams the tensors into a staging folder and publishes it, like a model conversion.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .. import manifest
from ..errors import InputError
from .mapping import adapter_outputs, check_base, module_at
from ..layout import name_at
from ..llama.writer import ShardWriter
from ..progress import NullProgress, Progress
from ..paths import output_path, reads_of, real
from ..publish import check_target, fsync_path, staged_folder
from .read import QwenAdapter, open_adapter
from ..qwen.checkpoint import Checkpoint
from ..sources import open_source
from ..storage import OutputTensor

WEIGHTS = "adapter_model.safetensors"
LAYERS_PATTERN = {"h": "layers"}  # Qwen's blocks are transformer.h, LLaMA's model.layers


@dataclass
class PreparedAdapter:
    adapter: QwenAdapter
    tensors: list[OutputTensor]
    config: dict  # the converted adapter_config.json
    base: Checkpoint | None
    out: Path | None
    force: bool = False
    hash: str = "blake3"
    reads: list[Path] = field(default_factory=list)  # what the run reads, and other outputs (paths.py)


def llama_adapter_config(adapter: QwenAdapter, base_name: str | None) -> dict:
    """adapter_config.json for the LLaMA layout: targets, saved modules, per-module rank and alpha
    renamed through the table; every other setting carried over."""
    cfg = dict(adapter.config)
    targets: set[str] = set()
    rank_pattern, alpha_pattern = {}, {}
    for path, f in adapter.factors.items():
        module, layer = module_at(path)
        for split in module.into:
            llama = name_at(split.llama, layer)
            targets.add(llama.rsplit(".", 1)[1])
            if f.rank != cfg["r"]:
                rank_pattern[llama] = f.rank
            if f.alpha != cfg["lora_alpha"]:
                alpha_pattern[llama] = f.alpha
    saved = sorted({name_at(s.llama, layer).rsplit(".", 1)[-1]
                    for name in adapter.saved for module, layer in [module_at(name.rpartition(".")[0])]
                    for s in module.into})
    cfg.update(target_modules=sorted(targets), modules_to_save=saved or None, rank_pattern=rank_pattern,
               alpha_pattern=alpha_pattern, auto_mapping=None)
    if cfg.get("layers_pattern") is not None:
        cfg["layers_pattern"] = LAYERS_PATTERN.get(cfg["layers_pattern"], cfg["layers_pattern"])
    if base_name is not None:
        cfg["base_model_name_or_path"] = base_name
    return cfg


def prepare_adapter(src: str | Path, out: str | Path | None = None, *,
                    base: str | Path | Checkpoint | None = None,
                    base_name: str | None = None, force: bool = False, hash: str = "blake3",
                    protect: list[Path] = ()) -> PreparedAdapter:
    """Every check before writing. `protect`: more paths the output must keep clear of (the
    converted base it is verified on, the model folder the same run writes)."""
    if hash not in manifest.HASHES:
        raise InputError(f"unknown --hash {hash!r}", fix=f"use one of {', '.join(manifest.HASHES)}")
    adapter = open_adapter(src)
    ckpt = base if isinstance(base, Checkpoint) or base is None else open_source(base)
    if ckpt is not None:
        check_base(adapter, ckpt)
    prepared = PreparedAdapter(adapter, adapter_outputs(adapter), llama_adapter_config(adapter, base_name),
                               ckpt, None, force, hash, reads_of(adapter, ckpt) + [real(p) for p in protect])
    if out is not None:
        prepared.out = output_path(out)
        check_target(prepared.out, force=force, protect=prepared.reads)
    return prepared


def _manifest(prepared: PreparedAdapter, digests: dict, sizes: dict) -> dict:
    a = prepared.adapter
    source = {"folder": str(a.folder.resolve()), "format": a.format,
              "files": {p.name: p.stat().st_size for p in a.files}, "config": a.config,
              "base": str(prepared.base.folder) if prepared.base else None}
    target = {"modules": len(a.factors), "saved_tensors": len(a.saved), "tensors": len(prepared.tensors),
              "target_modules": prepared.config["target_modules"]}
    return manifest.record(source, target, hash=prepared.hash, digests=digests, sizes=sizes,
                           fingerprint=manifest.adapter_fingerprint(prepared), kind="adapter")


def write_adapter(prepared: PreparedAdapter, *, progress: Progress | None = None,
                  before_publish=None) -> dict:
    """Write the converted adapter into a staging folder and publish it; returns its manifest.
    `before_publish(staging)` runs on the complete folder (the CLI verifies there)."""
    if prepared.out is None:
        raise ValueError("prepare_adapter() was called without an output folder")
    progress = progress or NullProgress()
    with staged_folder(prepared.out, force=prepared.force, protect=prepared.reads) as staging:
        progress.start("adapter", sum(t.nbytes for t in prepared.tensors))
        digests = {WEIGHTS: ShardWriter(staging / WEIGHTS, progress.advance,
                                        hash=prepared.hash).write(prepared.tensors)}
        progress.finish()
        manifest.write_json(staging / "adapter_config.json", prepared.config)
        digests["adapter_config.json"] = manifest.hash_file(staging / "adapter_config.json", prepared.hash)
        for name in digests:
            fsync_path(staging / name)
        record = _manifest(prepared, digests, {name: (staging / name).stat().st_size for name in digests})
        manifest.write_json(staging / manifest.NAME, record)
        fsync_path(staging / manifest.NAME)
        if before_publish is not None:
            before_publish(staging)
    return record


def convert_adapter_unverified(src: str | Path, out: str | Path, **options) -> dict:
    """Convert the PEFT adapter in `src` into a LLaMA-layout adapter in `out` (see prepare_adapter)."""
    return write_adapter(prepare_adapter(src, out, **options))
