"""`python -m qwen2llama` and the `qwen2llama` script. Signals are held from the first moment
(interrupts.py) until a command's error wrapper runs; an interrupted command ends with
os._exit(130) once its clean-up has run and its message is out, because a KeyboardInterrupt that
passed through exec'd code would otherwise make CPython end the process by SIGINT instead."""
import os
import sys

from .interrupts import hold, release


def main() -> None:
    hold()
    from .cli import entry

    try:
        entry()
    except SystemExit as exc:
        code = exc.code
    else:
        code = 0
    try:
        release()  # a signal that came while no command ran (--help, a usage error)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted while starting: nothing was written\n")
        code = 130
    if code == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    sys.exit(code)


if __name__ == "__main__":
    main()
