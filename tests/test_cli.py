"""The command line itself: help, version, the plan that inspect prints."""
from __future__ import annotations

from typer.testing import CliRunner

from qwen2llama import __version__
from qwen2llama.cli import app
from qwen2llama.synth import synthesize


def test_inspect_prints_plan(tmp_path):
    src = synthesize(tmp_path / "s", "tiny-2023-08", fmt="bin")
    result = CliRunner().invoke(app, ["inspect", str(src), "--tensors", "--shard-size", "10MB"])
    assert result.exit_code == 0, result.output
    assert "config generation original" in result.output and "kind:    chat" in result.output
    assert "model.layers.1.self_attn.k_proj.weight" in result.output
    assert "c_attn.weight[64:128]" in result.output
    assert not any(p.name.startswith("model") and p.suffix == ".safetensors" for p in src.iterdir())


def test_version_and_help():
    runner = CliRunner()
    assert runner.invoke(app, ["--version"]).output.strip() == f"qwen2llama {__version__}"
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("inspect", "convert", "verify", "tokenizer", "synth"):
        assert command in result.output
