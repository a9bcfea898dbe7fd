"""The one printer rule: every string that comes from a file, a path or the command line is shown
literally. `shown(value)` makes its control characters visible (`\\x1b`, `\\n`) and marks it as a
literal; `LiteralConsole`, the console every command prints through, renders our own markup around
marked values and never interprets a marked value (rich markup, its `\\[` escapes and `:emoji:`
codes would each change a name). Unmarked text still has its control characters shown and falls
back to plain text when its markup does not parse: a net, so nothing reaches the terminal raw."""
from __future__ import annotations

import re

from rich.console import Console
from rich.errors import MarkupError
from rich.text import Text

OPEN, CLOSE = "\ue000", "\ue001"  # private-use marks around a literal value (made visible inside one)
# C0 and C1 controls, DEL, the bidirectional overrides that reorder what a terminal shows, our marks,
# and the bytes of a name that is not UTF-8 (Python keeps them as lone surrogates)
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ue000\ue001\udc80-\udcff]")
_CONTROL_OR_NEWLINE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ue000\ue001\udc80-\udcff]")
_LITERAL = re.compile(f"{OPEN}([^{OPEN}{CLOSE}]*){CLOSE}")


def _visible(match: re.Match) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte: shown as that byte
        return f"\\x{code - 0xDC00:02x}"
    named = {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}.get(code)
    return named or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def visible(text: str, *, newlines: bool = False) -> str:
    """`text` with every control character written as its escape (`newlines`: \\n too)."""
    return (_CONTROL_OR_NEWLINE if newlines else _CONTROL).sub(_visible, text)


def shown(value) -> str:
    """A value from outside (a path, a name, a config string), to be printed exactly as it is."""
    return OPEN + visible(str(value), newlines=True) + CLOSE


def _markup(part: str) -> Text:
    """Our own markup (never an outside value's), control characters shown."""
    try:
        return Text.from_markup(visible(part), emoji=False)
    except MarkupError:
        return Text(visible(part))


def compose(line: str) -> Text:
    """A printed line: marked values literal, the rest our markup."""
    pieces = _LITERAL.split(line)  # even: markup; odd: a marked value
    return Text.assemble(*(Text(p) if k % 2 else _markup(p) for k, p in enumerate(pieces)))


class LiteralConsole(Console):
    def print(self, *objects, **kwargs) -> None:
        super().print(*(compose(o) if isinstance(o, str) else o for o in objects), **kwargs)
