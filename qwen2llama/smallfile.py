"""The one bounded reader for the small files a run reads (configs, indexes, vocabularies, prompt
sets, jobs files): only a regular file, never more than its kind's limit, read incrementally — a
FIFO, a device such as /dev/zero or a huge file is refused within the limit, never read to the end."""
from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import InputError

MB = 1 << 20
# the largest file of each kind that is read whole (real files are far below: Qwen's config.json is
# 1 KB, its qwen.tiktoken 2.5 MB, the 72B shard index 70 KB)
LIMITS = {"config": 4 * MB, "index": 64 * MB, "vocabulary": 64 * MB, "prompts": 8 * MB, "jobs": 8 * MB}


def read_small(path: str | Path, kind: str, *, fix: str) -> bytes:
    """The bytes of `path`, a regular file of at most LIMITS[kind] bytes; else InputError naming it.
    OSError (missing, unreadable) passes through for the caller's own message."""
    limit = LIMITS[kind]
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block the open
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InputError(f"{Path(path).name} is not a regular file (a FIFO, a device or a folder)",
                             path=path, fix=fix)
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(fd, min(MB, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    finally:
        os.close(fd)
    if total > limit:
        raise InputError(f"{Path(path).name} is larger than {limit // MB} MB, the limit for a {kind} file",
                         path=path, fix=fix)
    return b"".join(chunks)


def read_small_text(path: str | Path, kind: str, *, fix: str) -> str:
    """read_small, decoded as UTF-8 (UnicodeDecodeError, a ValueError, for the caller)."""
    return read_small(path, kind, fix=fix).decode("utf-8")
