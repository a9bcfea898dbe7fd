"""Reading the small JSON files of a checkpoint, an adapter or a converted folder: an object, or
bad input naming the file."""
from __future__ import annotations

import json
from pathlib import Path

from .errors import InputError
from .smallfile import read_small_text


def read_object(path: Path, *, fix: str, what: str = "is not a valid JSON object") -> dict:
    """The JSON object in `path`; a missing, unreadable or non-object file raises InputError."""
    try:
        data = json.loads(read_small_text(path, "config", fix=fix))
    except (OSError, ValueError, RecursionError):  # RecursionError: nesting deeper than Python's stack
        data = None
    if not isinstance(data, dict):
        raise InputError(f"{path.name} {what}", path=path, fix=fix)
    return data
