"""The ways the tests run the command line and judge its answer, in one place: in-process (`cli`,
`bad`), as a child process (`run_cli`, `spawn_cli`, `assert_bad_input`)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

from typer.testing import CliRunner

from qwen2llama.cli import app


def cli(*args, env=None):
    """The command in this process; never a traceback, whatever the exit code."""
    result = CliRunner().invoke(app, [str(a) for a in args], env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    return result


def bad(*args, needle, env=None):
    """The command is refused as bad input: exit 2, the needle and a fix in its message."""
    result = cli(*args, env=env)
    assert result.exit_code == 2 and needle in result.output, result.output
    assert "fix:" in result.output
    return result


def default_signals(then=None):
    """preexec_fn: SIGINT as the Unix default in the child. A shell started in the background
    (`make test &`, nohup, some CI runners) starts its children with SIGINT ignored, and a child
    keeps that; the tests must not depend on how they were started."""
    def preexec():
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if then is not None:
            then()
    return preexec


def run_cli(*args, env=None, preexec=None, timeout=600):
    """`python -m qwen2llama ARGS` as a child process (as a user or CI runs it)."""
    return subprocess.run([sys.executable, "-m", "qwen2llama", *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, preexec_fn=default_signals(preexec),
                          timeout=timeout)


def spawn_cli(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "qwen2llama", *map(str, args)],
                            preexec_fn=default_signals(), **kwargs)


def assert_bad_input(result, *needles):
    """A child's answer to bad input: exit 2, one screen, a fix, no traceback, every needle."""
    text = result.stdout + result.stderr
    assert result.returncode == 2, text
    assert "Traceback" not in text
    assert len(text.splitlines()) <= 20, text  # one screen
    assert "fix:" in text
    for needle in needles:
        assert needle in text, (needle, text)
