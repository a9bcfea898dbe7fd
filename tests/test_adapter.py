"""LoRA adapters: converted adapters equal their source factors (copies and row ranges), and the
LLaMA base + PEFT's own loading of the converted adapter computes what the Qwen reference with
the Qwen adapter merged in computes; planted defects and unsupported adapters are caught."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from qwen2llama.lora import convert_adapter_unverified
from qwen2llama.cli import app
from qwen2llama.convert import convert
from qwen2llama.synth import synthesize
from qwen2llama.synth import synthesize_adapter
from qwen2llama.verify import verify
from qwen2llama.lora.verify import verify_adapter

from defects import edit_json

ALL = ("c_attn", "c_proj", "w1", "w2")
P = "base_model.model.model.layers.0."


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """A float32 tiny Qwen base and its conversion."""
    root = tmp_path_factory.mktemp("adapter-base")
    src = synthesize(root / "qwen", "tiny", dtype="float32", seed=4)
    convert(src, root / "llama")
    return src, root / "llama"


def _roundtrip(bases, tmp_path, **kw):
    src, llama = bases
    lora = synthesize_adapter(tmp_path / "lora", src, seed=9, **kw)
    convert_adapter_unverified(lora, tmp_path / "out", base=src, base_name=str(llama))
    return lora, tmp_path / "out"


VARIANTS = {
    "c_attn": dict(targets=("c_attn",)),
    "all, saved wte+lm_head": dict(targets=ALL, modules_to_save=("wte", "lm_head")),
    "all, rsLoRA, .bin": dict(targets=ALL, rslora=True, fmt="bin"),
    "all, DoRA": dict(targets=ALL, dora=True),
    "patterns and layer 1 only": dict(targets=("c_attn", "w1"), rank_pattern={"c_attn": 4},
                                      alpha_pattern={"transformer.h.1.mlp.w1": 4}, layers_to_transform=[1]),
}


@pytest.mark.slow
@pytest.mark.parametrize("setup", list(VARIANTS))
def test_converted_adapter_computes_what_the_qwen_adapter_does(bases, tmp_path, setup):
    lora, out = _roundtrip(bases, tmp_path, **VARIANTS[setup])
    result = verify_adapter(bases[0], bases[1], lora, out, quick=True)
    assert result["passed"], json.dumps(result["checks"], indent=1)[:3000]
    logits = result["checks"]["logits"]
    assert logits["max_abs_logit_diff"] <= 1e-4 * max(1.0, max(p["max_abs_logit"] for p in logits["prompts"]))
    assert logits["top1_agreement"] == 1.0 and all(g["identical"] for g in logits["greedy"])
    assert logits["adapter_effect_max_abs_logit"] > 0.1  # a dropped adapter would show
    assert result["checks"]["tensors"]["identical"] == result["checks"]["tensors"]["tensors"]


def test_factors_are_copies_and_row_thirds(bases, tmp_path):
    lora, out = _roundtrip(bases, tmp_path, targets=ALL, modules_to_save=("wte",), dora=True)
    a = load_file(lora / "adapter_model.safetensors")
    b = load_file(out / "adapter_model.safetensors")
    q = "base_model.model.transformer.h.0."
    A, B = a[q + "attn.c_attn.lora_A.weight"], a[q + "attn.c_attn.lora_B.weight"]
    third = B.shape[0] // 3
    for k, x in enumerate("qkv"):
        assert torch.equal(b[P + f"self_attn.{x}_proj.lora_A.weight"], A)
        assert torch.equal(b[P + f"self_attn.{x}_proj.lora_B.weight"], B[k * third:(k + 1) * third])
        assert torch.equal(b[P + f"self_attn.{x}_proj.lora_magnitude_vector"],
                           a[q + "attn.c_attn.lora_magnitude_vector"][k * third:(k + 1) * third])
    # w2 is the gate, w1 the up projection; c_proj means both o_proj and down_proj
    assert torch.equal(b[P + "mlp.gate_proj.lora_B.weight"], a[q + "mlp.w2.lora_B.weight"])
    assert torch.equal(b[P + "mlp.up_proj.lora_B.weight"], a[q + "mlp.w1.lora_B.weight"])
    assert torch.equal(b[P + "self_attn.o_proj.lora_A.weight"], a[q + "attn.c_proj.lora_A.weight"])
    assert torch.equal(b[P + "mlp.down_proj.lora_A.weight"], a[q + "mlp.c_proj.lora_A.weight"])
    assert torch.equal(b["base_model.model.model.embed_tokens.weight"],
                       a["base_model.model.transformer.wte.weight"])
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["target_modules"] == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                               "down_proj"])
    assert config["modules_to_save"] == ["embed_tokens"] and config["use_dora"] is True
    assert config["base_model_name_or_path"] == str(bases[1])
    assert (out / "conversion.json").is_file()


def test_synthesized_adapters_have_peft_own_layout(bases, tmp_path):
    """PEFT itself, applied to a module tree with Qwen's names, saves the same keys and shapes."""
    from peft import LoraConfig, get_peft_model
    from torch import nn

    from qwen2llama.qwen.checkpoint import open_checkpoint

    cfg = open_checkpoint(bases[0]).config
    h, p, f = cfg.hidden_size, cfg.projection_size, cfg.mlp_width

    def block():
        b = nn.Module()
        b.attn, b.mlp = nn.Module(), nn.Module()
        b.attn.c_attn, b.attn.c_proj = nn.Linear(h, 3 * p), nn.Linear(p, h, bias=False)
        b.mlp.w1, b.mlp.w2 = nn.Linear(h, f, bias=False), nn.Linear(h, f, bias=False)
        b.mlp.c_proj = nn.Linear(f, h, bias=False)
        return b

    model = nn.Module()
    model.transformer = nn.Module()
    model.transformer.wte = nn.Embedding(cfg.vocab_rows, h)
    model.transformer.h = nn.ModuleList([block() for _ in range(cfg.num_layers)])
    model.lm_head = nn.Linear(h, cfg.vocab_rows, bias=False)
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=list(ALL),
                                            modules_to_save=["wte", "lm_head"], use_dora=True))
    peft.save_pretrained(tmp_path / "peft")
    ours = synthesize_adapter(tmp_path / "ours", bases[0], targets=ALL, modules_to_save=("wte", "lm_head"),
                              dora=True)
    theirs = {k: tuple(v.shape) for k,
              v in load_file(tmp_path / "peft" / "adapter_model.safetensors").items()}
    assert {k: tuple(v.shape) for k, v in load_file(ours / "adapter_model.safetensors").items()} == theirs
    peft_cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    our_cfg = json.loads((ours / "adapter_config.json").read_text())
    for key in ("peft_type", "r", "lora_alpha", "use_dora", "use_rslora", "fan_in_fan_out", "bias"):
        assert our_cfg[key] == peft_cfg[key], key


def _swap_rows_qk(t):
    q, k = P + "self_attn.q_proj.lora_B.weight", P + "self_attn.k_proj.lora_B.weight"
    t[q], t[k] = t[k].clone(), t[q].clone()


def _transpose_a(t):
    name = P + "self_attn.q_proj.lora_A.weight"
    t[name] = t[name].T.contiguous()


def _swap_w1_w2(t):
    for f in ("lora_A.weight", "lora_B.weight"):
        g, u = P + f"mlp.gate_proj.{f}", P + f"mlp.up_proj.{f}"
        t[g], t[u] = t[u].clone(), t[g].clone()


def _drop_b(t):
    for name in [n for n in t if n.endswith("lora_B.weight")]:
        t[name] = torch.zeros_like(t[name])


def _edit(out, fn):
    path = out / "adapter_model.safetensors"
    t = load_file(path)
    fn(t)
    save_file(t, path, metadata={"format": "pt"})


ADAPTER_DEFECTS = {
    "lora_B rows of q and k swapped": (lambda o: _edit(o, _swap_rows_qk), {"tensors", "logits"}),
    "lora_A transposed": (lambda o: _edit(o, _transpose_a), {"tensors"}),
    "alpha changed": (lambda o: edit_json(o, "adapter_config.json",
                                          lambda c: c.__setitem__("lora_alpha", 32)),
                      {"config", "logits"}),
    "w1/w2 swapped": (lambda o: _edit(o, _swap_w1_w2), {"tensors", "logits"}),
    "adapter dropped (B zeroed)": (lambda o: _edit(o, _drop_b), {"tensors", "logits"}),
}


@pytest.mark.slow
@pytest.mark.parametrize("defect", list(ADAPTER_DEFECTS))
def test_planted_adapter_defect_fails(bases, tmp_path, defect):
    from defects import rehash

    lora, out = _roundtrip(bases, tmp_path, targets=ALL)
    plant, must_fail = ADAPTER_DEFECTS[defect]
    plant(out)
    rehash(out)
    try:
        result = verify_adapter(bases[0], bases[1], lora, out, quick=True)
    except Exception as exc:  # PEFT refusing a transposed factor outright is also a catch
        assert defect == "lora_A transposed", exc
        return
    assert not result["passed"] and must_fail <= set(result.failed_checks()), (defect, result.failed_checks())


def test_adapter_for_another_base_size_is_bad_input(bases, tmp_path):
    lora = synthesize_adapter(tmp_path / "lora", bases[0], targets=("c_attn",))
    path = lora / "adapter_model.safetensors"
    t = load_file(path)  # as trained on a model of hidden size 128 (3 x 128 q/k/v features)
    for i in range(2):
        t[f"base_model.model.transformer.h.{i}.attn.c_attn.lora_A.weight"] = torch.randn(8, 128)
        t[f"base_model.model.transformer.h.{i}.attn.c_attn.lora_B.weight"] = torch.randn(384, 8)
    save_file(t, path)
    res = CliRunner().invoke(app, ["adapter", str(lora), str(tmp_path / "out"), "--base", str(bases[0])])
    assert res.exit_code == 2, res.output
    assert "another base size" in res.output and "lora_A [8, 128]" in res.output
    assert "weight is [192, 64]" in res.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("edit,message", [
    (lambda c: c.__setitem__("fan_in_fan_out", True), "fan_in_fan_out"),
    (lambda c: c.__setitem__("peft_type", "IA3"), "peft_type 'IA3'"),
    (lambda c: c.__setitem__("bias", "all"), "bias 'all'"),
    (lambda c: c.__setitem__("r", 4), "lora_A has rank 8, adapter_config.json gives 4"),
    (lambda c: c.__setitem__("use_dora", True), "use_dora is True but the magnitude vector is absent"),
])
def test_unsupported_adapters_are_bad_input(bases, tmp_path, edit, message):
    lora = synthesize_adapter(tmp_path / "lora", bases[0], targets=("c_attn",))
    edit_json(lora, "adapter_config.json", edit)
    res = CliRunner().invoke(app, ["adapter", str(lora), str(tmp_path / "out")])
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, res.output


def test_lora_on_the_embedding_is_refused(bases, tmp_path):
    lora = synthesize_adapter(tmp_path / "lora", bases[0], targets=("c_attn",))
    path = lora / "adapter_model.safetensors"
    t = load_file(path)
    t["base_model.model.transformer.wte.lora_embedding_A"] = torch.zeros(8, 151936)
    save_file(t, path)
    res = CliRunner().invoke(app, ["adapter", str(lora), str(tmp_path / "out")])
    assert res.exit_code == 2 and "LoRA on the embedding" in res.output


@pytest.mark.slow
def test_convert_with_adapter_in_one_go_and_merged(bases, tmp_path):
    src, _ = bases
    lora = synthesize_adapter(tmp_path / "lora", src, targets=ALL, modules_to_save=("lm_head",), dora=True,
                              seed=3)
    runner = CliRunner()
    res = runner.invoke(app, ["convert", str(src), str(tmp_path / "llama"), "--adapter", str(lora),
                              "--quick"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "llama-adapter" / "adapter_model.safetensors").is_file()
    assert res.output.count("verify: equivalent") == 2
    res = runner.invoke(app, ["convert", str(src), str(tmp_path / "merged"), "--adapter", str(lora),
                              "--merge",
                              "--quick"])
    assert res.exit_code == 0, res.output
    result = verify(src, tmp_path / "merged", quick=True, adapter=lora)
    assert result["passed"] and result["checks"]["logits"]["max_abs_logit_diff"] <= 1e-4 * 10
    assert not result["checks"]["tensors"]["lossy_cast"]
    record = json.loads((tmp_path / "merged" / "conversion.json").read_text())
    assert record["merged_adapter"] == str(lora.resolve())
    # the merged model is not the base: verified without the adapter, it fails
    plain = verify(src, tmp_path / "merged", quick=True)
    assert not plain["passed"] and {"tensors", "logits"} <= set(plain.failed_checks())
    shutil.rmtree(tmp_path / "merged")
