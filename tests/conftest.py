"""Shared fixtures: tiny Qwen checkpoints in every input variant, made by `synth`, converted once,
and readers for both sides that use the standard libraries (not ours)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from qwen2llama.convert import convert
from qwen2llama.synth import synthesize

# name -> synthesize() arguments. Every variant the converter must read.
VARIANTS = {
    "st-single-bf16": dict(preset="tiny", fmt="safetensors", shards=1, dtype="bfloat16"),
    "st-sharded-bf16": dict(preset="tiny", fmt="safetensors", shards=3, dtype="bfloat16", buffers=True),
    "bin-single-bf16": dict(preset="tiny", fmt="bin", shards=1, dtype="bfloat16"),
    "bin-sharded-fp32": dict(preset="tiny", fmt="bin", shards=2, dtype="float32", buffers=True),
    "st-single-fp32": dict(preset="tiny", fmt="safetensors", shards=1, dtype="float32"),
    "original-2023-08-bin": dict(preset="tiny-2023-08", fmt="bin", shards=1, dtype="bfloat16"),
    "72b-style": dict(preset="tiny-72b-style", fmt="safetensors", shards=2, dtype="bfloat16"),
}


def pytest_generate_tests(metafunc):
    """A test that takes `variant` runs once per input variant."""
    if "variant" in metafunc.fixturenames:
        metafunc.parametrize("variant", list(VARIANTS))


def shard_size_for(variant: str) -> str:
    return "20MB" if "sharded" in variant else "5GB"


@pytest.fixture(scope="session", autouse=True)
def tokenizer_cache(tmp_path_factory):
    """One tokenizer cache for the session (the CLI children inherit it), never the user's."""
    import os

    from qwen2llama.tokenizer import cache

    folder = tmp_path_factory.mktemp("tokenizer-cache")
    previous = os.environ.get(cache.ENV)
    os.environ[cache.ENV] = str(folder)
    yield folder
    if previous is None:
        del os.environ[cache.ENV]
    else:
        os.environ[cache.ENV] = previous


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("q2l")


@pytest.fixture(scope="session")
def sources(workdir) -> dict[str, Path]:
    return {name: synthesize(workdir / f"src-{name}", seed=k, **kw)
            for k, (name, kw) in enumerate(VARIANTS.items())}


@pytest.fixture(scope="session")
def converted(sources, workdir) -> dict[str, Path]:
    out = {}
    for name, src in sources.items():
        convert(src, workdir / f"out-{name}", shard_size=shard_size_for(name))
        out[name] = workdir / f"out-{name}"
    return out


def _source_tensor(folder: Path, name: str) -> torch.Tensor:
    from safetensors import safe_open

    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index_name).exists():
            shard = json.loads((folder / index_name).read_text())["weight_map"][name]
            break
    else:
        shard = "model.safetensors" if (folder / "model.safetensors").exists() else "pytorch_model.bin"
    if shard.endswith(".safetensors"):
        with safe_open(str(folder / shard), framework="pt") as fh:
            return fh.get_tensor(name)
    return torch.load(folder / shard, weights_only=True, mmap=True)[name]


def _output_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        out.update(load_file(path))
    return out


@pytest.fixture(scope="session")
def source_tensor():
    """source_tensor(folder, name): a tensor of a Qwen checkpoint, read with safetensors / torch.load."""
    return _source_tensor


@pytest.fixture(scope="session")
def output_tensors():
    """output_tensors(folder): every tensor of a converted folder, read with safetensors."""
    return _output_tensors
