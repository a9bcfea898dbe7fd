"""The path rule: nothing a run writes, replaces or deletes may equal, contain or lie inside
anything the run reads — with or without --force. Paths are compared after `realpath`
(symlinks followed, so a hub-cache snapshot's links count as their blobs).

`reads_of(...)` lists what a run reads; `check_output(path, reads)` refuses an output that
breaks the rule, before a byte is written. `check_file_output` adds what a single output file
(a golden file) needs: no replacing without --force, an existing writable parent folder.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from .errors import OutputError


def real(path: str | Path) -> Path:
    return Path(os.path.realpath(path))


def output_path(path: str | Path) -> Path:
    """The path the OS will write for an output, resolved as the OS resolves it — symlinks first,
    then `..` — before any rule judges it: its folder through realpath, its own name kept (an
    output that is itself a link is refused by the rules, never followed). `dd/L/../x`, with L a
    link to far/deep, is dd/far/x, not the dd/x that normalising the string would give."""
    path = Path(path)
    if path.name in ("", ".", ".."):  # names a folder by reference: the folder it resolves to
        return real(path)
    return real(path.parent if str(path.parent) else ".") / path.name


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def reads_of(*sources) -> list[Path]:
    """Every path the given inputs read: a checkpoint (its folder, weight files and the files it
    took from elsewhere: --base, the bundled vocabulary), an adapter (its folder and files), or a
    plain path; each resolved. None and a plain path that does not exist (a hub id, which is
    resolved when it is opened) are skipped."""
    out: list[Path] = []
    for src in sources:
        if src is None:
            continue
        if isinstance(src, (str, Path)):
            if Path(src).exists():
                out.append(real(src))
            continue
        out.append(real(src.folder))
        out += [real(p) for p in getattr(src, "files", ())]
        out += [real(p) for p in getattr(src, "companions", {}).values()]
    return list(dict.fromkeys(out))


def check_output(path: str | Path, reads: Iterable[Path], what: str = "the output") -> None:
    """Refuse an output that equals, holds or lies inside a path the run reads, or that holds the
    current folder (an output of "" or "." would replace the folder the user works in)."""
    target = real(output_path(path))
    for r in reads:
        if _inside(target, r) or _inside(r, target):
            raise OutputError(f"{what} overlaps the source or another input of this run ({r})", path=path,
                              fix="write outputs outside every input (source, --base, adapters, "
                                  "converted base)")
    if _inside(real(os.getcwd()), target):
        raise OutputError(f"{what} {path} is the current folder or holds it", path=path,
                          fix="name a new folder for the output")


def check_file_output(path: str | Path, reads: Iterable[Path], *, force: bool, what: str = "the output file",
                      inside: Iterable[Path] = ()) -> None:
    """A single output file: the path rule, not inside a folder this run replaces (`inside`), only
    ever a regular file (not a folder, a device, a FIFO or a link), not replaced without --force, in
    an existing writable folder."""
    path = output_path(path)
    check_output(path, reads, what)
    for folder in inside:
        if _inside(real(path), real(folder)):
            raise OutputError(f"{what} {path} lies inside the output folder {folder}, which this run "
                              "replaces",
                              path=path, fix="write it beside the output folder, not into it")
    if path.is_dir():
        raise OutputError(f"{what} is a folder", path=path, fix="give a file name")
    if os.path.lexists(path) and (path.is_symlink() or not path.is_file()):
        raise OutputError(f"{what} exists and is not a regular file (a link, device or FIFO): outputs "
                          "are only ever regular files", path=path,
                          fix="give the path of a new or regular file")
    if path.exists() and not force:
        raise OutputError(f"{what} already exists", path=path,
                          fix="choose a new file name, or pass --force to replace it")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"the folder for {what} does not exist", path=parent, fix="create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {what} here", path=parent, fix="choose a writable location")
