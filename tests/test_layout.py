"""The mapping table, the dense format piece, the plan's order, and shard planning."""
from __future__ import annotations

import pytest

from qwen2llama import layout
from qwen2llama.errors import InputError
from qwen2llama.formats import dense
from qwen2llama.llama.shards import parse_size, plan_shards, shard_names
from qwen2llama.plan import build_plan
from qwen2llama.qwen.checkpoint import open_checkpoint
from qwen2llama.synth import synthesize
from qwen2llama.targets.llama import LLAMA
from qwen2llama.targets.qwen2 import QWEN2


def test_table_targets_are_unique_and_splits_cover_every_feature():
    targets = [s.llama for m in layout.MODULES for s in m.into]
    assert len(targets) == len(set(targets))
    for module in layout.MODULES:
        counts = {s.count for s in module.into}
        assert len(counts) == 1, module.qwen
        assert sorted(s.index for s in module.into) == list(range(counts.pop())), module.qwen
    assert layout.is_dropped("transformer.h.3.attn.masked_bias")
    assert layout.is_dropped("transformer.rotary_emb.inv_freq")
    assert not layout.is_dropped("transformer.h.3.attn.c_attn.bias")


def test_dense_format_splits_rows_and_adds_zero_bias(tmp_path):
    ckpt = open_checkpoint(synthesize(tmp_path / "s", "tiny"))
    c_attn, c_proj = (next(m for m in layout.LAYER if m.qwen.endswith(n)) for n in ("c_attn", "attn.c_proj"))
    p, h = ckpt.config.projection_size, ckpt.config.hidden_size
    stored = dense.stored(c_attn, layout.feature_sizes(ckpt.config))
    assert {k: v.shape for k, v in stored.items()} == {"weight": (3 * p, h), "bias": (3 * p,)}
    refs = {s: ckpt.tensors[f"transformer.h.1.attn.c_attn.{s}"] for s in ("weight", "bias")}
    out = dense.DENSE.outputs(c_attn, 1, refs, "BF16", LLAMA)
    assert [(t.name, t.row_start, t.row_stop, t.source.name) for t in out] == [
        (f"model.layers.1.self_attn.{x}_proj.{s}", k * p, (k + 1) * p, f"transformer.h.1.attn.c_attn.{s}")
        for s in ("weight", "bias") for k, x in enumerate("qkv")]
    o_proj = {"weight": ckpt.tensors["transformer.h.0.attn.c_proj.weight"]}
    (o_weight, o_bias) = dense.DENSE.outputs(c_proj, 0, o_proj, "BF16", LLAMA)
    assert [t.name for t in dense.DENSE.outputs(c_proj, 0, o_proj, "BF16", QWEN2)] == [o_weight.name]
    assert o_weight.name == "model.layers.0.self_attn.o_proj.weight" and o_weight.is_byte_copy
    assert (o_bias.name, o_bias.source, o_bias.shape) == ("model.layers.0.self_attn.o_proj.bias", None,
                                                          (ckpt.config.hidden_size,))


def test_plan_follows_the_table_order(tmp_path):
    ckpt = open_checkpoint(synthesize(tmp_path / "s", "tiny"))
    names = [t.name for t in build_plan(ckpt).tensors]
    assert names[0] == "model.embed_tokens.weight" and names[-2:] == ["model.norm.weight", "lm_head.weight"]
    layer0 = [n for n in names if n.startswith("model.layers.0.")]
    assert layer0 == ["model.layers.0." + n for n in (
        "input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
                                                      "self_attn.v_proj.weight",
        "self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias", "self_attn.o_proj.weight",
        "self_attn.o_proj.bias", "post_attention_layernorm.weight", "mlp.gate_proj.weight",
                                                      "mlp.up_proj.weight",
        "mlp.down_proj.weight")]
    layer1 = names.index("model.layers.1.input_layernorm.weight")
    assert layer1 > names.index("model.layers.0.mlp.down_proj.weight")


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
