"""Stream planned tensors into safetensors files: byte ranges in, bytes out, one chunk at a time.

A same-dtype tensor is copied from its source byte range in fixed-size chunks, so memory stays
flat whatever the model size. Every chunk is checked for NaN/Inf on the way (bit tests on the
raw words, no float conversion) and hashed, so the manifest needs no second read.
"""
from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..dtypes import ITEMSIZE, torch_dtype
from ..errors import InputError, OutputError
from ..storage.digest import new_hash
from ..storage import OutputTensor, header_bytes, read_ref, unknown_kind
from ..storage.refs import row_blocks

CHUNK = 1 << 20  # bytes per read, write and worker task: small enough to stay in the CPU cache
CAST_BLOCK = 16 << 20  # source bytes per conversion step when the dtype changes
RELEASE = 64 << 20  # every this many bytes, start writeback and release source pages already read

# Exponent-all-ones masks: a word matching its mask is NaN or +/-Inf.
_NONFINITE = {"BF16": (np.uint16, 0x7F80), "F16": (np.uint16, 0x7C00), "F32": (np.uint32, 0x7F800000)}

Progress = Callable[[int], None]


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
    """Writes one safetensors file; `write` returns the digest (`hash`: blake3 or sha256) of
    everything written (None with hash=None).

    Source ranges are read in cache-sized chunks into a ring of buffers; a worker thread checks
    each chunk for NaN/Inf and hashes it while the main thread writes it out, so every byte is
    read once and written once, as in `cp`. Tasks run in file order. As the copy goes, writeback
    of the output starts and source pages already read are released, so a model larger than the
    page cache streams through it instead of forcing the kernel to reclaim under pressure.
    """

    IN_FLIGHT = 8

    def __init__(self, path: Path, progress: Progress | None = None, hash: str | None = "blake3"):
        self.path = path
        self.progress = progress or (lambda n: None)
        self.hash = new_hash(hash) if hash else None
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="digest")
        self.pending: deque[Future] = deque()
        # two more buffers than tasks can be outstanding: a buffer's last task is done when its turn comes
        self.ring = [bytearray(CHUNK) for _ in range(self.IN_FLIGHT + 2)]
        self.turn = 0
        self.scratch = np.empty(CHUNK, dtype=np.uint8)  # used by the worker thread only
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self.written = self.flushed = 0

    def _wrote(self, n: int) -> None:
        """Start writeback of what is written so far, so that the fsync before publishing finds
        little left to do instead of waiting for the whole file."""
        self.written += n
        if self.written - self.flushed >= RELEASE:
            _release(self.fd, self.flushed, self.written - self.flushed)
            self.flushed = self.written

    def _submit(self, task, *args) -> None:
        self.pending.append(self.worker.submit(task, *args))
        while len(self.pending) > self.IN_FLIGHT:
            self.pending.popleft().result()

    def _digest(self, data) -> None:
        if self.hash is not None:
            self.hash.update(data)

    def _emit(self, data) -> None:
        """Write bytes we made (header, zeros, casts) and hash them on the worker."""
        _write_all(self.fd, data, self.path)
        self._wrote(memoryview(data).nbytes)
        self._submit(self._digest, data)

    def _check_and_digest(self, chunk, src, first: int) -> None:
        if src.dtype in _NONFINITE:
            bad = first_nonfinite(chunk, src.dtype, self.scratch)
            if bad is not None:
                _report_nonfinite(src, first + bad)
        self._digest(chunk)

    def write(self, tensors: list[OutputTensor]) -> str | None:
        try:
            self._emit(header_bytes([(t.name, t.dtype, t.shape) for t in tensors]))
            for t in tensors:
                match t.kind:
                    case "computed":
                        self._write_derived(t)
                    case "zeros":
                        self._write_zeros(t)
                    case "columns":
                        self._copy_columns(t)
                    case "copy":
                        self._copy_rows(t)
                    case "cast":
                        self._cast_rows(t)
                    case _:
                        raise unknown_kind(t.kind)
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
        released, first = offset, 0
        with open(src.file, "rb") as fh:
            src_fd = fh.fileno()
            while left:
                chunk = memoryview(self.ring[self.turn])[:min(left, CHUNK)]
                self.turn = (self.turn + 1) % len(self.ring)
                if os.preadv(src_fd, [chunk], offset) != len(chunk):
                    raise InputError(f"tensor {src.name} is cut short", path=src.file,
                                     fix="download the file again")
                self._submit(self._check_and_digest, chunk, src, first)
                _write_all(self.fd, chunk, self.path)
                self._wrote(len(chunk))
                first += len(chunk) // ITEMSIZE[src.dtype]
                offset += len(chunk)
                left -= len(chunk)
                if offset - released >= RELEASE or not left:
                    _release(src_fd, released, offset - released)
                    released = offset
                self.progress(len(chunk))

    def _copy_columns(self, t: OutputTensor) -> None:
        """Columns [c0, c1) of a 2-D source (GPTQ's output features): whole rows are read a
        chunk at a time and the column range of each is written, so memory stays one chunk."""
        src, (c0, c1) = t.source, t.cols
        item = ITEMSIZE[src.dtype]
        row_bytes = src.nbytes // src.shape[0]
        first = 0
        with open(src.file, "rb") as fh:
            for start, stop in row_blocks(t.row_start, t.row_stop, row_bytes, CHUNK):
                offset, length = src.rows(start, stop)
                buf = bytearray(length)
                if os.preadv(fh.fileno(), [buf], offset) != length:
                    raise InputError(f"tensor {src.name} is cut short", path=src.file,
                                     fix="download the file again")
                block = np.frombuffer(buf, dtype=np.uint8).reshape(stop - start, row_bytes)
                data = np.ascontiguousarray(block[:, c0 * item:c1 * item])
                _write_all(self.fd, data, self.path)
                self._wrote(data.nbytes)
                self._submit(self._check_and_digest, data, src, first)
                first += data.nbytes // item
                self.progress(data.nbytes)

    def _write_derived(self, t: OutputTensor) -> None:
        """A computed tensor (a dequantized GPTQ linear, a merged LoRA weight), block by block."""
        import torch

        for block in t.derived.blocks(t.dtype):
            if not torch.isfinite(block).all():
                raise InputError(f"{t.name} has values that are not finite in {t.dtype} once computed",
                                 path=t.derived.file, fix="write float32, or check the source's values")
            data = block.contiguous().view(torch.uint8).numpy()
            self._emit(data)
            self.progress(data.nbytes)

    def _cast_rows(self, t: OutputTensor) -> None:
        import torch

        src = t.source
        row_bytes = max(1, src.nbytes // src.shape[0])
        target = torch_dtype(t.dtype)
        for start, stop in row_blocks(t.row_start, t.row_stop, row_bytes, CAST_BLOCK):
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


def _release(fd: int, offset: int, n: int) -> None:
    """POSIX_FADV_DONTNEED on Linux: starts writeback of dirty pages in the range (waiting for
    nothing) and drops the clean ones. On the output that gets the bytes to disk early; on the
    source it gives back pages we will not read again."""
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, offset, n, os.POSIX_FADV_DONTNEED)


def _report_nonfinite(src, element: int) -> None:
    where = f" (element {element} of the copied range)"
    raise InputError(f"tensor {src.name} holds NaN or Inf{where}", path=src.file,
                     fix="the checkpoint is damaged: download it again")
