"""Progress reporting as a tiny interface, so the library stays free of terminal code."""
from __future__ import annotations


class Progress:
    def start(self, label: str, total: int, unit: str = "B") -> None: ...
    def advance(self, n: int) -> None: ...
    def finish(self) -> None: ...
    def note(self, message: str) -> None: ...

    def detail(self, where: str) -> None:
        """Where inside the current step the work is (layer k of n, prompt i of m, token t of T):
        a pulse for steps that take longer than a glance."""


class NullProgress(Progress):
    pass
