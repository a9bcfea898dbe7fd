"""Stream planned tensors into safetensors files: byte ranges in, bytes out, one chunk at a time.

A same-dtype tensor is copied from its source byte range in fixed-size chunks, so memory stays
flat whatever the model size. Every chunk is checked for NaN/Inf on the way (bit tests on the
raw words, no float conversion) and hashed, so the manifest needs no second read.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
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


def first_nonfinite(buf, dtype: str) -> int | None:
    """Index of the first NaN/Inf element in a raw buffer of `dtype`, or None."""
    word, mask = _NONFINITE[dtype]
    words = np.frombuffer(buf, dtype=word)
    bad = np.flatnonzero((words & mask) == mask)
    return int(bad[0]) if bad.size else None


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
    """Writes one safetensors file; `sha256` is the digest of everything written."""

    def __init__(self, path: Path, progress: Progress | None = None):
        self.path = path
        self.progress = progress or (lambda n: None)
        self.hash = hashlib.sha256()
        self.buffer = bytearray(CHUNK)
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)

    def _emit(self, data) -> None:
        _write_all(self.fd, data, self.path)
        self.hash.update(data)

    def write(self, tensors: list[OutputTensor]) -> str:
        try:
            self._emit(header_bytes(tensors))
            for t in tensors:
                if t.source is None:
                    self._write_zeros(t)
                elif t.is_byte_copy:
                    self._copy_rows(t)
                else:
                    self._cast_rows(t)
            os.fsync(self.fd)
        finally:
            os.close(self.fd)
        return self.hash.hexdigest()

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
        done = 0
        with open(src.file, "rb", buffering=0) as fh:
            fh.seek(offset)
            while left:
                view = memoryview(self.buffer)[: min(left, CHUNK)]
                n = fh.readinto(view)
                if not n:
                    raise InputError(f"tensor {src.name} is cut short", path=src.file, fix="download the file again")
                chunk = view[:n]
                bad = first_nonfinite(chunk, src.dtype)
                if bad is not None:
                    _report_nonfinite(src, t, done // ITEMSIZE[src.dtype] + bad)
                self._emit(chunk)
                done += n
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
                _report_nonfinite(src, t, None)
            cast = block.to(target)
            if not torch.isfinite(cast).all():
                raise InputError(
                    f"tensor {src.name} has values that overflow {t.dtype} "
                    f"(largest magnitude {block.abs().max().item():.4g})",
                    path=src.file, fix="keep the source dtype (omit --dtype) or use --dtype bfloat16/float32")
            data = cast.contiguous().view(torch.uint8).numpy()
            self._emit(data)
            self.progress(data.nbytes)


def _report_nonfinite(src, t: OutputTensor, element: int | None) -> None:
    where = f" (element {element} of the copied range)" if element is not None else ""
    raise InputError(f"tensor {src.name} holds NaN or Inf{where}", path=src.file,
                     fix="the checkpoint is damaged: download it again")
