"""Qwen config normalisation: both generations of field names, the release presets, rejections."""
from __future__ import annotations

from pathlib import Path

import pytest

from qwen2llama.errors import InputError
from qwen2llama.qwen.config import parse_config
from qwen2llama.synth import load_preset, preset_names


def test_both_config_generations_normalise_alike():
    new = parse_config(load_preset("qwen-7b"), Path("config.json"))
    old = parse_config(load_preset("qwen-7b-chat-2023-08"), Path("config.json"))
    assert (new.generation, old.generation) == ("v1.1", "original")
    for field in ("hidden_size", "num_layers", "num_heads", "head_dim", "intermediate_size_written",
                  "vocab_rows",
                  "rotary_emb_base", "use_dynamic_ntk", "use_logn_attn"):
        assert getattr(new, field) == getattr(old, field), field
    assert old.seq_length == 2048 and new.seq_length == 8192
    assert old.max_position_field == 6144 and old.dtype == "bfloat16"


@pytest.mark.parametrize("preset,rows,base,mlp", [("qwen-72b", 152064, 1e6, 24576),
                                                  ("qwen-14b", 152064, 10000, 13696),
                                                  ("qwen-1_8b", 151936, 10000, 5504)])
def test_release_presets(preset, rows, base, mlp):
    cfg = parse_config(load_preset(preset), Path("config.json"))
    assert (cfg.vocab_rows, cfg.rotary_emb_base, cfg.mlp_width) == (rows, base, mlp)


def test_presets_listed():
    assert {"tiny", "qwen-1_8b", "qwen-7b", "qwen-7b-chat-2023-08", "qwen-14b",
            "qwen-72b"} <= set(preset_names())


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
