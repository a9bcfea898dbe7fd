"""GPTQ files as the quantizers write them (synth.gptq.STYLES): AutoGPTQ's float16 bias on every
quantized linear (zeros where the float layer had none), gptqmodel's bf16 model beside float16
scales and its settings under `meta`. Exact conversion, the bias rules, and the checks that catch
a bias the output leaves out. (`make e2e` packs with the libraries' own code: tests/e2e_gptq.py.)"""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from qwen2llama.cli import app
from qwen2llama.convert import convert
from qwen2llama.formats import Gptq
from qwen2llama.synth import synthesize
from qwen2llama.verify import verify

from defects import edit_weights
from test_gptq import _tensors

pytestmark = pytest.mark.slow  # eight conversions and verifies; tests/test_gptq.py covers the inner loop

LAYERS = 2
# Every style, bit width and shard count, each pair of them once: style, bits and shards touch
# independent code (what is stored, how words pack, where tensors land), so the full product of 8
# costs twice the time for no path more.
COMBOS = [("autogptq", 4, 1), ("autogptq", 8, 3), ("gptqmodel", 4, 3), ("gptqmodel", 8, 1)]
MLP = ("mlp.w2", "mlp.w1", "mlp.c_proj")  # -> gate, up, down
LLAMA_MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


@pytest.fixture(scope="module")
def styled(tmp_path_factory):
    root = tmp_path_factory.mktemp("styles")
    made = {}
    for style, bits, shards in COMBOS:
        src = synthesize(root / f"src-{style}-{bits}-{shards}", f"tiny-int{bits}", shards=shards,
                         seed=bits + shards, gptq_style=style)
        out = root / f"out-{style}-{bits}-{shards}"
        convert(src, out, shard_size="20MB" if shards > 1 else "5GB")
        made[style, bits, shards] = (src, out)
    return made


@pytest.mark.parametrize("style,bits,shards", COMBOS)
def test_quantizer_files_convert_exactly(styled, style, bits, shards):
    src, out = styled[style, bits, shards]
    a, b = _tensors(src), _tensors(out)
    for i in range(LAYERS):
        p = f"transformer.h.{i}."
        for qwen, llama in zip(("attn.c_proj",) + MLP, ("self_attn.o_proj",) + LLAMA_MLP):
            for suffix in ("qweight", "qzeros", "scales", "g_idx"):
                assert torch.equal(b[f"model.layers.{i}.{llama}.{suffix}"].view(torch.uint8),
                                   a[f"{p}{qwen}.{suffix}"].view(torch.uint8)), (qwen, suffix)
        o_bias = b[f"model.layers.{i}.self_attn.o_proj.bias"]
        if style == "autogptq":  # c_proj's own (zero) bias, copied; the MLP's zero biases dropped
            assert torch.equal(o_bias, a[p + "attn.c_proj.bias"]) and not o_bias.any()
            assert all(not a[f"{p}{m}.bias"].any() for m in MLP)
        assert not any(f"model.layers.{i}.{m}.bias" in b for m in LLAMA_MLP)
    config = json.loads((out / "config.json").read_text())
    assert config["mlp_bias"] is False
    quant = config["quantization_config"]
    assert "is_marlin_format" not in quant and "model_file_base_name" not in quant
    assert quant["checkpoint_format"] == "gptq" and quant["bits"] == bits
    manifest = json.loads((out / "conversion.json").read_text())
    if style == "autogptq":
        assert len(manifest["dropped_zero_tensors"]) == 3 * LAYERS
        assert all(t.dtype in (torch.float16, torch.int32) for t in b.values())
    else:
        assert "dropped_zero_tensors" not in manifest
        assert b["model.embed_tokens.weight"].dtype == torch.bfloat16 == b["model.norm.weight"].dtype
        assert b["model.layers.0.self_attn.q_proj.scales"].dtype == torch.float16
        assert config["torch_dtype"] == "bfloat16"
        assert quant["meta"]["quantizer"] == ["gptqmodel:7.7.0"] and quant["damp_percent"] == 0.05
    result = verify(src, out, quick=True)
    assert result["passed"], json.dumps(result["checks"], indent=1)[:3000]
    tensors, logits = result["checks"]["tensors"], result["checks"]["logits"]
    assert tensors["identical"] == tensors["tensors"] and not tensors["lossy_cast"]
    assert tensors["dropped_zero"] == (3 * LAYERS if style == "autogptq" else 0)
    assert logits["max_abs_logit_diff"] <= 1e-5 and logits["top1_agreement"] == 1.0


def _set(name, value):
    def edit(t):
        t[name] = value.to(t[name].dtype) if name in t else value.to(torch.float16)
    return edit


@pytest.mark.parametrize("style", ["autogptq", "gptqmodel"])
def test_a_nonzero_mlp_bias_converts_exactly_with_mlp_bias(style, tmp_path):
    """AutoGPTQ: one stored bias made non-zero; gptqmodel: a bias added to one linear that has
    none, so the other MLP linears get zero biases."""
    src = synthesize(tmp_path / "src", "tiny-int4", seed=9, gptq_style=style)
    bias = torch.linspace(-0.5, 0.5, 128)
    edit_weights(src, _set("transformer.h.1.mlp.w1.bias", bias))
    res = CliRunner().invoke(app, ["convert", str(src), str(tmp_path / "out"), "--quick"])
    assert res.exit_code == 0, res.output
    assert "mlp_bias true" in res.output
    out = _tensors(tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["mlp_bias"] is True
    assert torch.equal(out["model.layers.1.mlp.up_proj.bias"], bias.to(torch.float16))
    for i in range(LAYERS):
        for m, size in zip(LLAMA_MLP, (128, 128, 64)):
            b = out[f"model.layers.{i}.{m}.bias"]
            assert b.shape == (size,) and (b.any() if (i, m) == (1, "mlp.up_proj") else not b.any())
    result = verify(src, tmp_path / "out", quick=True)
    assert result["passed"], json.dumps(result["checks"], indent=1)[:3000]
    assert result["checks"]["logits"]["max_abs_logit_diff"] <= 1e-5


def test_a_nonzero_bias_the_output_drops_fails_verify(tmp_path, monkeypatch):
    """The output was written from zero MLP biases; the source's bias is then made non-zero
    (a converter that ignored it): tensors, config and logits fail. With the format's decision
    disabled, the tensors check's own re-read of the dropped biases still fails."""
    src = synthesize(tmp_path / "src", "tiny-int8", seed=4)
    convert(src, tmp_path / "out")
    planted = shutil.copytree(src, tmp_path / "planted")
    edit_weights(planted, _set("transformer.h.0.mlp.w2.bias", torch.full((128,), 0.25)))
    result = verify(planted, tmp_path / "out", quick=True)
    failed = set(result.failed_checks())
    assert {"tensors", "config", "logits"} <= failed, failed
    assert any("gate_proj.bias" in f for f in result["checks"]["tensors"]["failures"])
    assert "mlp_bias: False, expected True" in result["checks"]["config"]["failures"]
    monkeypatch.setattr(Gptq, "for_source", lambda self, found, target: self)
    tensors = verify(planted, tmp_path / "out", quick=True)["checks"]["tensors"]
    assert tensors["passed"] is False
    assert tensors["failures"] == ["transformer.h.0.mlp.w2.bias: left out of the output as zero, "
                                   "but holds non-zero values"]


@pytest.mark.parametrize("dtype,lossy", [("float32", False), ("float16", True)])
def test_dtype_casts_the_dense_tensors_of_a_mixed_source(tmp_path, dtype, lossy):
    """gptqmodel's bf16 + float16 mix: --dtype casts the dense tensors, the packed ones stay."""
    src = synthesize(tmp_path / "src", "tiny-int4", seed=6, gptq_style="gptqmodel")
    res = CliRunner().invoke(app, ["convert", str(src), str(tmp_path / "out"), "--dtype", dtype, "--quick"])
    assert res.exit_code == 0, res.output
    out = _tensors(tmp_path / "out")
    want = getattr(torch, dtype)
    assert out["model.embed_tokens.weight"].dtype == want
    assert out["model.layers.0.input_layernorm.weight"].dtype == want
    assert out["model.layers.0.self_attn.q_proj.scales"].dtype == torch.float16
    assert out["model.layers.0.self_attn.q_proj.qweight"].dtype == torch.int32
    result = verify(src, tmp_path / "out", quick=True)
    assert result["passed"] and result["checks"]["tensors"]["lossy_cast"] is lossy
