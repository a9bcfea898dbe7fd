"""The one printer rule: every string that comes from a file, a path or the command line is shown
literally. `shown(value)` escapes rich markup and makes control characters visible (`\\x1b`, `\\n`);
`LiteralConsole` is the console every command prints through: it shows control characters in
anything it prints visibly too, and prints a line whose markup does not parse as plain text rather
than failing — a net under `shown`, so that a missed value can never reach the terminal raw."""
from __future__ import annotations

import re

from rich.console import Console
from rich.errors import MarkupError
from rich.markup import escape

# C0 and C1 controls, DEL, and the bidirectional overrides that reorder what a terminal shows
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_CONTROL_OR_NEWLINE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _visible(match: re.Match) -> str:
    code = ord(match.group())
    named = {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}.get(code)
    return named or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def visible(text: str, *, newlines: bool = False) -> str:
    """`text` with every control character written as its escape (`newlines`: \\n too)."""
    return (_CONTROL_OR_NEWLINE if newlines else _CONTROL).sub(_visible, text)


def shown(value) -> str:
    """A value from outside (a path, a name, a config string) as printable, literal rich text."""
    return escape(visible(str(value), newlines=True))


class LiteralConsole(Console):
    def print(self, *objects, **kwargs) -> None:
        objects = tuple(visible(o) if isinstance(o, str) else o for o in objects)
        try:
            super().print(*objects, **kwargs)
        except MarkupError:
            super().print(*objects, **{**kwargs, "markup": False})
