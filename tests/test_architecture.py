"""The rules that keep the package legible and verification honest, checked on the source."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import qwen2llama

PACKAGE = Path(qwen2llama.__file__).parent


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(name: str, path: Path) -> set[str]:
    """Every qwen2llama module that `name` imports, relative imports resolved."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.startswith("qwen2llama")}


def under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


RULES = [  # (importer, imported, why)
    ("qwen2llama.qwen", "qwen2llama.llama", "the source side and the target side meet only in layout/plan"),
    ("qwen2llama.llama", "qwen2llama.qwen", "the source side and the target side meet only in layout/plan"),
    ("qwen2llama.verify", "qwen2llama.convert", "verification must not depend on the converter"),
    ("qwen2llama.reference", "qwen2llama.layout", "a mapping bug must show as a logit difference"),
    ("qwen2llama.reference", "qwen2llama.formats", "a mapping bug must show as a logit difference"),
    ("qwen2llama.storage", "qwen2llama.qwen", "storage is the bottom layer"),
    ("qwen2llama.storage", "qwen2llama.llama", "storage is the bottom layer"),
]


@pytest.mark.parametrize("importer,imported,why", RULES)
def test_import_rule(importer, imported, why):
    bad = [(name, sorted(m for m in imports(name, path) if under(m, imported)))
           for name, path in modules().items() if under(name, importer)]
    assert not [b for b in bad if b[1]], f"{why}: {bad}"


def test_library_never_imports_the_cli():
    bad = [name for name, path in modules().items()
           if not under(name, "qwen2llama.cli") and name != "qwen2llama.__main__"
           and any(under(m, "qwen2llama.cli") for m in imports(name, path))]
    assert bad == []


def test_rules_see_real_imports():
    """The checker itself resolves relative imports (or every rule above would pass vacuously)."""
    mods = modules()
    assert "qwen2llama.storage" in imports("qwen2llama.qwen.checkpoint", mods["qwen2llama.qwen.checkpoint"])
    assert "qwen2llama.qwen.checkpoint" in imports("qwen2llama.verify", mods["qwen2llama.verify"])


def test_no_module_over_300_lines():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > 300}
    assert long == {}
