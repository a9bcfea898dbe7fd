"""Shard planning from sizes alone, and the Hugging Face shard naming scheme."""
from __future__ import annotations

import re

from ..errors import InputError

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


MAX_SIZE = 10**15  # a shard larger than a petabyte is a typo, not a plan


def parse_size(text: str | int) -> int:
    """'5GB' -> 5_000_000_000 (decimal, as Hugging Face does); '2GiB', '500MB' and plain bytes too."""
    if isinstance(text, int):
        value = text
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
        if not m or m.group(2).upper() not in _UNITS:
            raise InputError(f"cannot read the size {text!r}",
                             fix="write it like 5GB, 500MB, 2GiB or a byte count")
        number = float(m.group(1)) * _UNITS[m.group(2).upper()]
        value = int(number) if number <= MAX_SIZE else MAX_SIZE + 1  # 10^400 GB is a float infinity
    if value <= 0 or value > MAX_SIZE:
        raise InputError(f"size must be positive and at most 1 PB, got {str(text)[:40]!r}",
                         fix="write it like 5GB")
    return value


def plan_shards(sizes: list[int], max_bytes: int) -> list[list[int]]:
    """Group item indices, in order, into shards of at most max_bytes (an item larger than that
    gets a shard of its own, as it cannot be split)."""
    shards: list[list[int]] = []
    current: list[int] = []
    used = 0
    for index, size in enumerate(sizes):
        if current and used + size > max_bytes:
            shards.append(current)
            current, used = [], 0
        current.append(index)
        used += size
    if current or not shards:
        shards.append(current)
    return shards


def shard_names(count: int) -> list[str]:
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{k:05d}-of-{count:05d}.safetensors" for k in range(1, count + 1)]
