"""The `qwen2llama` command line: parse, call the library, render, map errors to exit codes.
`app.py` holds the app and the error wrapper; the command modules register themselves on import
(the single-model commands first, so that help lists them first)."""
from . import commands  # noqa: F401,I001  (registers inspect, convert, verify, golden, tokenizer, synth)
from . import adapter_command  # noqa: F401  (registers adapter)
from . import batch_command  # noqa: F401  (registers batch)
from .app import app, entry

__all__ = ["app", "entry"]
