"""Weight conversion: exact bytes, equal logits, deterministic output, for every input variant."""
from __future__ import annotations

import json
import os

import pytest
import torch
from transformers import LlamaForCausalLM

from qwen2llama.convert import convert
from qwen2llama.qwen.checkpoint import open_checkpoint
from qwen2llama.reference import QwenReference


# The expected slices, stated from the spec (independently of qwen2llama.layout).
def expected_slices(cfg_layers: int, proj: int):
    yield "model.embed_tokens.weight", "transformer.wte.weight", None
    yield "model.norm.weight", "transformer.ln_f.weight", None
    yield "lm_head.weight", "lm_head.weight", None
    for i in range(cfg_layers):
        q, ll = f"transformer.h.{i}.", f"model.layers.{i}."
        for k, part in enumerate("qkv"):
            yield f"{ll}self_attn.{part}_proj.weight", f"{q}attn.c_attn.weight", (k * proj, (k + 1) * proj)
            yield f"{ll}self_attn.{part}_proj.bias", f"{q}attn.c_attn.bias", (k * proj, (k + 1) * proj)
        yield f"{ll}self_attn.o_proj.weight", f"{q}attn.c_proj.weight", None
        yield f"{ll}mlp.gate_proj.weight", f"{q}mlp.w2.weight", None
        yield f"{ll}mlp.up_proj.weight", f"{q}mlp.w1.weight", None
        yield f"{ll}mlp.down_proj.weight", f"{q}mlp.c_proj.weight", None
        yield f"{ll}input_layernorm.weight", f"{q}ln_1.weight", None
        yield f"{ll}post_attention_layernorm.weight", f"{q}ln_2.weight", None


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.uint8)


def test_tensors_are_byte_identical_slices(variant, sources, converted, source_tensor, output_tensors):
    cfg = open_checkpoint(sources[variant]).config
    out = output_tensors(converted[variant])
    seen = set()
    for llama_name, qwen_name, rows in expected_slices(cfg.num_layers, cfg.projection_size):
        src = source_tensor(sources[variant], qwen_name)
        if rows:
            src = src[rows[0]:rows[1]]
        assert out[llama_name].dtype == src.dtype, llama_name
        assert torch.equal(bits(out[llama_name]), bits(src)), llama_name
        seen.add(llama_name)
    for i in range(cfg.num_layers):
        bias = out[f"model.layers.{i}.self_attn.o_proj.bias"]
        assert bias.shape == (cfg.hidden_size,) and not bias.any()
        seen.add(f"model.layers.{i}.self_attn.o_proj.bias")
    assert set(out) == seen  # nothing extra (buffers dropped)


@pytest.mark.slow
def test_llama_logits_match_reference(variant, sources, converted):
    ref = QwenReference(open_checkpoint(sources[variant]))
    model = LlamaForCausalLM.from_pretrained(converted[variant], dtype=torch.float32).eval()
    seq_length = ref.cfg.seq_length
    gen = torch.Generator().manual_seed(0)
    for length in (1, 5, seq_length // 2, seq_length):
        ids = torch.randint(0, 151851, (length,), generator=gen).tolist()
        want = ref.logits(ids)
        with torch.no_grad():
            got = model(torch.tensor([ids])).logits[0]
        assert (got - want).abs().max().item() <= 1e-5, (variant, length)


def test_reference_differs_beyond_seq_length(sources, converted):
    """Past seq_length Qwen applies dynamic NTK + logn: the reference must see it (or the
    long-context report would be meaningless)."""
    ref = QwenReference(open_checkpoint(sources["st-single-fp32"]))
    model = LlamaForCausalLM.from_pretrained(converted["st-single-fp32"], dtype=torch.float32).eval()
    ids = torch.randint(0, 151851, (ref.cfg.seq_length + 16,),
                        generator=torch.Generator().manual_seed(3)).tolist()
    with torch.no_grad():
        diff = (model(torch.tensor([ids])).logits[0] - ref.logits(ids)).abs()
    # dynamic NTK rescales RoPE for the whole sequence once it is longer than seq_length
    assert diff[ref.cfg.seq_length:].max() > 1e-2


def test_config_values(sources, converted):
    cfg = json.loads((converted["72b-style"] / "config.json").read_text())
    assert cfg["rope_theta"] == 1e6 and "rope_parameters" not in cfg
    from transformers import LlamaConfig

    assert LlamaConfig.from_pretrained(converted["72b-style"]).rope_parameters["rope_theta"] == 1e6
    assert cfg["vocab_size"] == 152064
    assert cfg["attention_bias"] is True and cfg["intermediate_size"] == 128 and cfg["head_dim"] == 16
    assert cfg["bos_token_id"] == 151643 and cfg["pad_token_id"] == 151643
    original = json.loads((converted["original-2023-08-bin"] / "config.json").read_text())
    assert original["rms_norm_eps"] == 1e-5  # copied from the config, not assumed
    assert original["max_position_embeddings"] == 64  # seq_length, not n_positions
    assert original["eos_token_id"] == 151645  # a chat model (chat_format chatml)
    gen = json.loads((converted["original-2023-08-bin"] / "generation_config.json").read_text())
    assert 151645 in gen["eos_token_id"] and 151643 in gen["eos_token_id"]
    manifest = json.loads((converted["72b-style"] / "conversion.json").read_text())
    assert manifest["long_context"]["use_dynamic_ntk"] is False
    assert manifest["source"]["config"]["rotary_emb_base"] == 1e6


def test_sharded_output_has_index(converted, output_tensors):
    out = converted["st-sharded-bf16"]
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) > 1 and shards == sorted(set(index["weight_map"].values()))
    assert all(name.startswith("model-0000") and "-of-" in name for name in shards)
    tensors = output_tensors(out)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    single = converted["st-single-bf16"]
    assert (single / "model.safetensors").exists() and not (single / "model.safetensors.index.json").exists()


@pytest.mark.slow
def test_conversion_is_deterministic(variant, sources, converted, workdir):
    again = workdir / f"again-{variant}"
    convert(sources[variant], again, shard_size="20MB" if "sharded" in variant else "5GB")
    first = converted[variant]
    names = sorted(os.listdir(first))
    assert names == sorted(os.listdir(again))
    for name in names:
        assert (first / name).read_bytes() == (again / name).read_bytes(), name


def test_dtype_cast_float32_to_bfloat16(sources, workdir, source_tensor, output_tensors):
    out = workdir / "cast-bf16"
    convert(sources["st-single-fp32"], out, dtype="bfloat16")
    tensors = output_tensors(out)
    src = source_tensor(sources["st-single-fp32"], "transformer.h.0.mlp.w2.weight")
    assert torch.equal(bits(tensors["model.layers.0.mlp.gate_proj.weight"]), bits(src.to(torch.bfloat16)))
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_float16_overflow_is_refused(workdir):
    from safetensors.torch import load_file, save_file

    from qwen2llama.errors import InputError
    from qwen2llama.synth import synthesize

    src = synthesize(workdir / "overflow", "tiny", dtype="float32")
    tensors = load_file(src / "model.safetensors")
    tensors["transformer.h.1.mlp.w1.weight"][3, 4] = 1e6  # fits bf16/fp32, not fp16 (max 65504)
    save_file(tensors, src / "model.safetensors")
    with pytest.raises(InputError, match="transformer.h.1.mlp.w1.weight.*overflow"):
        convert(src, workdir / "overflow-out", dtype="float16")
    assert not (workdir / "overflow-out").exists()
