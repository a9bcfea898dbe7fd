"""Whether a batch job's output folder is ours and up to date: what lets a rerun skip a job, and
what lets it replace a folder without --force (README "Safety")."""
from __future__ import annotations

from pathlib import Path

from . import card, manifest


def _ours(out: Path, record: dict) -> bool:
    """A folder qwen2llama wrote: its conversion.json follows this tool's schema and every file in
    the folder is one it recorded, or its model card (so replacing it loses nothing of anyone else's)."""
    tool = record.get("tool")
    if not isinstance(tool, dict) or tool.get("name") != "qwen2llama":
        return False
    try:
        _, files = manifest.recorded_files(record)
    except manifest.ManifestUnreadable:
        return False
    return {p.name for p in out.iterdir()} - {manifest.NAME, card.NAME} <= set(files)


def _intact(out: Path, record: dict) -> bool:
    """Every recorded file present at its recorded size (an older conversion.json records no sizes)."""
    sizes = record.get("sizes")
    if not isinstance(sizes, dict) or set(sizes) != set(record["files"]):
        return False
    return all((out / name).is_file() and (out / name).stat().st_size == size for name, size in sizes.items())


def output_state(out: Path, fingerprint: str, need_verify: bool) -> tuple[str, dict | None]:
    """'absent', 'up to date', 'outdated' (ours, but another source, options or tool version, not
    verified, or a recorded file missing or of another size), or 'foreign' (not proven ours: no
    conversion.json, an unreadable one, or files it does not record)."""
    if not out.exists():
        return "absent", None
    if not out.is_dir():
        return "foreign", None
    try:
        record = manifest.read(out)
    except manifest.ManifestUnreadable:
        return "foreign", None
    if record is None or not _ours(out, record):
        return "foreign", None
    verified = isinstance(record.get("verify"), dict) and record["verify"].get("passed") is True
    if record.get("fingerprint") != fingerprint or (need_verify and not verified) or not _intact(out, record):
        return "outdated", record
    return "up to date", record
