"""The storage layer: the restricted .bin reader, row reads, the safetensors header both ways."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from qwen2llama.errors import InputError
from qwen2llama.qwen.checkpoint import open_checkpoint
from qwen2llama.storage import header_bytes, read_ref, read_safetensors_header
from qwen2llama.synth import synthesize


def test_bin_reader_matches_torch_load(tmp_path):
    src = synthesize(tmp_path / "b", "tiny", fmt="bin", dtype="float32", shards=2)
    ckpt = open_checkpoint(src)
    index = json.loads((src / "pytorch_model.bin.index.json").read_text())
    for shard in sorted(set(index["weight_map"].values())):
        state = torch.load(src / shard, weights_only=True)
        for name, tensor in state.items():
            ref = ckpt.tensors[name]
            assert ref.shape == tuple(tensor.shape)
            assert torch.equal(read_ref(ref), tensor), name
            if tensor.dim() == 2:
                assert torch.equal(read_ref(ref, 2, 5), tensor[2:5])


def test_bin_with_non_contiguous_tensor_is_refused(tmp_path):
    src = synthesize(tmp_path / "b", "tiny", fmt="bin")
    state = torch.load(src / "pytorch_model.bin", weights_only=True)
    state["transformer.h.0.mlp.w1.weight"] = state["transformer.h.0.mlp.c_proj.weight"].T
    torch.save(state, src / "pytorch_model.bin")
    with pytest.raises(InputError, match="not contiguous"):
        open_checkpoint(src)


def test_header_we_write_is_what_safetensors_reads(tmp_path):
    """A file made of our header plus raw bytes loads with the safetensors library, and our
    reader finds each tensor at the byte range it was written to."""
    tensors = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3),
               "b": torch.ones(5, dtype=torch.bfloat16),
               "c": torch.arange(3, dtype=torch.int32)}
    codes = {torch.float32: "F32", torch.bfloat16: "BF16", torch.int32: "I32"}
    path = tmp_path / "x.safetensors"
    with open(path, "wb") as fh:
        fh.write(header_bytes([(n, codes[t.dtype], tuple(t.shape)) for n, t in tensors.items()]))
        for t in tensors.values():
            fh.write(t.contiguous().view(torch.uint8).numpy().tobytes())
    loaded = load_file(path)
    refs = read_safetensors_header(path)
    for name, t in tensors.items():
        assert torch.equal(loaded[name], t) and torch.equal(read_ref(refs[name]), t), name
    assert torch.equal(read_ref(refs["a"], 1, 2), tensors["a"][1:2])
