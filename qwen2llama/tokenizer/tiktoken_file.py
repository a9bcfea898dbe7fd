"""Read and validate `qwen.tiktoken`: one `base64(bytes) rank` line per regular token."""
from __future__ import annotations

import binascii
from functools import lru_cache
from pathlib import Path

from ..smallfile import read_small
from ..errors import InputError

FIX = "use the unmodified qwen.tiktoken that came with the checkpoint"


def read_tiktoken(path: str | Path) -> list[bytes]:
    """Token bytes indexed by rank. Ranks must be exactly 0..N-1, tokens distinct, and every
    single byte present (byte-level BPE must be able to spell any input). Parsed once per file
    version in a process (a batch of one base, verify after convert)."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as exc:
        raise InputError(f"cannot read the vocabulary ({exc.strerror})", path=path, fix=FIX) from None
    return list(_parsed(str(path), stat.st_size, stat.st_mtime_ns))


def _line(line: bytes, lineno: int, path: Path) -> tuple[bytes, int]:
    """(token, rank) of one `base64 rank` line."""
    fields = line.split()
    if len(fields) != 2 or not fields[1].isdigit():
        raise InputError(f"line {lineno}: expected 'base64 rank', got {line[:60]!r}", path=path, fix=FIX)
    try:
        token = binascii.a2b_base64(fields[0], strict_mode=True)
    except (binascii.Error, ValueError):
        raise InputError(f"line {lineno}: bad base64 {fields[0][:40]!r}", path=path, fix=FIX) from None
    if not token:
        raise InputError(f"line {lineno}: empty token", path=path, fix=FIX)
    return token, int(fields[1])


@lru_cache(maxsize=4)
def _parsed(name: str, size: int, mtime_ns: int) -> tuple[bytes, ...]:
    path = Path(name)
    try:
        data = read_small(path, "vocabulary", fix=FIX)
    except OSError as exc:
        raise InputError(f"cannot read the vocabulary ({exc.strerror})", path=path, fix=FIX) from None
    by_rank: dict[int, bytes] = {}
    seen: dict[bytes, int] = {}
    for lineno, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        token, rank = _line(line, lineno, path)
        if rank in by_rank:
            raise InputError(f"line {lineno}: rank {rank} appears twice", path=path, fix=FIX)
        if token in seen:
            raise InputError(f"line {lineno}: token {token!r} already has rank {seen[token]}", path=path,
                             fix=FIX)
        by_rank[rank] = token
        seen[token] = rank
    if not by_rank:
        raise InputError("the vocabulary is empty", path=path, fix=FIX)
    for expected, rank in enumerate(sorted(by_rank)):
        if rank != expected:
            raise InputError(f"ranks jump from {expected - 1} to {rank}: rank {expected} is missing",
                             path=path, fix=FIX)
    missing = [b for b in range(256) if bytes([b]) not in seen]
    if missing:
        raise InputError(f"single-byte tokens missing for bytes {missing[:8]}", path=path, fix=FIX)
    return tuple(by_rank[r] for r in range(len(by_rank)))
