"""The README and docs/ hold together: every relative link and anchor resolves, and every command
and option the command line has is documented somewhere."""
from __future__ import annotations

import re
from pathlib import Path

import typer.main

from qwen2llama.cli import app

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(page: Path) -> set[str]:
    """GitHub's heading slugs: lower case, punctuation dropped, spaces as dashes."""
    heads = [line.lstrip("#").strip() for line in page.read_text().splitlines() if line.startswith("#")]
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}


def test_every_relative_link_and_anchor_resolves():
    checked = 0
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # a URL, not a file here
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            assert dest.exists(), f"{page.name}: {target} -> {dest} does not exist"
            if anchor:
                assert anchor in _anchors(dest), f"{page.name}: no heading for #{anchor} in {dest.name}"
            checked += 1
    assert checked >= len(PAGES)  # the README links every page, every page links back


def test_every_command_and_option_is_documented():
    text = "\n".join(page.read_text() for page in PAGES)
    cli = typer.main.get_command(app)
    missing = []
    for name, command in cli.commands.items():
        if f"qwen2llama {name}" not in text:
            missing.append(name)
        for param in command.params:
            missing += [f"{name} {opt}" for opt in param.opts if opt.startswith("--") and opt not in text]
    assert missing == []
    assert len(cli.commands) >= 8


def test_help_shows_no_type_placeholders_on_flags():
    """A flag takes no value: its help line shows none (typer would print `<bool>`)."""
    from typer.testing import CliRunner

    cli = typer.main.get_command(app)
    for name in cli.commands:
        result = CliRunner().invoke(app, [name, "--help"], env={"COLUMNS": "160"})
        assert result.exit_code == 0, result.output
        shown = [line for line in result.output.splitlines() if "<bool>" in line and "--help" not in line]
        assert shown == [], (name, shown)
        usage = next(line.strip() for line in result.output.splitlines() if "Usage:" in line)
        assert re.fullmatch(rf"Usage: \S+ {name} \[OPTIONS\]( \[?[A-Z_]+\]?(\.\.\.)?)+", usage), usage
