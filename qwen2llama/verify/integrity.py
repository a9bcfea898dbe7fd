"""Check 1, integrity: every file's digest (the algorithm conversion.json names) against
conversion.json; files it does not list fail."""
from __future__ import annotations

from pathlib import Path

from .. import manifest
from .report import check, hashed_summary


UNHASHED = (manifest.NAME, "README.md")


def check_integrity(dst: Path) -> dict:
    try:
        record = manifest.read(dst)
        if record is None:
            note = f"no {manifest.NAME}: not written by qwen2llama, hashes not checked"
            return check(None, note, note=note)
        algorithm, files = manifest.recorded_files(record)
    except manifest.ManifestUnreadable as exc:
        return check(False, failures=[str(exc)])
    return check_files(dst, algorithm, files, "the manifest")


def check_files(dst: Path, algorithm: str, files: dict[str, str | None], against: str) -> dict:
    """Every recorded file present with its recorded digest, no file beside them (but the
    manifest); `against` names where the digests come from (the manifest or a golden file)."""
    failures, unhashed = [], []
    for name, digest in sorted(files.items()):
        path = dst / name
        if not path.is_file():
            failures.append(f"{name}: missing")
        elif digest is None:
            unhashed.append(name)  # converted with --no-checksums
        elif manifest.hash_file(path, algorithm) != digest:
            failures.append(f"{name}: {algorithm} differs from {against}")
    # conversion.json and the model card are written after the digests (they hold the verdict)
    extra = sorted(p.name for p in dst.iterdir() if p.name not in files and p.name not in UNHASHED)
    failures += [f"{name}: not in {against}" for name in extra]
    return check(not failures, hashed_summary(len(files) - len(unhashed), algorithm, len(unhashed)),
                 hash=algorithm, files=len(files) - len(unhashed), not_hashed=unhashed, failures=failures)
