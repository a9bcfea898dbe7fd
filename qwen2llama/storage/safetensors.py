"""safetensors headers: parsed and validated on the way in, built on the way out."""
from __future__ import annotations

import json
import struct
from math import prod
from pathlib import Path

from ..dtypes import ITEMSIZE
from ..errors import InputError
from .refs import TensorRef

MAX_HEADER_BYTES = 100 << 20
FIX = "download this shard again; it is truncated or corrupt"


def _header_json(path: Path) -> tuple[int, bytes, int]:
    """(header length, header bytes, file size), with the length checked against the file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise InputError("safetensors file is shorter than its 8-byte header length", path=path,
                                 fix=FIX)
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise InputError(f"safetensors header length {n} does not fit in the file ({size} bytes)",
                                 path=path, fix=FIX)
            return n, fh.read(n), size
    except OSError as exc:
        raise InputError(f"cannot read the file ({exc.strerror})", path=path,
                         fix="check that the file exists and is readable") from None


def _entry(name: str, info, path: Path) -> tuple[str, tuple[int, ...], int, int]:
    try:
        dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        ok = (dtype in ITEMSIZE and all(isinstance(d, int) and d >= 0 for d in shape)
              and isinstance(begin, int) and isinstance(end, int))
    except (TypeError, KeyError, ValueError):
        ok = False
    if not ok:
        raise InputError(f"tensor {name}: malformed header entry {info!r}"[:300], path=path, fix=FIX)
    return dtype, shape, begin, end


def read_safetensors_header(path: Path) -> dict[str, TensorRef]:
    """Every tensor of a safetensors file: known dtypes, sizes that match shapes, ranges that lie
    inside the file and do not overlap."""
    n, header_bytes_, size = _header_json(path)
    try:
        header = json.loads(header_bytes_)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise InputError("safetensors header is not valid JSON", path=path, fix=FIX) from None
    if not isinstance(header, dict):
        raise InputError("safetensors header is not a JSON object", path=path, fix=FIX)
    base = 8 + n
    refs: dict[str, TensorRef] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, begin, end = _entry(name, info, path)
        if not 0 <= begin <= end or base + end > size:
            raise InputError(f"tensor {name}: data range {begin}..{end} runs past the end of the file",
                             path=path, fix=FIX)
        if end - begin != prod(shape) * ITEMSIZE[dtype]:
            raise InputError(f"tensor {name}: {end - begin} bytes for shape {list(shape)} of {dtype}",
                             path=path, fix=FIX)
        refs[name] = TensorRef(name, path, dtype, shape, base + begin, end - begin)
    spans = sorted((r.offset, r.offset + r.nbytes, r.name) for r in refs.values() if r.nbytes)
    for (_, end_a, a), (start_b, _, b) in zip(spans, spans[1:]):
        if start_b < end_a:
            raise InputError(f"tensors {a} and {b} overlap in the file", path=path, fix=FIX)
    return refs


def header_bytes(entries) -> bytes:
    """The safetensors header for (name, dtype, shape) entries laid out in this order, padded to 8 bytes."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape in entries:
        size = prod(shape) * ITEMSIZE[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw
