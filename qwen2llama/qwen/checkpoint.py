"""Find and index the weight files of a Qwen checkpoint folder, reading metadata only.

Every tensor becomes a `TensorRef`: a file, a dtype, a shape and a byte range. Nothing here
reads tensor data except `read_tensor`, which the reference forward uses one tensor at a time.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from math import prod
from pathlib import Path

from ..dtypes import ITEMSIZE, torch_dtype
from ..errors import InputError
from .config import QwenConfig, load_config
from .torchzip import read_torch_zip

MAX_HEADER_BYTES = 100 << 20

# (index file, single file) per format, in order of preference.
LAYOUTS = (
    ("safetensors", "model.safetensors.index.json", "model.safetensors"),
    ("bin", "pytorch_model.bin.index.json", "pytorch_model.bin"),
)


@dataclass(frozen=True)
class TensorRef:
    """Where one stored tensor's bytes are: `nbytes` from absolute `offset` in `file`."""

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


@dataclass
class Checkpoint:
    folder: Path
    config: QwenConfig
    format: str  # "safetensors" or "bin"
    files: list[Path]
    tensors: dict[str, TensorRef]

    @property
    def dtypes(self) -> set[str]:
        return {t.dtype for t in self.tensors.values()}

    def read_tensor(self, name: str):
        """Read one tensor into memory as a torch tensor (used by the reference forward)."""
        return read_ref(self.tensors[name])


def read_ref(ref: TensorRef, start: int | None = None, stop: int | None = None):
    import torch

    offset, length = ref.rows(start or 0, ref.shape[0] if stop is None else stop) if ref.shape else (ref.offset, ref.nbytes)
    buf = bytearray(length)
    with open(ref.file, "rb") as fh:
        fh.seek(offset)
        if fh.readinto(buf) != length:
            raise InputError(f"tensor {ref.name} is cut short", path=ref.file, fix="download the file again")
    shape = ref.shape if start is None and stop is None else ((stop or ref.shape[0]) - (start or 0), *ref.shape[1:])
    if length == 0:
        return torch.empty(shape, dtype=torch_dtype(ref.dtype))
    return torch.frombuffer(buf, dtype=torch_dtype(ref.dtype)).reshape(shape)


def read_safetensors_header(path: Path) -> dict[str, TensorRef]:
    """Parse and validate a safetensors header: known dtypes, sizes that match shapes, ranges
    that lie inside the file and do not overlap."""
    fix = "download this shard again; it is truncated or corrupt"
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise InputError("safetensors file is shorter than its 8-byte header length", path=path, fix=fix)
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise InputError(f"safetensors header length {n} does not fit in the file ({size} bytes)",
                                 path=path, fix=fix)
            header_bytes = fh.read(n)
    except OSError as exc:
        raise InputError(f"cannot read the file ({exc.strerror})", path=path,
                         fix="check that the file exists and is readable") from None
    try:
        header = json.loads(header_bytes)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InputError("safetensors header is not valid JSON", path=path, fix=fix) from None
    if not isinstance(header, dict):
        raise InputError("safetensors header is not a JSON object", path=path, fix=fix)
    base = 8 + n
    refs: dict[str, TensorRef] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
            ok = (dtype in ITEMSIZE and all(isinstance(d, int) and d >= 0 for d in shape)
                  and isinstance(begin, int) and isinstance(end, int))
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise InputError(f"tensor {name}: malformed header entry {info!r}"[:300], path=path, fix=fix)
        if not 0 <= begin <= end or base + end > size:
            raise InputError(f"tensor {name}: data range {begin}..{end} runs past the end of the file",
                             path=path, fix=fix)
        if end - begin != prod(shape) * ITEMSIZE[dtype]:
            raise InputError(f"tensor {name}: {end - begin} bytes for shape {list(shape)} of {dtype}",
                             path=path, fix=fix)
        refs[name] = TensorRef(name, path, dtype, shape, base + begin, end - begin)
    spans = sorted((r.offset, r.offset + r.nbytes, r.name) for r in refs.values() if r.nbytes)
    for (_, end_a, a), (start_b, _, b) in zip(spans, spans[1:]):
        if start_b < end_a:
            raise InputError(f"tensors {a} and {b} overlap in the file", path=path, fix=fix)
    return refs


def read_index(index_path: Path) -> tuple[dict[str, str], list[str]]:
    """(weight_map, sorted shard names) of a shard index, shard names checked to be plain file names."""
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        weight_map = index["weight_map"]
        assert isinstance(weight_map, dict) and all(isinstance(v, str) for v in weight_map.values())
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        raise InputError("the shard index is unreadable or has no weight_map", path=index_path,
                         fix="restore the index file that came with the checkpoint") from None
    for name, shard in weight_map.items():
        if shard != os.path.basename(shard) or shard in ("", ".", "..") or "\\" in shard:
            raise InputError(f"tensor {name} points at shard {shard!r}, which is not a plain file name "
                             "(path traversal is refused)", path=index_path,
                             fix="shard names must be files in the checkpoint folder")
    return weight_map, sorted(set(weight_map.values()))


def _read_weights_file(path: Path, fmt: str) -> dict[str, TensorRef]:
    if fmt == "safetensors":
        return read_safetensors_header(path)
    return {name: TensorRef(name, path, dtype, shape, offset, nbytes)
            for name, (dtype, shape, offset, nbytes) in read_torch_zip(path).items()}


def read_weight_files(folder: Path, fmt: str, shards: list[str], weight_map: dict[str, str] | None,
                      index_path: Path | None) -> dict[str, TensorRef]:
    """Every tensor of these shards, each in exactly one file, agreeing with the index if any."""
    tensors: dict[str, TensorRef] = {}
    for shard in shards:
        path = folder / shard
        if not path.is_file():
            raise InputError(f"the index names shard {shard}, which is missing", path=index_path or path,
                             fix=f"download {shard} again into the folder")
        for name, ref in _read_weights_file(path, fmt).items():
            if name in tensors:
                raise InputError(f"tensor {name} is stored in two shards ({tensors[name].file.name} and {shard})",
                                 path=path, fix="restore the original shards; a tensor must live in one file")
            tensors[name] = ref
    if weight_map is not None:
        for name, shard in weight_map.items():
            ref = tensors.get(name)
            if ref is None or ref.file.name != shard:
                where = "missing from every shard" if ref is None else f"found in {ref.file.name}"
                raise InputError(f"the index puts tensor {name} in {shard}, but it is {where}",
                                 path=index_path, fix="restore the index and shards of one download")
        unlisted = sorted(set(tensors) - set(weight_map))
        if unlisted:
            raise InputError(f"shards hold tensors the index does not list: {', '.join(unlisted[:5])}",
                             path=index_path, fix="restore the index and shards of one download")
    return tensors


def open_checkpoint(folder: str | Path) -> Checkpoint:
    """Index a Qwen checkpoint folder: config plus every tensor's location, no tensor data read."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("the source is not a folder", path=folder,
                         fix="give the folder that holds config.json and the weight files")
    if not os.access(folder, os.R_OK | os.X_OK):
        raise InputError("the source folder is not readable", path=folder, fix="check its permissions")
    config = load_config(folder)
    for fmt, index_name, single_name in LAYOUTS:
        index_path, single_path = folder / index_name, folder / single_name
        if index_path.is_file():
            weight_map, shards = read_index(index_path)
            break
        if single_path.is_file():
            weight_map, shards = None, [single_name]
            break
    else:
        present = sorted(p.name for p in folder.iterdir())[:12]
        raise InputError(
            f"no weights found (looked for model.safetensors[.index.json] and pytorch_model.bin[.index.json]; "
            f"the folder holds: {', '.join(present) or 'nothing'})",
            path=folder, fix="download the weight files into this folder")
    tensors = read_weight_files(folder, fmt, shards, weight_map, index_path if weight_map is not None else None)
    return Checkpoint(folder, config, fmt, [folder / s for s in shards], tensors)
