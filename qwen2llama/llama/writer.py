"""Stream planned tensors into safetensors files: byte ranges in, bytes out, one chunk at a time.

A same-dtype tensor is copied from its source byte range in fixed-size chunks, so memory stays
flat whatever the model size. Every chunk is checked for NaN/Inf on the way (bit tests on the
raw words, no float conversion) and hashed, so the manifest needs no second read.
"""
from __future__ import annotations

import hashlib
import json
import mmap
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np

from ..dtypes import ITEMSIZE
from ..errors import InputError, OutputError
from ..plan import OutputTensor

CHUNK = 16 << 20

# Exponent-all-ones masks: a word matching its mask is NaN or +/-Inf.
_NONFINITE = {"BF16": (np.uint16, 0x7F80), "F16": (np.uint16, 0x7C00), "F32": (np.uint32, 0x7F800000)}

Progress = Callable[[int], None]


def header_bytes(tensors: list[OutputTensor]) -> bytes:
    """The safetensors header for these tensors, in this order, padded to 8 bytes."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for t in tensors:
        header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


def first_nonfinite(buf, dtype: str, scratch: np.ndarray | None = None) -> int | None:
    """Index of the first NaN/Inf element in a raw buffer of `dtype`, or None. `scratch`
    (uint8, at least len(buf)) avoids a fresh allocation, and its page faults, per call."""
    word, mask = _NONFINITE[dtype]
    words = np.frombuffer(buf, dtype=word)
    out = None if scratch is None else scratch[: words.nbytes].view(word)
    exponents = np.bitwise_and(words, mask, out=out)
    if not exponents.size or exponents.max() != mask:
        return None
    return int(np.flatnonzero(exponents == mask)[0])


def _write_all(fd: int, data, path: Path) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except OSError as exc:
            raise OutputError(f"cannot write the output ({exc.strerror})", path=path,
                              fix="free disk space or choose another output folder") from None
        view = view[n:]


class ShardWriter:
    """Writes one safetensors file; `write` returns the sha256 of everything written (None
    with checksum=False: hashing costs more CPU than the copy itself).

    Source ranges are mapped a window at a time and written straight from the mapping (one
    copy, as `cp` makes). The main thread only writes; a worker thread hashes each window and
    checks it for NaN/Inf meanwhile, then unmaps it, so at most a few windows are resident.
    """

    IN_FLIGHT = 4

    def __init__(self, path: Path, progress: Progress | None = None, checksum: bool = True):
        self.path = path
        self.progress = progress or (lambda n: None)
        self.hash = hashlib.sha256() if checksum else None
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256")
        self.pending: deque[Future] = deque()
        self.scratch = np.empty(CHUNK, dtype=np.uint8)  # used by the worker thread only
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)

    def _digest(self, data, check, release) -> None:
        try:
            if check is not None:
                check(data, self.scratch)
            if self.hash is not None:
                self.hash.update(data)
        finally:
            if release is not None:
                release()

    def _emit(self, data, check=None, release=None) -> None:
        try:
            _write_all(self.fd, data, self.path)
        except BaseException:
            if release is not None:
                release()
            raise
        self.pending.append(self.worker.submit(self._digest, data, check, release))
        while len(self.pending) > self.IN_FLIGHT:
            self.pending.popleft().result()

    def write(self, tensors: list[OutputTensor]) -> str | None:
        try:
            self._emit(header_bytes(tensors))
            for t in tensors:
                if t.source is None:
                    self._write_zeros(t)
                elif t.is_byte_copy:
                    self._copy_rows(t)
                else:
                    self._cast_rows(t)
            while self.pending:
                self.pending.popleft().result()
            os.fsync(self.fd)
        finally:
            self.worker.shutdown(wait=True, cancel_futures=True)
            os.close(self.fd)
        return self.hash.hexdigest() if self.hash is not None else None

    def _write_zeros(self, t: OutputTensor) -> None:
        left = t.nbytes
        zeros = bytes(min(left, CHUNK))
        while left:
            n = min(left, len(zeros))
            self._emit(memoryview(zeros)[:n])
            left -= n
            self.progress(n)

    def _copy_rows(self, t: OutputTensor) -> None:
        src = t.source
        offset, left = src.rows(t.row_start, t.row_stop)
        first = 0
        with open(src.file, "rb") as fh:
            if os.fstat(fh.fileno()).st_size < offset + left:
                raise InputError(f"tensor {src.name} is cut short", path=src.file, fix="download the file again")
            while left:
                n = min(left, CHUNK)
                view, release = _map_range(fh.fileno(), offset, n)
                self._emit(view, partial(_check_finite, src=src, first=first), release)
                first += n // ITEMSIZE[src.dtype]
                offset += n
                left -= n
                self.progress(n)

    def _cast_rows(self, t: OutputTensor) -> None:
        import torch

        from ..dtypes import torch_dtype
        from ..qwen.checkpoint import read_ref

        src = t.source
        row_bytes = max(1, src.nbytes // src.shape[0])
        step = max(1, CHUNK // row_bytes)
        target = torch_dtype(t.dtype)
        for start in range(t.row_start, t.row_stop, step):
            stop = min(start + step, t.row_stop)
            block = read_ref(src, start, stop)
            if not torch.isfinite(block).all():
                first_bad = int(torch.nonzero(~torch.isfinite(block.reshape(-1)))[0])
                _report_nonfinite(src, (start - t.row_start) * (row_bytes // ITEMSIZE[src.dtype]) + first_bad)
            cast = block.to(target)
            if not torch.isfinite(cast).all():
                raise InputError(
                    f"tensor {src.name} has values that overflow {t.dtype} "
                    f"(largest magnitude {block.abs().max().item():.4g})",
                    path=src.file, fix="keep the source dtype (omit --dtype) or use --dtype bfloat16/float32")
            data = cast.contiguous().view(torch.uint8).numpy()
            self._emit(data)
            self.progress(data.nbytes)


def _map_range(fd: int, offset: int, length: int):
    """A read-only view of file bytes [offset, offset + length), prefaulted in one call, and
    the function that unmaps it."""
    base = offset - offset % mmap.ALLOCATIONGRANULARITY
    flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
    mapping = mmap.mmap(fd, offset - base + length, flags=flags, prot=mmap.PROT_READ, offset=base)
    view = memoryview(mapping)[offset - base:]

    def release() -> None:
        view.release()
        try:
            mapping.close()
        except BufferError:  # a failed write's traceback still holds a view: unmapped when it goes
            pass

    return view, release


def _check_finite(chunk, scratch, *, src, first: int) -> None:
    bad = first_nonfinite(chunk, src.dtype, scratch)
    if bad is not None:
        _report_nonfinite(src, first + bad)


def _report_nonfinite(src, element: int) -> None:
    where = f" (element {element} of the copied range)"
    raise InputError(f"tensor {src.name} holds NaN or Inf{where}", path=src.file,
                     fix="the checkpoint is damaged: download it again")
