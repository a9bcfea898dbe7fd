"""Small pieces: config normalisation, shard planning, the layout table, the .bin reader."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from qwen2llama import layout
from qwen2llama.errors import InputError
from qwen2llama.llama.shards import parse_size, plan_shards, shard_names
from qwen2llama.qwen.checkpoint import open_checkpoint, read_ref
from qwen2llama.qwen.config import parse_config
from qwen2llama.synth import load_preset, preset_names, synthesize


def test_both_config_generations_normalise_alike():
    new = parse_config(load_preset("qwen-7b"), Path("config.json"))
    old = parse_config(load_preset("qwen-7b-chat-2023-08"), Path("config.json"))
    assert (new.generation, old.generation) == ("v1.1", "original")
    for field in ("hidden_size", "num_layers", "num_heads", "head_dim", "intermediate_size_written", "vocab_rows",
                  "rotary_emb_base", "use_dynamic_ntk", "use_logn_attn"):
        assert getattr(new, field) == getattr(old, field), field
    assert old.seq_length == 2048 and new.seq_length == 8192
    assert old.max_position_field == 6144 and old.dtype == "bfloat16"


@pytest.mark.parametrize("preset,rows,base,mlp", [("qwen-72b", 152064, 1e6, 24576), ("qwen-14b", 152064, 10000, 13696),
                                                  ("qwen-1_8b", 151936, 10000, 5504)])
def test_release_presets(preset, rows, base, mlp):
    cfg = parse_config(load_preset(preset), Path("config.json"))
    assert (cfg.vocab_rows, cfg.rotary_emb_base, cfg.mlp_width) == (rows, base, mlp)


def test_presets_listed():
    assert {"tiny", "qwen-1_8b", "qwen-7b", "qwen-7b-chat-2023-08", "qwen-14b", "qwen-72b"} <= set(preset_names())


@pytest.mark.parametrize("edit,needle", [
    ({"rotary_pct": 0.5}, "rotary_pct"),
    ({"rope_theta": 5}, "rope_theta"),
    ({"intermediate_size": 255}, "odd"),
    ({"num_attention_heads": 0}, "positive integer"),
    ({"tie_word_embeddings": True}, "tie_word_embeddings"),
    ({"n_embd": 32}, "two different values"),
])
def test_config_rejections(edit, needle):
    raw = {**load_preset("tiny"), **edit}
    with pytest.raises(InputError, match=needle):
        parse_config(raw, Path("config.json"))


def test_parse_size():
    assert parse_size("5GB") == 5_000_000_000
    assert parse_size("2GiB") == 2 * 2**30
    assert parse_size("500MB") == 500_000_000
    assert parse_size("1234") == 1234
    for bad in ("five", "0GB", "5 parsecs"):
        with pytest.raises(InputError):
            parse_size(bad)


def test_plan_shards_by_sizes_only():
    assert plan_shards([4, 4, 4], 8) == [[0, 1], [2]]
    assert plan_shards([10, 1, 1], 8) == [[0], [1, 2]]  # an oversized tensor gets its own shard
    assert plan_shards([1] * 5, 100) == [[0, 1, 2, 3, 4]]
    sizes = [3, 7, 2, 9, 1, 4]
    groups = plan_shards(sizes, 10)
    assert [i for g in groups for i in g] == list(range(6))
    assert all(sum(sizes[i] for i in g) <= 10 or len(g) == 1 for g in groups)
    assert shard_names(1) == ["model.safetensors"]
    assert shard_names(3)[2] == "model-00003-of-00003.safetensors"


def test_layout_table_is_complete_and_row_split():
    assert set(layout.TENSOR_MAP) == set(layout.QWEN_SHAPES)
    targets = [t for outs in layout.TENSOR_MAP.values() for t, _ in outs]
    assert len(targets) == len(set(targets))
    assert layout.match("transformer.h.17.attn.c_attn.bias") == ("transformer.h.{i}.attn.c_attn.bias", 17)
    assert layout.match("transformer.h.x.attn.c_attn.bias") is None
    assert layout.is_dropped("transformer.h.3.attn.masked_bias") and layout.is_dropped("transformer.rotary_emb.inv_freq")
    assert not layout.is_dropped("transformer.h.3.attn.c_attn.bias")


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


def test_inspect_prints_plan(tmp_path):
    from typer.testing import CliRunner

    from qwen2llama.cli import app

    src = synthesize(tmp_path / "s", "tiny-2023-08", fmt="bin")
    result = CliRunner().invoke(app, ["inspect", str(src), "--tensors", "--shard-size", "10MB"])
    assert result.exit_code == 0, result.output
    assert "config generation original" in result.output and "kind:    chat" in result.output
    assert "model.layers.1.self_attn.k_proj.weight" in result.output and "c_attn.weight[64:128]" in result.output
    assert not any(p.name.startswith("model") and p.suffix == ".safetensors" for p in src.iterdir())


def test_long_prompt_budget():
    from qwen2llama.verify import LONG_PROMPT_MAX_FLOPS, long_prompt_flops

    def flops(preset):
        cfg = parse_config(load_preset(preset), Path("config.json"))
        return long_prompt_flops(cfg, cfg.seq_length)

    assert flops("tiny") < LONG_PROMPT_MAX_FLOPS < flops("qwen-1_8b") < flops("qwen-7b") < flops("qwen-72b")


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


def test_version_and_help():
    from typer.testing import CliRunner

    from qwen2llama import __version__
    from qwen2llama.cli import app

    runner = CliRunner()
    assert runner.invoke(app, ["--version"]).output.strip() == f"qwen2llama {__version__}"
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("inspect", "convert", "verify", "tokenizer", "synth"):
        assert command in result.output
