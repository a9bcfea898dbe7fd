"""The verify report: one verdict per check, and the whole result.

Schema (README "Report schema"): {"passed", "source", "output", "quick", "seconds",
"peak_rss_mib", "checks": {name: {"passed": true|false|null, ..., "failures": [...]}}}.
A check's `passed` is null when it was skipped; the result fails if any check is false.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError, VerificationFailed

CHECKS = ("integrity", "tensors", "config", "tokenizer", "logits")
MAX_FAILURES = 50  # failure lines kept per check


# What to do when a check fails, shown under its failures.
FIXES = {
    "integrity": "the folder changed after conversion: convert again, or restore the files",
    "tensors": "convert again with qwen2llama; the listed tensors are not the source's slices",
    "config": "convert again with qwen2llama (it writes every value explicitly), or set the listed "
              "fields as expected",
    "tokenizer": "write the tokenizer with `qwen2llama tokenizer qwen.tiktoken DST --kind chat|base` "
                 "(or convert again)",
    "logits": "convert again with qwen2llama; the report's layers show where the models part",
}


@dataclass(frozen=True)
class VerifyOptions:
    """What verify checks (`quick` prompts or the full set, a prompts file, greedy tokens, the long
    prompt) and where its verdict goes besides the screen (pipeline.report)."""

    quick: bool = False
    prompts: Path | None = None
    greedy_tokens: int | None = None
    long_prompt: bool | None = None
    report: Path | None = None  # the JSON report (README "Report schema")
    junit: Path | None = None  # JUnit XML, a test case per check
    github_summary: bool = True  # appended to $GITHUB_STEP_SUMMARY when it is set
    device: str = "auto"  # where the logits check computes: auto | cpu | cuda | mps (verify/device.py)

    def __post_init__(self):
        from .prompts import MAX_GREEDY

        from .device import check_name

        check_name(self.device)
        n = self.greedy_tokens
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_GREEDY):
            raise InputError(f"--greedy-tokens {n!r} is not a count from 0 to {MAX_GREEDY}",
                             fix=f"give 0 to {MAX_GREEDY} tokens per prompt (the bound of golden files too)")


def check(passed: bool | None, summary: str = "", **details) -> dict:
    """One check's verdict with its details. `summary`: the one line a person reads beside the
    verdict, written by the check that knows what it measured (the renderer never guesses)."""
    if "failures" in details:
        details["failures"] = details["failures"][:MAX_FAILURES]
    return {"passed": passed, "summary": summary, **details}


def hashed_summary(files: int, algorithm: str, not_hashed: int = 0) -> str:
    return f"{files} files hashed ({algorithm})" + (
        f", {not_hashed} without a recorded digest (--no-checksums)" if not_hashed else "")


def tensors_summary(found: dict) -> str:
    return (f"{found['identical']}/{found['tensors']} tensors identical, "
            f"{found['bytes_compared'] / 1e9:.3f} GB compared")


def with_fixes(checks: dict[str, dict]) -> dict[str, dict]:
    """Each failed check gets its fix line."""
    for name, c in checks.items():
        if c["passed"] is False and name in FIXES:
            c.setdefault("fix", FIXES[name])
    return checks


class VerifyResult(dict):
    def write(self, path) -> None:
        """The report as JSON (README "Report schema")."""
        Path(path).write_text(json.dumps(self, indent=2, sort_keys=True) + "\n")

    def failed_checks(self) -> list[str]:
        return [name for name, c in self["checks"].items() if c["passed"] is False]

    def raise_if_failed(self) -> None:
        """VerificationFailed, carrying this verdict as its `result`, when a check failed."""
        if not self["passed"]:
            exc = VerificationFailed(f"verify failed: {', '.join(self.failed_checks())}", path=self["output"],
                                     fix="see the report; reconvert with the current qwen2llama")
            exc.result = self
            raise exc
