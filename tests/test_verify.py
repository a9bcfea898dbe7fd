"""`verify` passes honest conversions and catches every planted defect (exit 1)."""
from __future__ import annotations

import json
import re
import shutil

import pytest
from typer.testing import CliRunner

from qwen2llama.cli import app
from qwen2llama.verify import verify

from defects import DEFECTS, rehash



@pytest.mark.slow
def test_honest_conversions_pass(variant, sources, converted):
    result = verify(sources[variant], converted[variant], quick=variant != "st-single-bf16")
    assert result["passed"], json.dumps(result["checks"], indent=1)[:3000]
    assert all(c["passed"] for name, c in result["checks"].items())
    logits = result["checks"]["logits"]
    assert logits["max_abs_logit_diff"] <= 1e-5 and logits["top1_agreement"] == 1.0
    assert all(g["identical"] for g in logits["greedy"])


@pytest.mark.slow
def test_narrowing_cast_passes_with_stated_tolerance(sources, tmp_path):
    from qwen2llama.convert import convert

    out = tmp_path / "bf16"
    convert(sources["st-single-fp32"], out, dtype="bfloat16")
    result = verify(sources["st-single-fp32"], out, quick=True)
    assert result["passed"], json.dumps(result["checks"], indent=1)[:3000]
    assert result["checks"]["tensors"]["lossy_cast"] is True
    logits = result["checks"]["logits"]
    assert logits["tolerance"]["max_abs_logit_diff_rel"] is None and logits["max_abs_logit_diff"] > 1e-5


def test_cli_exit_codes_and_report(sources, converted, tmp_path):
    runner = CliRunner()
    report = tmp_path / "report.json"
    ok = runner.invoke(app, ["verify", str(sources["st-single-bf16"]), str(converted["st-single-bf16"]),
                             "--report", str(report)])
    assert ok.exit_code == 0, ok.output
    data = json.loads(report.read_text())
    assert data["passed"] is True and set(data["checks"]) == {"integrity", "tensors", "config", "tokenizer",
                                                              "logits"}
    assert data["checks"]["logits"]["layers"][0]["layer"] == 0
    beyond = data["checks"]["logits"]["beyond_seq_length"]  # tiny uses dynamic NTK + logn
    # a prompt within seq_length decoded past it differs by logn alone: less than a prompt past it
    decoded = beyond["decoded_past_seq_length"]["max_abs_logit_diff_beyond"]
    assert 0 < decoded < beyond["max_abs_logit_diff_beyond"]
    # a different model is bad input (2), not a failed check
    other = runner.invoke(app, ["verify", str(sources["72b-style"]), str(converted["st-single-bf16"])])
    assert other.exit_code == 2 and "different models" in other.output
    missing = runner.invoke(app, ["verify", str(sources["st-single-bf16"]), str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "Traceback" not in missing.output


@pytest.fixture(scope="module")
def converted_qwen2(sources, tmp_path_factory):
    """st-single-bf16 in the Qwen2 layout (--target qwen2)."""
    from qwen2llama.convert import convert

    out = tmp_path_factory.mktemp("qwen2") / "out"
    convert(sources["st-single-bf16"], out, target="qwen2")
    return out


@pytest.mark.slow
@pytest.mark.parametrize("target", ["llama", "qwen2"])
@pytest.mark.parametrize("defect", list(DEFECTS))
def test_planted_defect_fails(defect, target, sources, converted, converted_qwen2, tmp_path):
    plant, must_fail = DEFECTS[defect]
    folder = tmp_path / "planted"
    shutil.copytree(converted["st-single-bf16"] if target == "llama" else converted_qwen2, folder)
    plant(folder)
    rehash(folder)
    result = verify(sources["st-single-bf16"], folder, quick=True)
    failed = {name for name, c in result["checks"].items() if c["passed"] is False}
    assert not result["passed"]
    assert must_fail <= failed, (defect, failed, {n: c.get("failures") for n, c in result["checks"].items()})
    assert result["checks"]["integrity"]["passed"]  # the defect, not the hashes, was caught


def test_tampered_file_fails_integrity(sources, converted, tmp_path):
    folder = tmp_path / "tampered"
    shutil.copytree(converted["st-single-bf16"], folder)
    with open(folder / "merges.txt", "a") as fh:
        fh.write("\n")
    runner = CliRunner()
    result = runner.invoke(app, ["verify", str(sources["st-single-bf16"]), str(folder), "--quick"])
    assert result.exit_code == 1
    assert re.search(r"integrity\s+FAIL", result.output) and "merges.txt" in result.output


def test_custom_prompt_file(sources, converted, tmp_path):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"texts": ["Custom prompt with digits 4096 and 中文."], "chats": []}))
    runner = CliRunner()
    report = tmp_path / "r.json"
    ok = runner.invoke(app, ["verify", str(sources["st-single-bf16"]), str(converted["st-single-bf16"]),
                             "--prompts", str(prompts), "--report", str(report), "--no-long-prompt"])
    assert ok.exit_code == 0, ok.output
    rows = json.loads(report.read_text())["checks"]["logits"]["prompts"]
    assert [r["prompt"] for r in rows] == ["Custom prompt with digits 4096"]
    prompts.write_text("[1, 2]")
    bad = runner.invoke(app, ["verify", str(sources["st-single-bf16"]), str(converted["st-single-bf16"]),
                              "--prompts", str(prompts)])
    assert bad.exit_code == 2 and "prompt set is unreadable" in bad.output


def test_long_prompt_budget(tmp_path):
    from qwen2llama.qwen.config import parse_config
    from qwen2llama.synth import load_preset
    from qwen2llama.verify.prompts import LONG_PROMPT_MAX_FLOPS, long_prompt_flops

    def flops(preset):
        cfg = parse_config(load_preset(preset), tmp_path / "config.json")
        return long_prompt_flops(cfg, cfg.seq_length)

    assert flops("tiny") < LONG_PROMPT_MAX_FLOPS < flops("qwen-1_8b") < flops("qwen-7b") < flops("qwen-72b")


@pytest.mark.parametrize("algorithm", ["blake3", "sha256"])
def test_manifest_digests_are_the_named_algorithm(sources, tmp_path, algorithm):
    """conversion.json names its hash and every digest is that hash of the file (computed here with
    the libraries themselves); integrity checks with the named algorithm and catches a change."""
    import hashlib

    import blake3

    from qwen2llama.convert import convert
    from qwen2llama.verify.integrity import check_integrity

    out = tmp_path / "out"
    convert(sources["st-single-bf16"], out, hash=algorithm)
    record = json.loads((out / "conversion.json").read_text())
    assert record["hash"] == algorithm
    make = {"blake3": blake3.blake3, "sha256": hashlib.sha256}[algorithm]
    assert record["files"] == {p.name: make(p.read_bytes()).hexdigest()
                               for p in sorted(out.iterdir()) if p.name != "conversion.json"}
    assert check_integrity(out)["passed"] is True
    with open(out / "vocab.json", "a") as fh:
        fh.write(" ")
    failed = check_integrity(out)
    assert failed["passed"] is False and failed["failures"] == [f"vocab.json: {algorithm} differs from "
                                                                "the manifest"]
