"""The conversion pipeline, callable without the CLI, in two steps.

`prepare(src, options, out)` reads metadata only and does every check (the plan, the shards,
chat or base, the vocabulary, the output location); `write(prepared)` executes it into a
staging folder and publishes it as `out`. `convert()` is both in one call.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import manifest
from .llama.generation import generation_config
from .llama.shards import parse_size, plan_shards, shard_names
from .llama.writer import ShardWriter
from .context import Context, context_for
from .inventory import CARRIED, Inventory, take_inventory
from .options import ConvertOptions
from .plan import ConversionPlan, build_plan
from .errors import InputError
from .progress import NullProgress, Progress
from .paths import output_path, reads_of
from .interrupts import signals_deferred
from .publish import check_target, fsync_path, staged_folder
from .lora.read import open_adapter
from .qwen.checkpoint import Checkpoint, detect_chat
from .sources import open_source
from .storage import OutputTensor
from .tokenizer import cache as tokenizer_cache
from .tokenizer import read_tiktoken
from .tokenizer.merges import unbuildable_extras
from .tokenizer.job import TokenizerJob


Options = ConvertOptions  # the name this module's API had


@dataclass
class Prepared:
    """Everything known before a byte is written."""

    plan: ConversionPlan
    shards: list[tuple[str, list[OutputTensor]]]
    chat: bool
    chat_reason: str
    vocab: Path
    options: ConvertOptions
    out: Path | None  # None: planned only (inspect)
    adapter: object | None = None  # the QwenAdapter merged in, if any
    reads: list[Path] = field(default_factory=list)  # every path the run reads (paths.py: never written)
    inventory: Inventory | None = None  # every file of the source folder, accounted for
    context: Context | None = None  # --context T: Qwen's RoPE for prompts of T's band (context.py)


def prepare(src: str | Path | Checkpoint, options: ConvertOptions = ConvertOptions(),
            out: str | Path | None = None) -> Prepared:
    """Check the source, the options, the vocabulary and (when given) the output location; plan the output.
    `src` is a folder, a hub id, or a checkpoint already opened with `sources.open_source`."""
    if options.hash not in manifest.HASHES:
        raise InputError(f"unknown --hash {options.hash!r}", fix=f"use one of {', '.join(manifest.HASHES)}")
    ckpt = src if isinstance(src, Checkpoint) else open_source(src, options.base)
    adapter = open_adapter(options.merge_adapter) if options.merge_adapter else None
    plan = build_plan(ckpt, options.dtype, options.dequantize, adapter, options.target)
    groups = plan_shards([t.nbytes for t in plan.tensors], parse_size(options.shard_size))
    shards = [(name, [plan.tensors[i] for i in g]) for name, g in zip(shard_names(len(groups)), groups)]
    chat, reason = detect_chat(ckpt, options.kind)
    vocab = ckpt.vocab
    _check_vocabulary(read_tiktoken(vocab, ckpt.extra_vocab), ckpt)  # every line valid, before writing
    prepared = Prepared(plan, shards, chat, reason, vocab, options, None, adapter,
                        reads_of(ckpt, adapter, options.base), take_inventory(ckpt, options.ignore),
                        context_for(ckpt.config, options.context, ckpt.folder / "config.json"))
    return prepared if out is None else bind_output(prepared, out, force=options.force)


def _check_vocabulary(vocabulary, ckpt: Checkpoint) -> None:
    """An extension's ids must be rows of the embedding (Qwen pads it to 151936 or 152064), and
    each new token a merge of two lower-ranked ones, or no rebuilt tokenizer can give Qwen's ids."""
    if not vocabulary.extra:
        return
    where = ckpt.extra_vocab or ckpt.vocab
    if max(vocabulary.extra) >= ckpt.config.vocab_rows:
        raise InputError(f"the extended vocabulary reaches id {max(vocabulary.extra)}, but the embedding has "
                         f"{ckpt.config.vocab_rows} rows", path=where,
                         fix="use the vocabulary the model was trained with (its embedding holds every id)")
    unreachable = unbuildable_extras(vocabulary, vocabulary.extra)
    if unreachable:
        shown = ", ".join(map(repr, unreachable[:3]))
        raise InputError(f"{len(unreachable)} extra tokens no BPE merge forms ({shown}...): Qwen's tiktoken "
                         "emits them only as whole words, which a tokenizer rebuilt from vocab.json and "
                         "merges.txt (transformers 5) cannot", path=where,
                         fix="build the extension as Qwen's example does: each new token a join of two "
                             "tokens the vocabulary has, that BPE merges")


def bind_output(prepared: Prepared, out: str | Path, *, force: bool = False) -> Prepared:
    """The same plan, to be written to `out` (checked: see publish.check_target)."""
    out = output_path(out)
    check_target(out, force=force, protect=prepared.reads)
    return replace(prepared, out=out, options=replace(prepared.options, force=force))


def _write_files(prepared: Prepared, folder: Path, progress: Progress) -> dict:
    """Every output file into `folder` (an empty staging folder); returns the manifest."""
    digests, tokenizer_stats = _write_weights(prepared, folder, progress)
    _write_configs(prepared, folder)
    for path in sorted(folder.iterdir()):
        if path.name not in digests:
            digests[path.name] = manifest.hash_file(path, prepared.options.hash)
        fsync_path(path)
    sizes = {name: (folder / name).stat().st_size for name in digests}
    record = manifest.build(prepared, tokenizer_stats, digests, sizes)
    manifest.write_json(folder / manifest.NAME, record)
    fsync_path(folder / manifest.NAME)
    return record


def _write_weights(prepared: Prepared, folder: Path, progress: Progress) -> tuple[dict, dict]:
    """The weight shards (digests by file name) and, beside them in a child process or from the
    cache, the tokenizer files (their statistics)."""
    plan, cfg = prepared.plan, prepared.plan.checkpoint.config
    digests: dict[str, str | None] = {}
    extra = plan.checkpoint.extra_vocab
    max_length = prepared.context.tokens if prepared.context else cfg.seq_length
    cache_key = tokenizer_cache.key(prepared.vocab, prepared.chat, max_length, extra)
    cached = tokenizer_cache.lookup(cache_key)
    with signals_deferred():  # a child started but not yet recorded would outlive a Ctrl-C
        tokenizer_job = None if cached else TokenizerJob(prepared.vocab, folder, prepared.chat,
                                                         max_length, extra)
    try:
        progress.start("weights", plan.total_bytes)
        for name, tensors in prepared.shards:
            writer = ShardWriter(folder / name, progress.advance,
                                 hash=prepared.options.hash if prepared.options.checksums else None)
            digests[name] = writer.write(tensors)
        progress.finish()
        if cached:
            tokenizer_cache.copy_into(cached[0], folder)
            return digests, cached[1]
        tokenizer_stats = tokenizer_job.result()
        tokenizer_cache.store(cache_key, folder, tokenizer_stats)
        return digests, tokenizer_stats
    except BaseException:
        # also while waiting for the child: it must be gone before the staging folder is removed,
        # or it writes into a folder being deleted and leaves it behind
        if tokenizer_job is not None:
            with signals_deferred():
                tokenizer_job.cancel()
        raise


def _write_configs(prepared: Prepared, folder: Path) -> None:
    """The shard index, config.json (the target's, with the format's entries), the format's own files,
    generation_config.json and the copied license files."""
    plan, ckpt = prepared.plan, prepared.plan.checkpoint
    if len(prepared.shards) > 1:
        index = {"metadata": {"total_size": plan.total_bytes},
                 "weight_map": dict(sorted((t.name, n) for n, ts in prepared.shards for t in ts))}
        manifest.write_json(folder / "model.safetensors.index.json", index)
    config = plan.target.config(ckpt.config, plan.dtype, prepared.chat, plan.mlp_bias, prepared.context)
    config |= plan.fmt.output_config()
    for name, content in plan.fmt.output_files().items():
        manifest.write_json(folder / name, content)
    manifest.write_json(folder / "config.json", config)
    manifest.write_json(folder / "generation_config.json",
                        generation_config(prepared.chat, ckpt.generation_config()))
    for name in CARRIED:
        if name in ckpt.companions:
            shutil.copyfile(ckpt.companions[name], folder / name)


def write(prepared: Prepared, *, progress: Progress | None = None, before_publish=None) -> dict:
    """Write the prepared conversion into a staging folder and publish it; returns the manifest.

    `before_publish(staging_folder)` runs on the complete staging folder (the CLI verifies
    there); raising from it leaves the output untouched.
    """
    if prepared.out is None:
        raise ValueError("prepare() was called without an output folder")
    with staged_folder(prepared.out, force=prepared.options.force, protect=prepared.reads) as staging:
        record = _write_files(prepared, staging, progress or NullProgress())
        if before_publish is not None:
            before_publish(staging)
    return record


def convert(src: str | Path, out: str | Path, *, progress: Progress | None = None, before_publish=None,
            **options) -> dict:
    """Convert the Qwen checkpoint in `src` into a folder `out` (options: see `ConvertOptions`)."""
    return write(prepare(src, ConvertOptions(**options), out), progress=progress,
                 before_publish=before_publish)
