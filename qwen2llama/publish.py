"""Atomic output folders: build beside the target, rename into place only when complete.

A run killed at any moment leaves the target absent or as it was, plus at most a hidden
staging folder that the next run for the same target removes.
"""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputError

STAGING_TAG = ".qwen2llama-staging-"
OLD_TAG = ".qwen2llama-old-"


def _is_inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def check_target(out: Path, *, force: bool, protect: list[Path] = ()) -> None:
    """Refuse targets that would destroy something: an existing folder without --force, a file,
    a folder inside (or holding) one of `protect` (the source)."""
    for p in protect:
        if _is_inside(out, p) or _is_inside(p, out):
            raise OutputError(f"the output folder overlaps the source {p}", path=out,
                              fix="write the converted model to a folder outside the source folder")
    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink():
            raise OutputError("the output path exists and is not a folder", path=out, fix="choose another path")
        if not force:
            raise OutputError("the output folder already exists", path=out,
                              fix="choose a new folder, or pass --force to replace it once the new one is complete")
    parent = out.parent if out.parent != Path("") else Path(".")
    if not parent.is_dir():
        raise OutputError("the output's parent folder does not exist", path=parent, fix="create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError("cannot create folders here", path=parent, fix="choose a writable location")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(out: Path) -> list[Path]:
    """Remove staging/old folders that earlier, killed runs left for this target."""
    removed = []
    prefix = f".{out.name}"
    for entry in out.parent.glob(prefix + ".qwen2llama-*"):
        tag = entry.name[len(prefix):]
        if not tag.startswith((STAGING_TAG, OLD_TAG)):
            continue
        pid = tag.rsplit("-", 1)[-1]
        if pid.isdigit() and _pid_alive(int(pid)) and int(pid) != os.getpid():
            continue
        if tag.startswith(OLD_TAG) and not out.exists():
            # killed between the two renames: the old folder is the user's model, put it back
            entry.rename(out)
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's entries to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def staged_folder(out: Path, *, force: bool, protect: list[Path] = ()):
    """Yield a fresh staging folder beside `out`; on normal exit publish it as `out`
    (replacing the old one only then); on any error or interrupt remove it."""
    out = Path(os.path.abspath(out))
    check_target(out, force=force, protect=protect)
    remove_stale(out)
    staging = out.parent / f".{out.name}{STAGING_TAG}{os.getpid()}"
    staging.mkdir()
    try:
        yield staging
        fsync_path(staging)
        publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def publish(staging: Path, out: Path) -> None:
    if out.exists():
        old = out.parent / f".{out.name}{OLD_TAG}{os.getpid()}"
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(out)
    fsync_path(out.parent)
