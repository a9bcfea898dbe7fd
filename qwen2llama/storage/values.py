"""The bytes a tensor holds, a bounded block at a time: of a stored tensor (`ref_chunks`) and of a
planned output tensor as the conversion defines it (`output_chunks`).

Golden files record the digest of every planned tensor's `output_chunks` from the source alone; a
later verify compares the digest of each tensor's `ref_chunks` in a folder, whatever its shards or
file format.
"""
from __future__ import annotations

from collections.abc import Iterator

from ..dtypes import torch_dtype
from .refs import COMPUTE_BLOCK, OutputTensor, TensorRef, read_ref, row_blocks

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


def output_chunks(t: OutputTensor) -> Iterator:
    """The bytes the conversion writes for `t`, in order (buffers: bytes or numpy arrays)."""
    import torch

    def raw(block):
        return block.contiguous().view(torch.uint8).numpy()

    src = t.source
    row_bytes = (src.nbytes // src.shape[0] if src.shape and src.shape[0] else src.nbytes) if src else 0
    match t.kind:
        case "computed":
            for block in t.derived.blocks(t.dtype):
                yield raw(block)
        case "zeros":
            for start in range(0, t.nbytes, CHUNK):
                yield bytes(min(CHUNK, t.nbytes - start))
        case "columns":
            for a, b in row_blocks(t.row_start, t.row_stop, row_bytes, CHUNK):
                yield raw(read_ref(src, a, b)[:, t.cols[0]:t.cols[1]])
        case "copy":
            yield from byte_chunks(src, *src.rows(t.row_start, t.row_stop))
        case "cast":
            for a, b in row_blocks(t.row_start, t.row_stop, row_bytes, COMPUTE_BLOCK):
                yield raw(read_ref(src, a, b).to(torch_dtype(t.dtype)))
