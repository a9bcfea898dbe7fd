"""Output layouts ("targets"), one module each: the LLaMA layout (the default) and Qwen2's.

Both take the same tensor names from the one mapping table (layout.py); a target says which of
those modules carry a bias (`Target.has_bias`: LLaMA's o_proj gets a zero one, Qwen2's has
none), its config.json, the transformers classes verify loads as the real consumer, and what
verify's config check expects. Nothing outside this package names a target's model class.
"""
from __future__ import annotations

from ..errors import InputError
from .base import Target
from .llama import LLAMA
from .qwen2 import QWEN2

__all__ = ["DEFAULT", "TARGETS", "Target", "for_config", "target_for"]

TARGETS: dict[str, Target] = {t.name: t for t in (LLAMA, QWEN2)}
DEFAULT = LLAMA.name


def target_for(name: str | Target | None) -> Target:
    """The target called `name` (None: the default), or bad input naming the choices."""
    if isinstance(name, Target):
        return name
    found = TARGETS.get(DEFAULT if name is None else name)
    if found is None:
        raise InputError(f"unknown --target {name!r}", fix=f"use one of {', '.join(TARGETS)}")
    return found


def for_config(raw: dict) -> Target:
    """The layout a converted folder's config.json names (its model_type); any other model_type is
    checked as the default layout, whose config check then names the mismatch."""
    model_type = raw.get("model_type")
    return next((t for t in TARGETS.values() if t.model_type == model_type), TARGETS[DEFAULT])
