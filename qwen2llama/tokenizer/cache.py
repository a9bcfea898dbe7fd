"""Tokenizer files built once per distinct vocabulary and reused: a cache keyed by the vocabulary's
sha256 and everything else that changes the files (chat or base, model_max_length, the tool
version). Each entry records its files' sha256 and is used only if they still match.

The cache lives in $QWEN2LLAMA_TOKENIZER_CACHE (default ~/.cache/qwen2llama/tokenizers); set it to
`off` to build the files every time.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from .. import __version__
from ..storage.digest import sha256_file
from .files import TOKENIZER_FILES

ENV = "QWEN2LLAMA_TOKENIZER_CACHE"
RECORD = "entry.json"


def root() -> Path | None:
    value = os.environ.get(ENV)
    if value == "off":
        return None
    return Path(value) if value else Path.home() / ".cache" / "qwen2llama" / "tokenizers"


def key(vocab: Path, chat: bool, model_max_length: int, extra: Path | None = None) -> str:
    what = {"vocab_sha256": sha256_file(vocab), "chat": chat, "model_max_length": model_max_length,
            "tool_version": __version__}
    if extra is not None:  # an extra vocabulary changes the files: its own entry
        what["extra_vocab_sha256"] = sha256_file(extra)
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:32]


def lookup(entry_key: str) -> tuple[Path, dict] | None:
    """(folder, figures) of a sound cache entry, or None (a damaged entry is removed)."""
    base = root()
    folder = base / entry_key if base else None
    if folder is None or not (folder / RECORD).is_file():
        return None
    try:
        record = json.loads((folder / RECORD).read_text())
        sound = all(sha256_file(folder / name) == digest for name, digest in record["files"].items())
        sound &= set(record["files"]) == set(TOKENIZER_FILES)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        sound = False
    if not sound:
        shutil.rmtree(folder, ignore_errors=True)
        return None
    return folder, record["figures"]


def store(entry_key: str, written: Path, figures: dict) -> None:
    """Copy the tokenizer files just written in `written` into the cache; never fails a conversion."""
    base = root()
    if base is None or (base / entry_key).exists():
        return
    try:
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry_key}-", dir=base))
        files = {}
        for name in TOKENIZER_FILES:
            shutil.copyfile(written / name, tmp / name)
            files[name] = sha256_file(tmp / name)
        (tmp / RECORD).write_text(json.dumps({"files": files, "figures": figures}, indent=2, sort_keys=True))
        try:
            tmp.rename(base / entry_key)
        except OSError:  # another run stored it first
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError:
        pass


def copy_into(folder: Path, out: Path) -> None:
    for name in TOKENIZER_FILES:
        shutil.copyfile(folder / name, out / name)
