"""`--target qwen2`: the same network in the Qwen2 layout (Qwen2ForCausalLM: q/k/v biases, no
o_proj bias), verified like the LLaMA output; the target seam (targets/) is the one place that
names a layout's classes; a target that cannot hold a source says why."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from conftest import shard_size_for
from qwen2llama import pipeline
from qwen2llama.cli import app
from qwen2llama.errors import InputError
from qwen2llama.options import ConvertOptions
from qwen2llama.synth import synthesize
from qwen2llama.targets import TARGETS

O_PROJ_BIAS = "model.layers.0.self_attn.o_proj.bias"


def _names(folder) -> set[str]:
    names = set()
    for shard in folder.glob("*.safetensors"):
        with safe_open(str(shard), framework="pt") as fh:
            names |= set(fh.keys())
    return names


@pytest.mark.slow
def test_every_variant_converts_to_qwen2_and_verifies(variant, sources, tmp_path):
    out = tmp_path / "qwen2"
    options = ConvertOptions(target="qwen2", shard_size=shard_size_for(variant))
    result = pipeline.run(sources[variant], out, options, pipeline.VerifyOptions(quick=True))
    logits = result.verified["checks"]["logits"]
    assert result.verified["passed"] and logits["max_abs_logit_diff"] <= 1e-5
    assert logits["top1_agreement"] == 1
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"] and config["model_type"] == "qwen2"
    assert "attention_bias" not in config and "mlp_bias" not in config
    assert config["use_sliding_window"] is False
    names = _names(out)
    assert O_PROJ_BIAS not in names and not any(n.endswith("o_proj.bias") for n in names)
    assert {f"model.layers.0.self_attn.{p}.bias" for p in ("q_proj", "k_proj", "v_proj")} <= names
    record = json.loads((out / "conversion.json").read_text())
    assert record["target"]["layout"] == "Qwen2ForCausalLM"
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info


def test_qwen2_folder_loads_in_transformers_and_computes_qwen(sources, tmp_path):
    """The real consumer, whole: AutoModelForCausalLM uses every tensor of the folder and misses
    none, and its logits are the independent Qwen reference's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qwen2llama.reference import QwenReference
    from qwen2llama.sources import open_source

    src = sources["st-single-fp32"]
    out = tmp_path / "qwen2"
    pipeline.run(src, out, ConvertOptions(target="qwen2"), verify=None)
    model, info = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, output_loading_info=True)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"] == \
        TARGETS["qwen2"].tokenizer_class
    ids = tokenizer.encode("Qwen v1 in the Qwen2 layout: 12345 tokens, 你好", add_special_tokens=False)
    with torch.no_grad():
        got = model(torch.tensor([ids])).logits[0]
    want = QwenReference(open_source(src)).logits(ids)
    assert (got - want).abs().max().item() <= 1e-5


def test_llama_and_qwen2_differ_only_in_the_o_proj_biases_and_config(sources, tmp_path):
    src = sources["st-single-bf16"]
    llama = pipeline.plan(src, None, ConvertOptions()).prepared.plan
    qwen2 = pipeline.plan(src, None, ConvertOptions(target="qwen2")).prepared.plan
    extra = {t.name for t in llama.tensors} - {t.name for t in qwen2.tensors}
    assert extra == {f"model.layers.{i}.self_attn.o_proj.bias" for i in range(2)}
    assert all(t.kind == "zeros" for t in llama.tensors if t.name in extra)
    assert {t.name for t in qwen2.tensors} < {t.name for t in llama.tensors}


def test_golden_file_for_qwen2_replays_and_refuses_the_other_layout(sources, tmp_path):
    src = sources["st-single-bf16"]
    pipeline.run(src, tmp_path / "q2", ConvertOptions(target="qwen2"), verify=None)
    pipeline.run(src, tmp_path / "ll", ConvertOptions(), verify=None)
    golden = tmp_path / "q2.golden"
    meta = pipeline.write_golden(src, golden, target="qwen2", quick=True)
    assert meta["target"] == "qwen2"
    assert pipeline.check(None, tmp_path / "q2", pipeline.VerifyOptions(quick=True), golden=golden)["passed"]
    with pytest.raises(Exception) as failed:
        pipeline.check(None, tmp_path / "ll", pipeline.VerifyOptions(quick=True), golden=golden)
    checks = failed.value.result["checks"]
    assert checks["tensors"]["passed"] is False and checks["config"]["passed"] is False
    assert any("layout" in line for line in checks["config"]["failures"])


def test_gptq_with_a_nonzero_o_proj_bias_cannot_be_held_by_qwen2(tmp_path):
    """AutoGPTQ stores a bias on c_proj: zeros are dropped for Qwen2 (and re-read by verify); a
    non-zero one has no slot in Qwen2ForCausalLM, so the run stops before writing, saying why."""
    from safetensors.torch import load_file, save_file

    src = synthesize(tmp_path / "i4", "tiny", layers=2, gptq=4, seed=3)
    plan = pipeline.plan(src, None, ConvertOptions(target="qwen2")).prepared.plan
    assert {r.name for r in plan.zero_dropped} >= {"transformer.h.0.attn.c_proj.bias"}
    shard = src / "model.safetensors"
    tensors = load_file(shard)
    bias = "transformer.h.0.attn.c_proj.bias"
    tensors[bias] = torch.full_like(tensors[bias], 0.5)
    save_file(tensors, shard, metadata={"format": "pt"})
    with pytest.raises(InputError, match="c_proj.bias is not all zero.*Qwen2 layout has no bias") as bad:
        pipeline.plan(src, tmp_path / "out", ConvertOptions(target="qwen2"))
    assert "--target llama" in bad.value.fix and not (tmp_path / "out").exists()
    assert pipeline.plan(src, None, ConvertOptions()).prepared.plan.target.name == "llama"  # LLaMA holds it


@pytest.mark.parametrize("command", [["convert", "SRC", "OUT"], ["inspect", "SRC"],
                                     ["golden", "SRC", "OUT"], ["batch", "SRC", "--out-root", "OUT"]])
def test_unknown_target_is_bad_input_and_writes_nothing(sources, tmp_path, command):
    args = [str(sources["st-single-bf16"]) if a == "SRC" else str(tmp_path / "out") if a == "OUT" else a
            for a in command]
    result = CliRunner().invoke(app, [*args, "--target", "gpt2"])
    assert result.exit_code == 2, result.output
    assert "gpt2" in result.output and "llama, qwen2" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_lora_adapter_beside_a_qwen2_base_loads_in_peft_and_verifies(tmp_path):
    """The adapter's tensors name the same modules in both layouts; its verify loads the base as the
    class its config.json declares (Qwen2ForCausalLM here) and PEFT on it."""
    from qwen2llama.synth import synthesize_adapter

    src = synthesize(tmp_path / "qwen", "tiny", layers=2, dtype="float32", seed=4)
    lora = synthesize_adapter(tmp_path / "lora", src, targets=("c_attn", "c_proj", "w1", "w2"), seed=5)
    result = pipeline.run(src, tmp_path / "q2", ConvertOptions(target="qwen2"),
                          pipeline.VerifyOptions(quick=True), adapter=pipeline.AdapterStep(lora))
    assert result.verified["passed"] and result.adapter_verified["passed"]
    assert result.adapter_verified["checks"]["logits"]["max_abs_logit_diff"] <= 1e-4
    merged = pipeline.run(src, tmp_path / "q2-merged", ConvertOptions(target="qwen2", dtype="float32"),
                          pipeline.VerifyOptions(quick=True), adapter=pipeline.AdapterStep(lora, merge=True))
    assert merged.verified["passed"]


@pytest.mark.slow
def test_batch_redoes_a_folder_written_for_the_other_layout(sources, tmp_path):
    """The target is in the fingerprint: a LLaMA folder is not "up to date" for a job asking for
    Qwen2, nor the other way round; the same layout twice is."""
    from qwen2llama import batch

    src, out = str(sources["st-single-bf16"]), tmp_path / "out"

    def status(target):
        job = batch.Job("j", src, out, ConvertOptions(target=target))
        return batch.run_jobs([job], verify=True, quick=True)[0].status

    assert status("llama") == "passed" and status("llama") == "up to date"
    assert status("qwen2") == "passed"
    assert json.loads((out / "config.json").read_text())["model_type"] == "qwen2"
    assert status("qwen2") == "up to date" and status("llama") == "passed"
