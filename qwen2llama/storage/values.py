"""The bytes a tensor holds, a bounded block at a time: of a stored tensor (`ref_chunks`) and of a
planned output tensor as the conversion defines it (`output_chunks`).

Golden files record the digest of every planned tensor's `output_chunks` from the source alone; a
later verify compares the digest of each tensor's `ref_chunks` in a folder, whatever its shards or
file format.
"""
from __future__ import annotations

from collections.abc import Iterator

from ..dtypes import torch_dtype
from .refs import COMPUTE_BLOCK, OutputTensor, TensorRef, read_ref, row_blocks, unknown_kind

CHUNK = 16 << 20  # bytes per read


def byte_chunks(ref: TensorRef, offset: int, length: int) -> Iterator[bytes]:
    """`length` bytes of `ref`'s file from absolute `offset`; fewer if the file is cut short
    (the caller's comparison or digest then fails)."""
    with open(ref.file, "rb") as fh:
        fh.seek(offset)
        while length:
            data = fh.read(min(length, CHUNK))
            if not data:
                return
            yield data
            length -= len(data)


def ref_chunks(ref: TensorRef) -> Iterator[bytes]:
    return byte_chunks(ref, ref.offset, ref.nbytes)


def _row_bytes(ref: TensorRef) -> int:
    return ref.nbytes // ref.shape[0] if ref.shape and ref.shape[0] else ref.nbytes


def _raw(block):
    import torch

    return block.contiguous().view(torch.uint8).numpy()


def _zeros(t: OutputTensor) -> Iterator[bytes]:
    for start in range(0, t.nbytes, CHUNK):
        yield bytes(min(CHUNK, t.nbytes - start))


def _rows(t: OutputTensor, budget: int, block) -> Iterator:
    """`block(rows)` of each row block of the source, as bytes."""
    for a, b in row_blocks(t.row_start, t.row_stop, _row_bytes(t.source), budget):
        yield _raw(block(read_ref(t.source, a, b)))


def output_chunks(t: OutputTensor) -> Iterator:
    """The bytes the conversion writes for `t`, in order (buffers: bytes or numpy arrays)."""
    match t.kind:
        case "computed":
            return (_raw(block) for block in t.derived.blocks(t.dtype))
        case "zeros":
            return _zeros(t)
        case "columns":
            return _rows(t, CHUNK, lambda rows: rows[:, t.cols[0]:t.cols[1]])
        case "copy":
            return byte_chunks(t.source, *t.source.rows(t.row_start, t.row_stop))
        case "cast":
            return _rows(t, COMPUTE_BLOCK, lambda rows: rows.to(torch_dtype(t.dtype)))
        case _:
            raise unknown_kind(t.kind)
