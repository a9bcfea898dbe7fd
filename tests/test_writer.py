"""The streaming writer: chunking does not change a byte, and NaN/Inf is reported at its element."""
from __future__ import annotations

import pytest

from qwen2llama.errors import InputError
from qwen2llama.synth import synthesize


def test_small_chunks_same_bytes_and_nan_position(tmp_path, monkeypatch):
    """Tensors spanning many read chunks, several shards: the same files (and checksums) as with
    the default chunk size, and a NaN deep in a tensor is reported at its element."""
    from safetensors.torch import load_file, save_file

    from qwen2llama.convert import convert
    from qwen2llama.llama import writer

    src = synthesize(tmp_path / "s", "tiny")
    convert(src, tmp_path / "default", shard_size="15MB")
    monkeypatch.setattr(writer, "CHUNK", 1000)
    monkeypatch.setattr(writer, "RELEASE", 5000)
    convert(src, tmp_path / "small", shard_size="15MB")
    shards = sorted(p.name for p in (tmp_path / "small").glob("*.safetensors"))
    assert len(shards) > 1
    for name in shards + ["conversion.json"]:
        assert (tmp_path / "small" / name).read_bytes() == (tmp_path / "default" / name).read_bytes()
    tensors = load_file(src / "model.safetensors")
    flat = tensors["transformer.wte.weight"].view(-1)
    flat[flat.numel() - 7] = float("nan")
    save_file(tensors, src / "model.safetensors")
    with pytest.raises(InputError, match=f"element {flat.numel() - 7} of"):
        convert(src, tmp_path / "out2")
