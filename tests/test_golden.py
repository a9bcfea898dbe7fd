"""Golden files: verify without the source checkpoint, with the same verdicts; JUnit and GitHub
summaries of a verify; folders that other converters wrote."""
from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET

import pytest
import torch
from typer.testing import CliRunner

from qwen2llama.cli import app
from qwen2llama.sources import open_source
from qwen2llama.verify import golden as golden_mod
from qwen2llama.verify import verify_golden

from defects import DEFECTS, bump_row, edit_weights, rehash

VARIANT = "st-single-bf16"


def record(src, path, **kw):
    tensors, meta = golden_mod.record(open_source(src), **kw)
    golden_mod.write(path, tensors, meta)
    return path


@pytest.fixture(scope="module")
def golden_file(sources, workdir):
    return record(sources[VARIANT], workdir / "golden.safetensors")


def test_round_trip_and_determinism(golden_file, sources, converted, tmp_path):
    result = verify_golden(converted[VARIANT], golden_file)
    assert result["passed"], json.dumps(result["checks"], indent=1)[:3000]
    logits = result["checks"]["logits"]
    assert logits["max_abs_logit_diff"] <= 1e-5 and logits["top1_agreement"] == 1.0
    assert logits["max_abs_lse_diff"] <= 1e-5 and all(g["identical"] for g in logits["greedy"])
    tensors = result["checks"]["tensors"]  # format 2: every tensor's digest, not skipped any more
    assert tensors["passed"] is True and tensors["identical"] == tensors["tensors"]
    assert not tensors["failures"]
    assert all(c.get("against") == str(golden_file) for c in result["checks"].values())
    assert golden_file.stat().st_size < 5e6  # the default prompt set, 151936 vocabulary rows
    again = record(sources[VARIANT], tmp_path / "again.safetensors")
    assert again.read_bytes() == golden_file.read_bytes()


@pytest.mark.slow
def test_round_trip_every_variant(variant, sources, converted, tmp_path):
    path = record(sources[variant], tmp_path / "g.safetensors", quick=True)
    result = verify_golden(converted[variant], path)
    assert result["passed"], json.dumps(result["checks"], indent=1)[:3000]


# Rows no recorded logit looked at before golden format 2: an embedding row of a token no prompt
# uses, and <|im_end|>'s lm_head row (it decides when a chat model stops).
UNUSED_ROW, IM_END_ID = 150000, 151645
GOLDEN_DEFECTS = {
    **DEFECTS,
    "unused embedding row changed": (
        lambda f: edit_weights(f, lambda t: bump_row(t, "model.embed_tokens.weight", UNUSED_ROW)),
                                     {"tensors"}),
    "<|im_end|> lm_head row changed": (
        lambda f: edit_weights(f, lambda t: bump_row(t, "lm_head.weight", IM_END_ID)), {"tensors", "logits"}),
}


@pytest.mark.slow
@pytest.mark.parametrize("defect", list(GOLDEN_DEFECTS))
def test_golden_only_verify_catches_planted_defects(defect, golden_file, converted, tmp_path):
    """Recorded from the source alone, conversion.json removed: the golden file is all there is."""
    plant, must_fail = GOLDEN_DEFECTS[defect]
    folder = tmp_path / "planted"
    shutil.copytree(converted[VARIANT], folder)
    plant(folder)
    (folder / "conversion.json").unlink()
    result = verify_golden(folder, golden_file)
    failed = {name for name, c in result["checks"].items() if c["passed"] is False}
    assert not result["passed"]
    # the two row edits of the source-based list land on rows a golden logit may not cover; the
    # tensor digests catch them all the same
    must_fail = must_fail - {"logits"} if defect in ("lm_head row changed",
                                                     "embedding row changed") else must_fail
    assert must_fail <= failed, (defect, failed, {n: c.get("failures") for n, c in result["checks"].items()})
    assert result["checks"]["integrity"]["passed"] is None  # no conversion.json, no file digests
    if "tensors" in must_fail:
        assert any("values differ from the golden file" in f or "extra" in f or "missing" in f
                   for f in result["checks"]["tensors"]["failures"]), result["checks"]["tensors"]


def test_sample_always_holds_the_stop_tokens_and_prompt_tokens(golden_file):
    golden = golden_mod.read(golden_file)
    sample = set(golden.tensors["sample_ids"].tolist())
    assert {151643, 151644, 151645} <= sample and {151643 + k for k in range(208)} <= sample
    for k in range(len(golden.meta["prompts"])):
        assert set(golden.prompt(k, "ids").tolist()) <= sample
    assert golden.meta["format"] == 2 and len(golden.meta["tensor_digests"]["tensors"]) == 2 * 13 + 3


def _reshard(src, folder, *, bin_files: bool):
    """The same tensors in other files: three safetensors shards with an index, or two .bin files."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, folder, ignore=shutil.ignore_patterns("model*.safetensors*", "conversion.json"))
    tensors = {}
    for path in sorted(src.glob("model*.safetensors")):
        tensors.update(load_file(path))
    names = sorted(tensors, reverse=True)  # another order too
    parts = [names[k::3] for k in range(3)] if not bin_files else [names[0::2], names[1::2]]
    weight_map = {}
    for k, part in enumerate(parts):
        name = f"pytorch_model-{k + 1:05d}-of-{len(parts):05d}.bin" if bin_files else \
            f"model-{k + 1:05d}-of-{len(parts):05d}.safetensors"
        chunk = {n: tensors[n].clone() for n in part}
        (torch.save(chunk, folder / name) if bin_files else save_file(chunk, folder / name,
                                                                      metadata={"format": "pt"}))
        weight_map.update({n: name for n in part})
    index = "pytorch_model.bin.index.json" if bin_files else "model.safetensors.index.json"
    (folder / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


@pytest.mark.parametrize("bin_files", [False, True], ids=["safetensors-shards", "bin-shards"])
def test_a_resharded_honest_copy_passes(bin_files, golden_file, converted, tmp_path):
    folder = _reshard(converted[VARIANT], tmp_path / "copy", bin_files=bin_files)
    result = verify_golden(folder, golden_file)
    assert result["passed"], json.dumps(result["checks"], indent=1)[:3000]
    tensors = result["checks"]["tensors"]
    assert tensors["passed"] is True and tensors["identical"] == tensors["tensors"] == 2 * 13 + 3
    files = list(converted[VARIANT].glob("*.safetensors"))
    headers = sum(8 + int.from_bytes(p.read_bytes()[:8], "little") for p in files)
    assert tensors["bytes_compared"] == sum(p.stat().st_size for p in files) - headers


@pytest.mark.slow
def test_digests_follow_the_recorded_dtype(sources, converted, tmp_path):
    """A golden file recorded for --dtype float32 fails a bf16 folder by dtype, and passes its float32
    conversion."""
    path = tmp_path / "f32.safetensors"
    result = CliRunner().invoke(app, ["golden", str(sources[VARIANT]), str(path), "--quick", "--dtype",
                                      "float32"])
    assert result.exit_code == 0, result.output
    bf16 = verify_golden(converted[VARIANT], path)["checks"]["tensors"]
    assert bf16["passed"] is False and "the golden file recorded F32" in bf16["failures"][0]
    out = tmp_path / "f32"
    assert CliRunner().invoke(app, ["convert", str(sources[VARIANT]), str(out), "--dtype", "float32",
                                    "--no-verify"]).exit_code == 0
    assert verify_golden(out, path)["checks"]["tensors"]["passed"] is True


@pytest.mark.slow
def test_format_1_files_still_verify_and_say_what_they_cannot_check(golden_file, converted, tmp_path):
    golden = golden_mod.read(golden_file)
    meta = {k: v for k, v in golden.meta.items() if k != "tensor_digests"}
    old = tmp_path / "format1.safetensors"
    golden_mod.write(old, golden.tensors, {**meta, "format": 1})
    result = verify_golden(converted[VARIANT], old)
    assert result["passed"]
    note = result["checks"]["tensors"]
    assert note["passed"] is None and "format 1" in note["note"] and "<|im_end|>" in note["note"]


@pytest.mark.slow
def test_golden_recorded_by_convert_holds_the_digests(sources, tmp_path):
    folder = tmp_path / "out"
    golden = tmp_path / "g.safetensors"
    result = CliRunner().invoke(app, ["convert", str(sources[VARIANT]), str(folder), "--quick", "--golden",
                                      str(golden)])
    assert result.exit_code == 0, result.output
    assert verify_golden(folder, golden)["checks"]["integrity"]["files"] == 10
    edit_weights(folder, lambda t: bump_row(t, "lm_head.weight", 7))  # a row no golden number covers
    rehash(folder)  # conversion.json agrees; the golden file does not
    failed = verify_golden(folder, golden)["checks"]["integrity"]
    assert failed["passed"] is False and failed["failures"] == ["model.safetensors: blake3 differs from "
                                                                "the golden file"]


@pytest.mark.slow
def test_bad_golden_files_are_bad_input(golden_file, sources, converted, tmp_path):
    def verify_with(path):
        return CliRunner().invoke(app, ["verify", str(converted[VARIANT]), "--golden", str(path)])

    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(golden_file.read_bytes()[:-5000])
    newer = tmp_path / "newer.safetensors"
    golden = golden_mod.read(golden_file)
    golden_mod.write(newer, golden.tensors, {**golden.meta, "format": golden_mod.FORMAT + 1})
    other_model = record(sources["72b-style"], tmp_path / "72b.safetensors", quick=True)
    swapped = shutil.copytree(sources[VARIANT], tmp_path / "other-vocab")
    lines = (swapped / "qwen.tiktoken").read_bytes().splitlines()
    (a, ra), (b, rb) = lines[1000].split(), lines[1001].split()
    lines[1000], lines[1001] = b + b" " + ra, a + b" " + rb
    (swapped / "qwen.tiktoken").write_bytes(b"\n".join(lines) + b"\n")
    other_vocab = record(swapped, tmp_path / "vocab.safetensors", quick=True)
    def hostile(name, edit_meta=None, edit_tensors=None):
        meta, tensors = json.loads(json.dumps(golden.meta)), dict(golden.tensors)
        if edit_meta:
            edit_meta(meta)
        if edit_tensors:
            edit_tensors(tensors)
        golden_mod.write(tmp_path / name, tensors, meta)
        return tmp_path / name

    nan = hostile("nan.safetensors", edit_tensors=lambda t: t.__setitem__(
        "prompt.0.sample_values", torch.full_like(t["prompt.0.sample_values"], float("nan"))))
    wide = hostile("shape.safetensors", edit_tensors=lambda t: t.__setitem__(
        "prompt.0.topk_values", t["prompt.0.topk_values"][:, :3].contiguous()))
    endless = hostile("greedy.safetensors", edit_meta=lambda m: m.__setitem__("greedy_tokens", 10**9))
    no_prompts = hostile("prompts.safetensors", edit_meta=lambda m: m.pop("prompts"))
    bad_digest = hostile("digest.safetensors", edit_meta=lambda m: next(iter(
        m["tensor_digests"]["tensors"].values())).__setitem__("digest", "zz"))
    bad_id = hostile("ids.safetensors", edit_tensors=lambda t: t.__setitem__(
        "sample_ids", torch.cat([t["sample_ids"][:-1], torch.tensor([10**7], dtype=torch.int32)])))
    for path, needle in [(nan, "prompt.0.sample_values is not finite"),
                         (wide, "prompt.0.topk_values is not float"),
                         (endless, "greedy_tokens is not a count from 0 to 256"),
                         (no_prompts, "prompts is not a list"), (bad_digest, ".digest is not 64 hex digits"),
                         (bad_id, "sample_ids is not token ids below")]:
        result = verify_with(path)
        assert result.exit_code == 2 and needle in result.output, (path.name, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit)
    for path, needle in [(truncated, "golden file is unreadable"), (newer, "this version reads formats 1, 2"),
                         (other_model, "golden file is for another model"),
                         (other_vocab, "recorded for another vocabulary"),
                         (tmp_path / "none.safetensors", "does not exist")]:
        result = verify_with(path)
        assert result.exit_code == 2 and needle in result.output, (path.name, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit)
    wrong = CliRunner().invoke(app, ["verify", str(sources[VARIANT]), str(converted[VARIANT]), "--golden",
                                     str(golden_file)])
    assert wrong.exit_code == 2 and "give only the converted folder" in wrong.output


def test_verify_junit_and_github_summary(golden_file, sources, converted, tmp_path, monkeypatch):
    folder = shutil.copytree(converted[VARIANT], tmp_path / "planted")
    DEFECTS["gate/up swapped"][0](folder)
    rehash(folder)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    junit = tmp_path / "v.xml"
    result = CliRunner().invoke(app, ["verify", str(folder), "--golden", str(golden_file), "--junit",
                                      str(junit)])
    assert result.exit_code == 1, result.output
    suite = ET.parse(junit).getroot().find("testsuite")
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert {"integrity", "tensors", "config", "tokenizer", "logits"} <= set(cases)
    assert cases["logits"].find("failure") is not None and cases["config"].find("failure") is None
    assert cases["tensors"].find("failure") is not None  # the tensor digests (format 2)
    prompt_cases = [c for name, c in cases.items() if name.startswith("logits: ")]
    assert len(prompt_cases) == len(golden_mod.read(golden_file).meta["prompts"])
    assert all(c.find("failure") is not None for c in prompt_cases)
    assert int(suite.get("failures")) == 2 + len(prompt_cases)
    step = tmp_path / "summary.md"
    assert not step.exists()  # no GITHUB_STEP_SUMMARY: nothing written
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step))
    ok = CliRunner().invoke(app, ["verify", str(sources[VARIANT]), str(converted[VARIANT]), "--quick"])
    assert ok.exit_code == 0
    text = step.read_text()
    assert "equivalent" in text and "| logits | pass |" in text and "first diverging layer: none" in text


def _third_party(src, folder, *, tokenizer):
    """A folder the way common LLaMA-fying scripts write it: every tensor in one dict saved with
    torch.save, a bare config with LLaMA's default ids and no rope_theta, and no tokenizer or a
    GPT2Tokenizer one."""
    from safetensors.torch import load_file

    from qwen2llama.qwen.checkpoint import open_checkpoint

    cfg = open_checkpoint(src).config
    q = load_file(src / "model.safetensors")
    h, p = cfg.hidden_size, cfg.projection_size
    state = {"model.embed_tokens.weight": q["transformer.wte.weight"],
             "model.norm.weight": q["transformer.ln_f.weight"],
             "lm_head.weight": q["lm_head.weight"]}
    for i in range(cfg.num_layers):
        s, d = f"transformer.h.{i}.", f"model.layers.{i}."
        for k, part in enumerate("qkv"):
            state[f"{d}self_attn.{part}_proj.weight"] = q[s + "attn.c_attn.weight"][k * p:(k + 1) * p].clone()
            state[f"{d}self_attn.{part}_proj.bias"] = q[s + "attn.c_attn.bias"][k * p:(k + 1) * p].clone()
        state[f"{d}self_attn.o_proj.weight"] = q[s + "attn.c_proj.weight"]
        state[f"{d}self_attn.o_proj.bias"] = torch.zeros(h, dtype=q[s + "attn.c_proj.weight"].dtype)
        state[f"{d}mlp.gate_proj.weight"] = q[s + "mlp.w2.weight"]
        state[f"{d}mlp.up_proj.weight"] = q[s + "mlp.w1.weight"]
        state[f"{d}mlp.down_proj.weight"] = q[s + "mlp.c_proj.weight"]
        state[f"{d}input_layernorm.weight"] = q[s + "ln_1.weight"]
        state[f"{d}post_attention_layernorm.weight"] = q[s + "ln_2.weight"]
    folder.mkdir()
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h,
        "intermediate_size": cfg.mlp_width, "num_hidden_layers": cfg.num_layers,
                                                    "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_heads, "head_dim": cfg.head_dim,
                                                    "rms_norm_eps": cfg.layer_norm_epsilon,
        "vocab_size": cfg.vocab_rows, "attention_bias": True, "tie_word_embeddings": False,
        "bos_token_id": 1, "eos_token_id": 2}))
    if tokenizer == "gpt2":
        for name in ("vocab.json", "merges.txt"):
            shutil.copyfile(src.parent / f"out-{VARIANT}" / name, folder / name)
        (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer"}))
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("tokenizer", ["none", "gpt2"])
def test_folders_other_converters_wrote(sources, converted, tmp_path, tokenizer):
    src = sources["72b-style"] if tokenizer == "none" else sources[VARIANT]
    if tokenizer == "none":
        shutil.copytree(src, tmp_path / "src")
        src = tmp_path / "src"
        from safetensors.torch import load_file, save_file

        merged = {}
        for shard in sorted(src.glob("model-*.safetensors")):
            merged.update(load_file(shard))
            shard.unlink()
        (src / "model.safetensors.index.json").unlink()
        save_file(merged, src / "model.safetensors")
    folder = _third_party(src, tmp_path / "theirs", tokenizer=tokenizer)
    result = CliRunner().invoke(app, ["verify", str(src), str(folder), "--quick", "--report",
                                      str(tmp_path / "r.json")])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    report = json.loads((tmp_path / "r.json").read_text())
    checks = report["checks"]
    assert checks["integrity"]["passed"] is None and "no conversion.json" in checks["integrity"]["note"]
    assert checks["tensors"]["passed"] is True  # the weights themselves are right
    assert checks["logits"]["passed"] is (tokenizer != "none")  # 72B-style: rope_theta 1e6 not written
    config_failures = "\n".join(checks["config"]["failures"])
    assert "bos_token_id: 1, expected 151643" in config_failures and "eos_token_id: 2" in config_failures
    if tokenizer == "none":
        assert "no rope_theta, so LLaMA's default 10000 applies" in config_failures
        assert "AutoTokenizer cannot load the folder" in checks["tokenizer"]["failures"][0]
    else:
        assert checks["tokenizer"]["tokenizer_class"] == "GPT2Tokenizer"
        assert any("ids differ" in f for f in checks["tokenizer"]["failures"])
    for name in ("config", "tokenizer"):
        assert checks[name]["passed"] is False and checks[name]["fix"]
    assert "fix:" in result.output
