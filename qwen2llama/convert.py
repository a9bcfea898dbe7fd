"""The conversion pipeline: read -> plan -> write (staged) -> publish. Callable without the CLI."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .dtypes import NAME_OF
from .errors import InputError, OutputError
from .llama.config import generation_config, llama_config
from .llama.shards import parse_size, plan_shards, shard_names
from .llama.writer import ShardWriter
from .plan import ConversionPlan, OutputTensor, build_plan
from .progress import NullProgress, Progress
from .publish import fsync_path, staged_folder
from .qwen.checkpoint import Checkpoint, open_checkpoint
from .tokenizer import read_tiktoken

MANIFEST = "conversion.json"
COPIED_FILES = ("LICENSE", "NOTICE")


@dataclass
class ShardedPlan:
    plan: ConversionPlan
    shards: list[tuple[str, list[OutputTensor]]]
    chat: bool
    chat_reason: str


def _source_generation(ckpt: Checkpoint) -> dict | None:
    path = ckpt.folder / "generation_config.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise InputError("generation_config.json is not valid JSON", path=path,
                         fix="restore it from the checkpoint, or delete it") from None
    return data if isinstance(data, dict) else None


def detect_chat(ckpt: Checkpoint, kind: str = "auto") -> tuple[bool, str]:
    """Chat models stop on <|im_end|>. Qwen's generation_config says which kind it is."""
    if kind in ("chat", "base"):
        return kind == "chat", f"--kind {kind}"
    if kind != "auto":
        raise InputError(f"unknown --kind {kind!r}", fix="use auto, chat or base")
    fmt = (_source_generation(ckpt) or {}).get("chat_format")
    if fmt == "chatml":
        return True, "generation_config.json chat_format=chatml"
    if fmt == "raw":
        return False, "generation_config.json chat_format=raw"
    return True, "no chat_format in the source; assumed chat so generation also stops at <|im_end|>"


def prepare(src: str | Path, *, shard_size: str | int = "5GB", dtype: str | None = None,
            kind: str = "auto") -> ShardedPlan:
    """Everything that can be known and checked before writing: the plan and its shards."""
    ckpt = open_checkpoint(src)
    plan = build_plan(ckpt, dtype)
    limit = parse_size(shard_size)
    groups = plan_shards([t.nbytes for t in plan.tensors], limit)
    names = shard_names(len(groups))
    chat, reason = detect_chat(ckpt, kind)
    return ShardedPlan(plan, [(n, [plan.tensors[i] for i in g]) for n, g in zip(names, groups)], chat, reason)


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


class _TokenizerProcess:
    """The tokenizer files, written by a child process while the weights are copied."""

    def __init__(self, vocab: Path, folder: Path, chat: bool, model_max_length: int):
        self.folder = folder
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "qwen2llama.tokenizer", str(vocab), str(folder), "chat" if chat else "base",
             str(model_max_length)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def result(self) -> dict:
        out, err = self.proc.communicate()
        if self.proc.returncode:
            last = (err.strip().splitlines() or ["no message"])[-1]
            raise OutputError(f"writing the tokenizer files failed: {last}"[:400], path=self.folder,
                              fix="free disk space or choose another output folder (--debug for details)")
        return json.loads(out)

    def cancel(self) -> None:
        self.proc.kill()
        self.proc.wait()


def write_model(sp: ShardedPlan, folder: Path, vocab: Path, progress: Progress, checksums: bool = True) -> dict:
    """Write every output file into `folder` (an empty staging folder); returns the manifest."""
    plan, ckpt = sp.plan, sp.plan.checkpoint
    cfg = ckpt.config
    digests: dict[str, str] = {}
    tokenizer_job = _TokenizerProcess(vocab, folder, sp.chat, cfg.seq_length)
    try:
        progress.start("weights", plan.total_bytes)
        for name, tensors in sp.shards:
            digests[name] = ShardWriter(folder / name, progress.advance, checksum=checksums).write(tensors)
        progress.finish()
    except BaseException:
        tokenizer_job.cancel()
        raise
    tok_stats = tokenizer_job.result()
    if len(sp.shards) > 1:
        index = {"metadata": {"total_size": plan.total_bytes},
                 "weight_map": dict(sorted((t.name, n) for n, ts in sp.shards for t in ts))}
        _write_json(folder / "model.safetensors.index.json", index)
    _write_json(folder / "config.json", llama_config(cfg, plan.dtype, sp.chat))
    _write_json(folder / "generation_config.json", generation_config(sp.chat, _source_generation(ckpt)))
    for name in COPIED_FILES:
        if (ckpt.folder / name).is_file():
            shutil.copyfile(ckpt.folder / name, folder / name)
    for path in sorted(folder.iterdir()):
        if path.name not in digests:
            digests[path.name] = sha256_file(path)
        fsync_path(path)
    manifest = {
        "tool": {"name": "qwen2llama", "version": __version__},
        "source": {
            "folder": str(ckpt.folder.resolve()),
            "format": ckpt.format,
            "files": {p.name: p.stat().st_size for p in ckpt.files},
            "config_generation": cfg.generation,
            "config": cfg.to_dict(),
        },
        "target": {"dtype": NAME_OF[plan.dtype], "chat": sp.chat, "chat_reason": sp.chat_reason,
                   "shards": len(sp.shards), "total_bytes": plan.total_bytes},
        "long_context": {
            "use_dynamic_ntk": cfg.use_dynamic_ntk,
            "use_logn_attn": cfg.use_logn_attn,
            "exact_up_to_tokens": cfg.seq_length,
            "max_position_embeddings": cfg.seq_length,
            "reason": ("max_position_embeddings is Qwen's seq_length: up to it Qwen's dynamic NTK and logn "
                       "attention are the identity and the LLaMA model computes the same function; beyond it "
                       "Qwen rescales RoPE and queries, which the LLaMA layout cannot express"
                       if cfg.use_dynamic_ntk or cfg.use_logn_attn else
                       "max_position_embeddings is Qwen's seq_length, the context the model was trained on"),
        },
        "dropped_tensors": plan.dropped,
        "tokenizer": tok_stats,
        "files": dict(sorted(digests.items())),
    }
    _write_json(folder / MANIFEST, manifest)
    fsync_path(folder / MANIFEST)
    return manifest


def convert(src: str | Path, out: str | Path, *, shard_size: str | int = "5GB", dtype: str | None = None,
            kind: str = "auto", force: bool = False, checksums: bool = True, progress: Progress | None = None,
            before_publish=None, prepared: ShardedPlan | None = None) -> dict:
    """Convert the Qwen checkpoint in `src` into a LLaMA folder `out`; returns the manifest.

    `before_publish(staging_folder)` runs on the complete staging folder (the CLI verifies
    there); raising from it leaves `out` untouched. `prepared` is `prepare()`'s result for the
    same arguments, when the caller already has it.
    """
    progress = progress or NullProgress()
    sp = prepared or prepare(src, shard_size=shard_size, dtype=dtype, kind=kind)
    vocab = sp.plan.checkpoint.folder / "qwen.tiktoken"
    if not vocab.is_file():
        raise InputError("no qwen.tiktoken in the checkpoint folder", path=vocab,
                         fix="copy qwen.tiktoken from the model's release into the folder")
    read_tiktoken(vocab)  # validate before anything is written
    with staged_folder(Path(out), force=force, protect=[sp.plan.checkpoint.folder]) as staging:
        manifest = write_model(sp, staging, vocab, progress, checksums)
        if before_publish is not None:
            before_publish(staging)
    return manifest
