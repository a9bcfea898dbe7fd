"""User-facing errors: what went wrong, in which file, and what to do about it.

The CLI prints these as a short message (no traceback) and exits with `exit_code`.
"""
from __future__ import annotations

from pathlib import Path


class Qwen2LlamaError(Exception):
    """Base class; `exit_code` is what the CLI returns."""

    exit_code = 2

    def __init__(self, message: str, *, path: str | Path | None = None, fix: str | None = None):
        super().__init__(message)
        self.message = message
        self.path = str(path) if path is not None else None
        self.fix = fix

    def __str__(self) -> str:
        parts = [self.message]
        if self.path:
            parts.append(f"file: {self.path}")
        if self.fix:
            parts.append(f"fix: {self.fix}")
        return "\n".join(parts)


class InputError(Qwen2LlamaError):
    """The checkpoint, vocabulary or arguments are unusable (exit 2)."""


class OutputError(Qwen2LlamaError):
    """The output location cannot be written as asked (exit 2)."""


class FolderCheckFailed(Qwen2LlamaError):
    """The converted folder under verification is broken before any check can run (an empty
    config.json, two weight sets, a .bin that asks for code): a failed check (exit 1), not bad
    input — the README's promise for anything wrong with the converted folder."""

    exit_code = 1


class VerificationFailed(Qwen2LlamaError):
    """A verify check found a difference (exit 1)."""

    exit_code = 1
