"""Where a Ctrl-C or SIGTERM may land. From the program's first moment to its command (`hold`) it is
noted, not raised, until the command's error wrapper is running (`release`), which turns one into
exit 130 with a short message; during a run, `signals_deferred` holds one for the steps a signal
must not cut in half.

Before that point a KeyboardInterrupt would land in an import or in typer building the command line
by introspection and print its traceback; and one raised inside code CPython runs through `exec`
(dataclasses, pydantic) marks the interpreter to end by SIGINT whatever the program then does.
Imports only `signal`: it runs before everything else.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

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


@contextmanager
def signals_deferred():
    """SIGINT and SIGTERM wait until the block ends, then raise KeyboardInterrupt as usual: for
    steps a signal must not cut in half (starting a child process and recording it, cleaning
    up). Python runs signal handlers in the main thread only, so elsewhere this changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    wanted = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) != signal.SIG_IGN]
    previous = {s: signal.signal(s, lambda signum, frame: held.append(signum)) for s in wanted}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if held:
            raise KeyboardInterrupt
