"""A folder's weight files: which format, which shards, every tensor in exactly one of them,
agreeing with the shard index when there is one."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..smallfile import read_small_text
from .refs import TensorRef
from .safetensors import read_safetensors_header
from .torchzip import read_torch_zip

# format -> (index file, single file), in order of preference. Hugging Face names, for Qwen and LLaMA alike.
LAYOUTS = {
    "safetensors": ("model.safetensors.index.json", "model.safetensors"),
    "bin": ("pytorch_model.bin.index.json", "pytorch_model.bin"),
}
READERS = {"safetensors": read_safetensors_header, "bin": read_torch_zip}
INDEX_FIX = "restore the index file that came with the checkpoint"


@dataclass(frozen=True)
class WeightFiles:
    format: str  # "safetensors" or "bin"
    files: list[Path]
    tensors: dict[str, TensorRef]


def read_index(index_path: Path) -> tuple[dict[str, str], list[str]]:
    """(weight_map, sorted shard names) of a shard index, shard names checked to be plain file names."""
    try:
        weight_map = json.loads(read_small_text(index_path, "index", fix=INDEX_FIX))["weight_map"]
        ok = isinstance(weight_map, dict) and all(isinstance(v, str) for v in weight_map.values())
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        ok = False
    if not ok:
        raise InputError("the shard index is unreadable or has no weight_map", path=index_path, fix=INDEX_FIX)
    for name, shard in weight_map.items():
        if shard != os.path.basename(shard) or shard in ("", ".", "..") or "\\" in shard:
            raise InputError(f"tensor {name} points at shard {shard!r}, which is not a plain file name "
                             "(path traversal is refused)", path=index_path,
                             fix="shard names must be files in the checkpoint folder")
    return weight_map, sorted(set(weight_map.values()))


def _check_against_index(tensors: dict[str, TensorRef], weight_map: dict[str, str], index_path: Path) -> None:
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


def read_shards(folder: Path, fmt: str, shards: list[str], index_path: Path | None = None,
                weight_map: dict[str, str] | None = None) -> dict[str, TensorRef]:
    """Every tensor of these shards, each in exactly one file, agreeing with the index if any."""
    tensors: dict[str, TensorRef] = {}
    for shard in shards:
        path = folder / shard
        if not path.is_file():
            raise InputError(f"the index names shard {shard}, which is missing", path=index_path or path,
                             fix=f"download {shard} again into the folder")
        for name, ref in READERS[fmt](path).items():
            if name in tensors:
                raise InputError(f"tensor {name} is stored in two shards ({tensors[name].file.name} "
                                 f"and {shard})",
                                 path=path, fix="restore the original shards; a tensor must live in one file")
            tensors[name] = ref
    if weight_map is not None:
        _check_against_index(tensors, weight_map, index_path)
    return tensors


def weight_sets(folder: Path, formats=tuple(LAYOUTS)) -> list[str]:
    """The names of every weight set a folder holds (an index, or a single file, per format):
    runtimes pick among several by their own rules (transformers: model.safetensors first)."""
    return [name for fmt in formats for name in LAYOUTS[fmt] if (folder / name).is_file()]


def find_weights(folder: Path, formats=tuple(LAYOUTS)) -> WeightFiles | None:
    """The weight files of `folder` (an index first, then a single file, per format in order),
    metadata only; None when the folder has none of them."""
    for fmt in formats:
        index_name, single_name = LAYOUTS[fmt]
        index_path = folder / index_name
        if index_path.is_file():
            weight_map, shards = read_index(index_path)
            tensors = read_shards(folder, fmt, shards, index_path, weight_map)
        elif (folder / single_name).is_file():
            shards = [single_name]
            tensors = read_shards(folder, fmt, shards)
        else:
            continue
        return WeightFiles(fmt, [folder / s for s in shards], tensors)
    return None
