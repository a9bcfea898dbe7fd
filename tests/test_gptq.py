"""GPTQ releases (Int4/Int8): packed tensors copied by columns bit for bit, three independent
dequantizers agreeing, logits equal to the dequantized reference, planted defects caught, and
unsupported quantizations refused with exit 2."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from qwen2llama.cli import app
from qwen2llama.convert import convert
from qwen2llama.llama.reader import dequantize_by_bytes
from qwen2llama.reference import QwenReference
from qwen2llama.sources import open_source
from qwen2llama.synth import synthesize
from qwen2llama.verify import verify

from defects import edit_json, edit_weights, rehash

L0 = "model.layers.0."
H = 64  # tiny hidden size = projection size
LINEARS = {"attn.c_attn": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
           "attn.c_proj": ("self_attn.o_proj",), "mlp.w2": ("mlp.gate_proj",), "mlp.w1": ("mlp.up_proj",),
           "mlp.c_proj": ("mlp.down_proj",)}


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    """Int4 and Int8 at tiny widths (group_size 32), one file and three, converted."""
    root = tmp_path_factory.mktemp("gptq")
    out = {}
    for bits in (4, 8):
        for shards in (1, 3):
            src = synthesize(root / f"src-{bits}-{shards}", f"tiny-int{bits}", shards=shards,
                             seed=bits + shards)
            convert(src, root / f"out-{bits}-{shards}", shard_size="20MB" if shards > 1 else "5GB")
            out[bits, shards] = (src, root / f"out-{bits}-{shards}")
    return out


def _tensors(folder) -> dict[str, torch.Tensor]:
    """Every tensor of a folder, read with safetensors (not with the converter's reader)."""
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as fh:
            out.update({k: fh.get_tensor(k) for k in fh.keys()})
    return out


@pytest.mark.parametrize("bits,shards", [(4, 1), (4, 3), (8, 1), (8, 3)])
def test_packed_tensors_are_source_columns(releases, bits, shards):
    src, out = releases[bits, shards]
    a, b = _tensors(src), _tensors(out)
    for i in range(2):
        for qwen, llamas in LINEARS.items():
            for k, llama in enumerate(llamas):
                n = len(llamas)
                for suffix in ("qweight", "qzeros", "scales"):
                    whole = a[f"transformer.h.{i}.{qwen}.{suffix}"]
                    width = whole.shape[1] // n
                    got = b[f"model.layers.{i}.{llama}.{suffix}"]
                    assert got.dtype == whole.dtype
                    assert torch.equal(got.view(torch.uint8), whole[:, k * width:(k + 1) * width].contiguous()
                                       .view(torch.uint8)), (i, llama, suffix)
                assert torch.equal(b[f"model.layers.{i}.{llama}.g_idx"], a[f"transformer.h.{i}.{qwen}.g_idx"])
        assert torch.equal(b[f"model.layers.{i}.self_attn.o_proj.bias"], torch.zeros(H, dtype=torch.float16))
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["bits"] == bits and config["attention_bias"] is True
    assert config["quantization_config"]["checkpoint_format"] == "gptq"
    assert json.loads((out / "quantize_config.json").read_text())["bits"] == bits


@pytest.mark.parametrize("bits,shards", [(4, 1), (4, 3), (8, 1), (8, 3)])
def test_logits_match_the_dequantized_reference(releases, bits, shards):
    src, out = releases[bits, shards]
    result = verify(src, out, quick=True)
    assert result["passed"], json.dumps(result["checks"], indent=1)[:3000]
    tensors, logits = result["checks"]["tensors"], result["checks"]["logits"]
    assert tensors["identical"] == tensors["tensors"] and tensors["quantized"] is True
    assert logits["max_abs_logit_diff"] <= 1e-5 and logits["top1_agreement"] == 1.0


def test_three_dequantizers_agree_bit_for_bit(releases, tmp_path):
    """The converter's (--dequantize float32), the reference's and the LLaMA side's, on every linear."""
    for bits in (4, 8):
        src, out = releases[bits, 1]
        dense = tmp_path / f"dense-{bits}"
        convert(src, dense, dequantize="float32")
        ref, d, q = QwenReference(open_source(src)), _tensors(dense), _tensors(out)
        for qwen, llamas in LINEARS.items():
            want = ref.gptq_weight(f"transformer.h.1.{qwen}")
            converted = torch.cat([d[f"model.layers.1.{llama}.weight"] for llama in llamas])
            by_bytes = torch.cat([dequantize_by_bytes(*(q[f"model.layers.1.{llama}.{s}"] for s in
                                                        ("qweight", "qzeros", "scales", "g_idx")), bits=bits)
                                  for llama in llamas])
            assert want.dtype == converted.dtype == by_bytes.dtype == torch.float32
            assert torch.equal(want, converted) and torch.equal(want, by_bytes), qwen
            assert want.abs().max() > 0


def test_dequantizer_reads_autogptq_packing_by_hand():
    """8 outputs whose words hold inputs 0..7 (4 bits, lowest first), zero points stored as 2
    (so 3), scale 0.5: W[o, i] = 0.5 * (i - 3). Written out, not produced by our packer."""
    qweight = torch.tensor([[0x76543210] * 8], dtype=torch.int32)
    qzeros = torch.tensor([[0x22222222]], dtype=torch.int32)
    scales = torch.full((1, 8), 0.5, dtype=torch.float16)
    w = dequantize_by_bytes(qweight, qzeros, scales, torch.zeros(8, dtype=torch.int32), bits=4)
    assert w.shape == (8, 8)
    assert all(row == [0.5 * (i - 3) for i in range(8)] for row in w.tolist())


def test_desc_act_permuted_g_idx(tmp_path):
    src = synthesize(tmp_path / "src", "tiny-int4", desc_act=True, seed=5)
    g_idx = _tensors(src)["transformer.h.0.attn.c_attn.g_idx"]
    assert not torch.equal(g_idx, g_idx.sort().values)  # really permuted
    convert(src, tmp_path / "out")
    result = verify(src, tmp_path / "out", quick=True)
    assert result["passed"] and result["checks"]["logits"]["max_abs_logit_diff"] <= 1e-5


def test_release_layout_with_sym_zeros_and_one_settings_file(tmp_path):
    """The releases' constant zero points; settings only in quantize_config.json, then only in config.json."""
    src = synthesize(tmp_path / "src", "tiny-int8", sym_zeros=True, seed=2)
    edit_json(src, "config.json", lambda c: c.pop("quantization_config"))
    convert(src, tmp_path / "a")
    (src / "quantize_config.json").rename(tmp_path / "quantize_config.json")
    runner = CliRunner()
    dense = runner.invoke(app, ["inspect", str(src)])
    assert dense.exit_code == 2 and "GPTQ-packed" in dense.output  # no settings at all
    edit_json(src, "config.json", lambda c: c.__setitem__(
        "quantization_config", json.loads((tmp_path / "quantize_config.json").read_text())))
    convert(src, tmp_path / "b")
    assert _tensors(tmp_path / "a").keys() == _tensors(tmp_path / "b").keys()
    assert verify(src, tmp_path / "b", quick=True)["passed"]


@pytest.mark.parametrize("dtype,lossy", [("float32", False), ("float16", True)])
def test_dequantize_writes_a_dense_model_that_verifies(releases, tmp_path, dtype, lossy):
    src, _ = releases[4, 1]
    runner = CliRunner()
    res = runner.invoke(app, ["convert", str(src), str(tmp_path / "d"), "--dequantize", dtype, "--quick"])
    assert res.exit_code == 0, res.output
    assert "dequantized" in res.output
    config = json.loads((tmp_path / "d" / "config.json").read_text())
    assert "quantization_config" not in config and config["torch_dtype"] == dtype
    assert not (tmp_path / "d" / "quantize_config.json").exists()
    assert all(t.dtype == getattr(torch, dtype) for t in _tensors(tmp_path / "d").values())
    result = verify(src, tmp_path / "d", quick=True)
    assert result["passed"] and result["checks"]["tensors"]["lossy_cast"] is lossy
    if not lossy:
        assert result["checks"]["logits"]["max_abs_logit_diff"] <= 1e-5


def _swap_qk_qweight(t):
    q, k = L0 + "self_attn.q_proj.qweight", L0 + "self_attn.k_proj.qweight"
    t[q], t[k] = t[k].clone(), t[q].clone()


def _shift_qzeros(t):
    z = t[L0 + "mlp.up_proj.qzeros"]
    t[L0 + "mlp.up_proj.qzeros"] = torch.roll(z, 1, dims=1)


def _scale_group(t):
    t[L0 + "mlp.down_proj.scales"][1] *= 1.5


GPTQ_DEFECTS = {
    "q/k qweight columns swapped": (lambda f: edit_weights(f, _swap_qk_qweight), {"tensors", "logits"}),
    "qzeros shifted by one packed column": (lambda f: edit_weights(f, _shift_qzeros), {"tensors", "logits"}),
    "scales of one group changed": (lambda f: edit_weights(f, _scale_group), {"tensors", "logits"}),
    "g_idx of v dropped": (lambda f: edit_weights(f, lambda t: t.pop(L0 + "self_attn.v_proj.g_idx")),
                           {"tensors", "logits"}),
    "bits wrong in the config": (lambda f: edit_json(f, "config.json",
                                                     lambda c: c["quantization_config"].__setitem__(
        "bits", 8)), {"config", "logits"}),
    "group size wrong in the config": (lambda f: edit_json(f, "config.json",
                                                           lambda c: c["quantization_config"]
                                                           .__setitem__("group_size", 128)), {"config"}),
}


@pytest.mark.parametrize("defect", list(GPTQ_DEFECTS))
def test_planted_gptq_defect_fails(defect, releases, tmp_path):
    src, out = releases[4, 1]
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    plant, must_fail = GPTQ_DEFECTS[defect]
    plant(bad)
    rehash(bad)
    result = verify(src, bad, quick=True)
    failed = set(result.failed_checks())
    assert not result["passed"] and must_fail <= failed, (defect, failed)


@pytest.mark.parametrize("edit,message", [
    (lambda c: c["quantization_config"].__setitem__("bits", 3), "bits 3"),
    (lambda c: c["quantization_config"].__setitem__("quant_method", "awq"), "quant_method 'awq'"),
    (lambda c: c["quantization_config"].__setitem__("checkpoint_format", "gptq_v2"), "gptq_v2"),
    (lambda c: c["quantization_config"].__setitem__("lm_head", True), "quantized lm_head"),
    (lambda c: c["quantization_config"].__setitem__("group_size", 16),
     "config.json and quantize_config.json disagree"),
])
def test_unsupported_quantization_is_bad_input(tmp_path, edit, message):
    src = synthesize(tmp_path / "src", "tiny-int4", layers=1)
    if "disagree" in message:
        edit_json(src, "config.json", edit)
        message = "quantize_config.json says bits 4, group_size 32"
    else:
        edit_json(src, "config.json", edit)
        (src / "quantize_config.json").unlink()
    res = CliRunner().invoke(app, ["convert", str(src), str(tmp_path / "out")])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "out").exists()


def test_quantized_lm_head_tensors_and_wrong_options_are_bad_input(tmp_path, releases):
    src = synthesize(tmp_path / "src", "tiny-int4", layers=1)
    edit_weights(src, lambda t: t.__setitem__("lm_head.qweight", torch.zeros(8, 151936, dtype=torch.int32)))
    runner = CliRunner()
    res = runner.invoke(app, ["convert", str(src), str(tmp_path / "out")])
    assert res.exit_code == 2 and "lm_head.qweight is quantized" in res.output, res.output
    gptq_src, _ = releases[4, 1]
    res = runner.invoke(app, ["convert", str(gptq_src), str(tmp_path / "o2"), "--dtype", "bfloat16",
                              "--dequantize", "float32"])
    assert res.exit_code == 2 and "--dequantize alone" in res.output, res.output
    dense = synthesize(tmp_path / "dense", "tiny", layers=1)
    res = runner.invoke(app, ["convert", str(dense), str(tmp_path / "o3"), "--dequantize", "float32"])
    assert res.exit_code == 2 and "GPTQ checkpoints" in res.output
