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
    checks = "qwen2llama.verify.checks"
    assert "qwen2llama.qwen.checkpoint" in imports(checks, mods[checks])


def test_no_module_over_300_lines():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > 300}
    assert long == {}


FORMAT_MODULES = ("qwen2llama.formats.dense", "qwen2llama.formats.gptq")  # the registered formats


def test_no_module_outside_formats_imports_a_specific_format():
    """The plan, the writer, convert, the manifest and verify reach formats through the protocol
    (formats.format_for and the Format a plan carries), so a new format is one module there."""
    bad = {name: sorted(m for m in imports(name, path) if any(under(m, f) for f in FORMAT_MODULES))
           for name, path in modules().items() if not under(name, "qwen2llama.formats")}
    assert {k: v for k, v in bad.items() if v} == {}


def test_the_plan_convert_manifest_and_verify_never_name_a_format():
    names = ("gptq", "Gptq", "DENSE", "Dense", "quantization_config", "quantize_config")
    said = {}
    for name in ("qwen2llama.plan", "qwen2llama.convert", "qwen2llama.manifest", "qwen2llama.pipeline"):
        tree = ast.parse(modules()[name].read_text())
        code = [n for n in ast.walk(tree) if isinstance(n, (ast.Name, ast.Attribute, ast.Constant))]
        words = {getattr(n, "id", None) or getattr(n, "attr", None) or (n.value if isinstance(n.value, str)
                                                                          else None) for n in code}
        said[name] = sorted(w for w in words if isinstance(w, str) and any(x == w for x in names))
    assert said == {name: [] for name in said}, said


def _body_lines(fn: ast.FunctionDef) -> int:
    """A function's lines after its signature and docstring (a typer command's signature is a table
    of options)."""
    body = fn.body
    if len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return fn.end_lineno - body[0].lineno + 1


def test_no_function_over_50_lines():
    long = {f"{name}.{node.name}": n for name, path in modules().items()
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (n := _body_lines(node)) > 50}
    assert long == {}


def test_the_cli_and_batch_run_conversions_through_the_pipeline():
    """One `run` owns verify-before-publish: no command or job calls the writer or verify itself."""
    for name in ("qwen2llama.cli.commands", "qwen2llama.cli.adapter_command", "qwen2llama.batch"):
        found = imports(name, modules()[name])
        assert "qwen2llama.pipeline" in found, name
        direct = {"qwen2llama.convert.write", "qwen2llama.lora.convert.write_adapter",
                  "qwen2llama.verify.verify", "qwen2llama.lora.verify.verify_adapter",
                  "qwen2llama.verify.verify_golden"}
        assert not found & direct, (name, found & direct)


def test_the_command_line_starts_without_torch():
    """Every CLI subprocess (and every test that runs one) pays for what the command line imports
    at start; torch and transformers are imported by the commands that need them."""
    import subprocess
    import sys

    code = ("import sys, qwen2llama.cli, qwen2llama.pipeline; "
            "print(sorted({'torch', 'transformers'} & set(sys.modules)))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


TARGET_CLASSES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "LlamaConfig", "Qwen2Config", "LlamaDecoderLayer",
                  "Qwen2DecoderLayer", "LlamaRMSNorm", "Qwen2RMSNorm", "LlamaRotaryEmbedding",
                  "Qwen2RotaryEmbedding", "modeling_llama", "modeling_qwen2")


def _words(path: Path) -> set[str]:
    """Every name, attribute and string of a module (strings split into words)."""
    words = set()
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.Name):
            words.add(n.id)
        elif isinstance(n, ast.Attribute):
            words.add(n.attr)
        elif isinstance(n, ast.alias):
            words.update(n.name.split("."))
        elif isinstance(n, ast.Constant) and isinstance(n.value, str):
            words.update(w.strip(".,:;()'\"`") for w in n.value.replace(".", " ").split())
    return words


def test_no_module_outside_the_targets_names_a_target_class():
    """A layout's transformers classes are the target module's answer (targets/), so a new layout
    is one module there and verify loads whatever layout a folder declares."""
    said = {name: sorted(_words(path) & set(TARGET_CLASSES)) for name, path in modules().items()
            if not under(name, "qwen2llama.targets")}
    assert {k: v for k, v in said.items() if v} == {}
    targets = modules()["qwen2llama.targets.llama"]
    assert "LlamaForCausalLM" in _words(targets)  # the check reads what it claims to


def _import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (at any depth of its code), without the implicit
    edge from a module to its own package."""
    mods = modules()

    def module_of(name: str) -> str:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name

    return {name: {m for i in imports(name, path) if (m := module_of(i)) and m != name
                   and not name.startswith(m + ".")} for name, path in mods.items()}


def test_no_import_circle_in_the_library():
    graph = _import_graph()
    circles = []

    def visit(node: str, trail: list[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in trail:
                circles.append(trail[trail.index(nxt):] + [nxt])
            elif nxt not in done:
                visit(nxt, trail + [nxt])
        done.add(node)

    done: set[str] = set()
    for start in sorted(graph):
        if start not in done:
            visit(start, [start])
    assert circles == []
    assert "qwen2llama.jobs" in graph["qwen2llama.summary"]  # the graph sees real edges
