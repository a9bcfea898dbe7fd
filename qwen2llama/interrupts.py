"""Ctrl-C and SIGTERM from the program's first moment to its command: noted, not raised, until the
command's error wrapper is running (`release`), which turns one into exit 130 with a short message.

Before that point a KeyboardInterrupt would land in an import or in typer building the command line
by introspection and print its traceback; and one raised inside code CPython runs through `exec`
(dataclasses, pydantic) marks the interpreter to end by SIGINT whatever the program then does.
Imports only `signal`: it runs before everything else.
"""
from __future__ import annotations

import signal
import threading

_held: list[int] = []
_holding: set[int] = set()


def _note(signum, frame):
    _held.append(signum)


def _raise(signum, frame):
    raise KeyboardInterrupt


def hold() -> None:
    """Note SIGINT and SIGTERM from now on (a SIGINT the shell ignores stays ignored)."""
    for s in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(s) != signal.SIG_IGN:
            signal.signal(s, _note)
            _holding.add(s)


def release() -> None:
    """Signals raise KeyboardInterrupt from here on (SIGTERM too); one noted while held is raised now."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.SIGINT in _holding:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGTERM) != signal.SIG_IGN:
        signal.signal(signal.SIGTERM, _raise)
    _holding.clear()
    if _held:
        _held.clear()
        raise KeyboardInterrupt
