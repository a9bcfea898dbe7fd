"""Atomic output folders: build beside the target, rename into place only when complete.

A run killed at any moment leaves the target absent or as it was, plus at most a hidden
staging folder (and a lock file) that the next run for the same target removes. A lock on the
target keeps two runs from writing it at once, and publishing never replaces a folder that
appeared meanwhile unless --force was given.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputError
from .interrupts import signals_deferred
from .paths import check_output, output_path, real

STAGING_TAG = ".qwen2llama-staging-"
OLD_TAG = ".qwen2llama-old-"
LOCK_TAG = ".qwen2llama-lock"
EXISTS_FIX = "choose a new folder, or pass --force to replace it once the new one is complete"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _leftovers(out: Path):
    """(entry, is_old) for the staging and old folders that runs no longer alive left for `out`."""
    prefix = f".{out.name}"
    for entry in out.parent.glob(prefix + ".qwen2llama-*"):
        tag = entry.name[len(prefix):]
        if not tag.startswith((STAGING_TAG, OLD_TAG)):
            continue
        pid = tag.rsplit("-", 1)[-1]
        if pid.isdigit() and _pid_alive(int(pid)) and int(pid) != os.getpid():
            continue
        yield entry, tag.startswith(OLD_TAG)


def restore_set_aside(out: Path) -> None:
    """A run killed between publishing's two renames left the user's model set aside and `out`
    absent: put it back, so that every check sees it."""
    for entry, is_old in list(_leftovers(out)):
        if is_old and not os.path.lexists(out):
            try:
                entry.rename(out)
            except OSError:
                pass  # another run put it back first


def check_target(out: Path, *, force: bool, protect: list[Path] = ()) -> None:
    """Refuse targets that would destroy something: an existing folder without --force (also one
    that a killed --force run set aside, which is put back first), a file, a folder inside (or
    holding) anything in `protect` (what the run reads) or holding the current folder."""
    check_output(out, [real(p) for p in protect], "the output folder")  # the path rule (paths.py)
    parent = out.parent if out.parent != Path("") else Path(".")
    if parent.is_dir():
        restore_set_aside(out)
    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink():
            raise OutputError("the output path exists and is not a folder", path=out,
                              fix="choose another path")
        if not force:
            raise OutputError("the output folder already exists", path=out, fix=EXISTS_FIX)
    if not parent.is_dir():
        raise OutputError("the output's parent folder does not exist", path=parent, fix="create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError("cannot create folders here", path=parent, fix="choose a writable location")


def remove_stale(out: Path) -> list[Path]:
    """Remove the staging and old folders that killed runs left for `out` (after putting back a
    set-aside model)."""
    restore_set_aside(out)
    removed = []
    for entry, _ in _leftovers(out):
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
def target_lock(out: Path):
    """Hold an exclusive lock on `out` for the run; a second run for the same target fails at once."""
    path = out.parent / f".{out.name}{LOCK_TAG}"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputError("another qwen2llama run is writing this output folder", path=out,
                              fix="wait for it to finish, or choose another output folder") from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break  # the lock file we hold is still the one at the path
        except FileNotFoundError:
            pass
        os.close(fd)  # its holder removed it as we opened it: take the new one
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


_libc = ctypes.CDLL(None, use_errno=True)
_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


def rename_no_replace(src: Path, dst: Path) -> None:
    """rename(2) that fails with FileExistsError instead of replacing `dst` (renameat2 on Linux)."""
    renameat2 = getattr(_libc, "renameat2", None)
    if renameat2 is not None:
        if renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise FileExistsError(err, os.strerror(err), str(dst))
        if err not in (errno.ENOSYS, errno.EINVAL):  # anything but "not supported here"
            raise OSError(err, os.strerror(err), str(dst))
    if os.path.lexists(dst):  # no renameat2 here: check, then rename
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.rename(src, dst)


def publish(staging: Path, out: Path, *, force: bool) -> None:
    """Move the complete staging folder to `out`; with --force an existing `out` is replaced."""
    old = None
    if force and out.exists():
        old = out.parent / f".{out.name}{OLD_TAG}{os.getpid()}"
        out.rename(old)
    try:
        rename_no_replace(staging, out)
    except FileExistsError:
        raise OutputError("the output folder appeared while this run was writing (another program made it); "
                          "it was left as it is", path=out, fix=EXISTS_FIX) from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    fsync_path(out.parent)


@contextmanager
def staged_folder(out: Path, *, force: bool, protect: list[Path] = ()):
    """Yield a fresh staging folder beside `out`; on normal exit publish it as `out`
    (replacing the old one only then, and only with --force); on any error or interrupt remove it."""
    out = output_path(out)
    check_target(out, force=force, protect=protect)  # before taking a lock in a folder we may not write
    with target_lock(out):
        check_target(out, force=force, protect=protect)  # again, now that no other run can change it
        remove_stale(out)
        staging = out.parent / f".{out.name}{STAGING_TAG}{os.getpid()}"
        try:
            staging.mkdir()  # inside the try: a signal right after it still removes the folder
            yield staging
            fsync_path(staging)
            publish(staging, out, force=force)
        except BaseException:
            with signals_deferred():  # a second Ctrl-C must not cut the clean-up short
                shutil.rmtree(staging, ignore_errors=True)
            raise


def write_file(path: Path, write) -> None:
    """A single output file, whole or not at all: `write(tmp)` fills a hidden file beside `path`,
    which then replaces it (the caller has checked, paths.check_file_output, that it may)."""
    path = Path(path)
    tmp = path.parent / f".{path.name}{STAGING_TAG}{os.getpid()}"
    try:
        write(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent if str(path.parent) else Path("."))
