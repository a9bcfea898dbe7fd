"""Read and validate `qwen.tiktoken`: one `base64(bytes) rank` line per regular token."""
from __future__ import annotations

import binascii
from functools import lru_cache
from pathlib import Path

from ..smallfile import read_small
from ..errors import InputError
from ..tokens import N_REGULAR, VOCAB_SIZE

FIX = "use the qwen.tiktoken that came with the checkpoint (a fine-tune's extended one is fine)"
EXTRA_FIX = "use the extra vocabulary file the fine-tune was trained with (extra_vocab_file)"


class Vocabulary(list):
    """The regular tokens by rank (a list, as before), plus a fine-tune's extension: `extra`, id ->
    token for the ranks past the special tokens (from 151851 up), and `skipped`, the extension's
    lines that Qwen's tokenizer leaves out (a token it already has, or an id already used)."""

    def __init__(self, regular, extra: dict[int, bytes] | None = None, skipped: list[str] | None = None):
        super().__init__(regular)
        self.extra = dict(extra or {})
        self.skipped = list(skipped or [])


def read_tiktoken(path: str | Path, extra: str | Path | None = None) -> Vocabulary:
    """Token bytes indexed by rank. Ranks must be exactly 0..N-1, tokens distinct, and every
    single byte present (byte-level BPE must be able to spell any input). Ranks from 151851 up are
    an extension (Qwen's `save_vocabulary` writes a fine-tune's tokens there); `extra` is an
    `extra_vocab_file`, merged as Qwen's tokenizer merges it (see `extend`). Parsed once per file
    version in a process (a batch of one base, verify after convert)."""
    regular, ranked = _read(path)
    vocabulary = Vocabulary(regular, dict(ranked))
    return vocabulary if extra is None else extend(vocabulary, _read_file(extra), Path(extra))


def extend(vocabulary: Vocabulary, lines: tuple[tuple[int, bytes], ...], path: Path) -> Vocabulary:
    """Qwen's rule for an extra vocabulary, in the file's order: a token it already has is
    skipped, so is a rank that a regular or special token uses; the rest are added. Its own
    tokenizer then requires the ids to run on from 151851 without a gap (its vocabulary size check),
    and so does this one."""
    have = set(vocabulary) | set(vocabulary.extra.values())
    used = set(range(len(vocabulary))) | set(range(N_REGULAR, VOCAB_SIZE)) | set(vocabulary.extra)
    extra, skipped = dict(vocabulary.extra), list(vocabulary.skipped)
    for rank, token in lines:
        if token in have:
            skipped.append(f"{token!r} (rank {rank}): the vocabulary has this token already")
        elif rank in used:
            skipped.append(f"{token!r} (rank {rank}): the id is a regular or special token's")
        else:
            extra[rank] = token
            have.add(token)
    _check_run(extra, path)
    return Vocabulary(vocabulary, extra, skipped)


def _check_run(extra: dict[int, bytes], path: Path) -> None:
    ids = sorted(extra)
    if ids and ids != list(range(VOCAB_SIZE, VOCAB_SIZE + len(ids))):
        gap = next(i for k, i in enumerate(ids) if i != VOCAB_SIZE + k)
        raise InputError(f"the extra tokens take ids {ids[0]}..{ids[-1]} with a gap at {gap}: Qwen's "
                         f"tokenizer requires them to run on from {VOCAB_SIZE} without one", path=path,
                         fix="number the extra tokens from 151851 up, one rank each")


def _read(path: str | Path) -> tuple[tuple[bytes, ...], tuple[tuple[int, bytes], ...]]:
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as exc:
        raise InputError(f"cannot read the vocabulary ({exc.strerror})", path=path, fix=FIX) from None
    return _parsed(str(path), stat.st_size, stat.st_mtime_ns)


def _read_file(path: str | Path) -> tuple[tuple[int, bytes], ...]:
    """An extra vocabulary's (rank, token) lines, in the file's order."""
    path = Path(path)
    try:
        data = read_small(path, "vocabulary", fix=EXTRA_FIX)
    except OSError as exc:
        raise InputError(f"cannot read the extra vocabulary ({exc.strerror})", path=path,
                         fix=EXTRA_FIX) from None
    return tuple((rank, token) for token, rank in _lines(data, path))


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


def _lines(data: bytes, path: Path):
    """(token, rank) of every line, ranks and tokens each distinct."""
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
        yield token, rank


@lru_cache(maxsize=4)
def _parsed(name: str, size: int, mtime_ns: int) -> tuple[tuple[bytes, ...], tuple[tuple[int, bytes], ...]]:
    """(regular tokens by rank, (id, token) of an extension saved into the file)."""
    path = Path(name)
    try:
        data = read_small(path, "vocabulary", fix=FIX)
    except OSError as exc:
        raise InputError(f"cannot read the vocabulary ({exc.strerror})", path=path, fix=FIX) from None
    by_rank = {rank: token for token, rank in _lines(data, path)}
    if not by_rank:
        raise InputError("the vocabulary is empty", path=path, fix=FIX)
    regular = [r for r in by_rank if r < VOCAB_SIZE]
    for expected, rank in enumerate(sorted(regular)):
        if rank != expected:
            raise InputError(f"ranks jump from {expected - 1} to {rank}: rank {expected} is missing (ranks "
                             f"from {VOCAB_SIZE} up are a fine-tune's extension; below that they run on)",
                             path=path, fix=FIX)
    if len(regular) > N_REGULAR and len(regular) != len(by_rank):
        raise InputError(f"the vocabulary has {len(regular)} regular tokens and an extension: the ids "
                         f"{N_REGULAR}..{VOCAB_SIZE - 1} belong to the special tokens", path=path, fix=FIX)
    missing = [b for b in range(256) if bytes([b]) not in by_rank.values()]
    if missing:
        raise InputError(f"single-byte tokens missing for bytes {missing[:8]}", path=path, fix=FIX)
    extra = {r: by_rank[r] for r in sorted(by_rank) if r >= VOCAB_SIZE}
    _check_run(extra, path)
    return tuple(by_rank[r] for r in range(len(regular))), tuple(extra.items())
