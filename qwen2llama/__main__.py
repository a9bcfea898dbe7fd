"""`python -m qwen2llama` and the `qwen2llama` script: signal handling that starts before the
command line's modules are imported.

A Ctrl-C or SIGTERM while the program is still starting ends it as one during a run does: exit 130,
no traceback. The signal waits until the imports are done (publish.signals_deferred): raised inside
them, a KeyboardInterrupt that lands in code CPython runs through `exec` (dataclasses, pydantic)
marks the interpreter to end by SIGINT whatever the program then does, and Python prints an
import's traceback. For the same reason an interrupted command ends with os._exit(130) once its
clean-up has run and its message is out.
"""
import os
import signal
import sys


def _sigterm(signum, frame):
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _sigterm)
    from .publish import signals_deferred

    try:
        with signals_deferred():
            from .cli import entry
    except KeyboardInterrupt:
        sys.stderr.write("interrupted while starting: nothing was written\n")
        raise SystemExit(130) from None
    try:
        entry()
    except SystemExit as exc:
        if exc.code == 130:  # the command has cleaned up and said so
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)
        raise


if __name__ == "__main__":
    main()
