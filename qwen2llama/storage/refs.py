"""Where a stored tensor's bytes are (`TensorRef`), what to write from them (`OutputTensor`,
possibly computed by a `Derived`), and reading a row range of one into memory."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from math import prod
from pathlib import Path
from typing import Protocol

from ..dtypes import ITEMSIZE, WIDENING, torch_dtype
from ..errors import InputError


class Kind(StrEnum):
    """How an output tensor's bytes are made: "computed" by its `derived` recipe, "zeros", "columns"
    of a same-dtype source, a byte "copy" of a row range, or a "cast" of one. Every consumer
    matches on it and fails loudly on a kind it does not know (`unknown_kind`)."""

    COMPUTED = "computed"
    ZEROS = "zeros"
    COLUMNS = "columns"
    COPY = "copy"
    CAST = "cast"


def unknown_kind(kind) -> ValueError:
    return ValueError(f"no rule for output tensors of kind {kind!r}")


@dataclass(frozen=True)
class TensorRef:
    """One stored tensor: `nbytes` from absolute `offset` in `file`."""

    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int

    def rows(self, start: int, stop: int) -> tuple[int, int]:
        """(offset, length) of rows [start, stop) along dim 0: a contiguous byte range."""
        row = self.nbytes // self.shape[0] if self.shape and self.shape[0] else 0
        return self.offset + start * row, (stop - start) * row


COMPUTE_BLOCK = 16 << 20  # float32 bytes a computed tensor produces per step


def row_blocks(start: int, stop: int, row_bytes: int, budget: int) -> Iterator[tuple[int, int]]:
    """[a, b) row ranges covering [start, stop), each about `budget` bytes (at least one row)."""
    step = max(1, budget // max(1, row_bytes))
    for a in range(start, stop, step):
        yield a, min(a + step, stop)


class Derived(Protocol):
    """A tensor computed from stored ones (formats.gptq.Dequantized, lora.mapping.Merged)."""

    label: str  # what the computation is, for plans ("dequantized", "merged with the adapter")

    @property
    def file(self) -> Path: ...  # the file to name when a computed value is not finite

    def describe(self) -> str: ...  # where its values come from, for `inspect --tensors`

    def blocks(self, dtype: str) -> Iterator: ...  # its rows in order, a block at a time, as torch tensors


@dataclass(frozen=True)
class OutputTensor:
    """A tensor to write: rows [row_start, row_stop) of `source` in `dtype`, only columns
    [cols[0], cols[1]) of a 2-D source when `cols` is set; zeros when `source` is None; or
    computed block by block by `derived`."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    source: TensorRef | None
    row_start: int = 0
    row_stop: int = 0
    cols: tuple[int, int] | None = None
    derived: Derived | None = None

    @property
    def nbytes(self) -> int:
        return prod(self.shape) * ITEMSIZE[self.dtype]

    @property
    def kind(self) -> Kind:
        """How its bytes are made, decided here once for every consumer (writer, verify, golden
        digests, plan display): see Kind."""
        if self.derived is not None:
            return Kind.COMPUTED
        if self.source is None:
            return Kind.ZEROS
        if self.cols is not None:
            return Kind.COLUMNS
        return Kind.COPY if self.source.dtype == self.dtype else Kind.CAST

    @property
    def is_byte_copy(self) -> bool:
        """The output is a byte range of the source (contiguous unless by columns)."""
        return self.kind in ("copy", "columns")

    @property
    def narrows(self) -> bool:
        """Whether writing it may change values: a narrowing cast, or a computed tensor stored
        in less than float32 (the computation is float32)."""
        if self.derived is not None:
            return self.dtype != "F32"
        return self.source is not None and self.source.dtype != self.dtype and \
            (self.source.dtype, self.dtype) not in WIDENING


def read_ref(ref: TensorRef, start: int | None = None, stop: int | None = None):
    """Rows [start, stop) of a stored tensor (all of it by default) as a torch tensor."""
    import torch

    whole = start is None and stop is None
    if ref.shape:
        start, stop = start or 0, ref.shape[0] if stop is None else stop
        offset, length = ref.rows(start, stop)
        shape = ref.shape if whole else (stop - start, *ref.shape[1:])
    else:
        offset, length, shape = ref.offset, ref.nbytes, ref.shape
    buf = bytearray(length)
    with open(ref.file, "rb") as fh:
        fh.seek(offset)
        if fh.readinto(buf) != length:
            raise InputError(f"tensor {ref.name} is cut short", path=ref.file, fix="download the file again")
    if length == 0:
        return torch.empty(shape, dtype=torch_dtype(ref.dtype))
    return torch.frombuffer(buf, dtype=torch_dtype(ref.dtype)).reshape(shape)
