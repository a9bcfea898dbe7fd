"""The model card (README.md) every converted folder gets (#31): metadata the hub reads, parsed
with huggingface_hub's own ModelCard; the verdict's figures as the report states them; "not
verified" after --no-verify; a PEFT card for adapters; the transformers snippet run exactly as the
card prints it; the source's own README never copied; hostile values printed literally."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest
from huggingface_hub import ModelCard

from helpers import bad, cli
from qwen2llama.synth import synthesize
from qwen2llama.synth.adapter import synthesize_adapter

SOURCE_README = "# Qwen-7B-Chat\nAutoModelForCausalLM.from_pretrained(..., trust_remote_code=True)\n"


@pytest.fixture(scope="module")
def chat_src(tmp_path_factory):
    src = synthesize(tmp_path_factory.mktemp("card") / "Qwen-tiny-Chat", "tiny", seed=4)
    (src / "README.md").write_text(SOURCE_README)
    return src


@pytest.fixture(scope="module")
def carded(chat_src, tmp_path_factory):
    """(folder, report) of a chat conversion with the card."""
    root = tmp_path_factory.mktemp("carded")
    out, report = root / "Qwen-tiny-Chat-llama", root / "report.json"
    assert cli("convert", chat_src, out, "--kind", "chat", "--quick", "--report", report).exit_code == 0
    return out, json.loads(report.read_text())


def test_card_metadata_parses_with_huggingface_hub(carded):
    out, _ = carded
    data = ModelCard.load(out / "README.md").data
    assert data.license == "other" and data.license_name == "tongyi-qianwen"
    assert data.license_link == "LICENSE"
    assert (out / "LICENSE").is_file() and (out / "NOTICE").is_file()
    assert data.library_name == "transformers" and data.pipeline_tag == "text-generation"
    assert set(data.tags) == {"llama", "qwen", "qwen2llama"} and data.language == ["en", "zh"]
    assert data.base_model is None  # a local source: no hub id to name


def test_card_states_the_reports_figures(carded):
    out, report = carded
    text = (out / "README.md").read_text()
    logits = report["checks"]["logits"]
    assert "**equivalent**" in text and "quick prompt set" in text
    for name, check in report["checks"].items():
        assert f"| {name} | pass: {check['summary'].replace('|', chr(92) + '|')} |" in text
    assert f"max |Δlogit| {logits['max_abs_logit_diff']:.3g}" in text
    assert f"KL max {logits['kl_max']:.3g}" in text
    assert f"top-1 agreement {logits['top1_agreement']:.4f}" in text
    assert "greedy continuations identical: 3/3" in text
    assert "<|im_start|>" in text and "<|im_end|>" in text  # ChatML for a chat model
    from qwen2llama import __version__

    assert f"Converted by qwen2llama `{__version__}`" in text
    assert "trust_remote_code=True" not in text and SOURCE_README.strip() not in text


def test_the_transformers_snippet_runs_as_printed(carded):
    out, _ = carded
    code = re.search(r"```python\n(.*?)```", (out / "README.md").read_text(), re.S).group(1)
    assert f'MODEL = "{out.name}"' in code and "apply_chat_template" in code
    result = subprocess.run([sys.executable, "-c", code], cwd=out.parent, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_not_verified_and_no_card(chat_src, tmp_path):
    assert cli("convert", chat_src, tmp_path / "unverified", "--no-verify").exit_code == 0
    text = (tmp_path / "unverified" / "README.md").read_text()
    assert "**Not verified**" in text and "equivalent" not in text
    assert ModelCard.load(tmp_path / "unverified" / "README.md").data.license == "other"
    # --no-card with a source README: no README at all, the source's is never copied
    assert cli("convert", chat_src, tmp_path / "bare", "--no-verify", "--no-card").exit_code == 0
    assert not (tmp_path / "bare" / "README.md").exists()
    result = cli("verify", chat_src, tmp_path / "unverified", "--quick")
    assert result.exit_code == 0  # the card is not among the hashed files, and no stray file either


def test_qwen2_target_and_gptq_cards(tmp_path):
    src = synthesize(tmp_path / "int4", "tiny-int4", seed=3)
    assert cli("convert", src, tmp_path / "q2", "--target", "qwen2", "--no-verify").exit_code == 0
    data = ModelCard.load(tmp_path / "q2" / "README.md").data
    assert "qwen2" in data.tags and data.quantization == {"method": "gptq", "bits": 4, "group_size": 32}
    assert "GPTQ 4-bit, group size 32" in (tmp_path / "q2" / "README.md").read_text()


def test_adapter_card_and_an_existing_readme_in_its_folder(chat_src, carded, tmp_path):
    qwen_adapter = synthesize_adapter(tmp_path / "qwen-lora", chat_src, seed=1)
    dst = tmp_path / "llama-lora"
    dst.mkdir()
    (dst / "README.md").write_text("someone's notes")
    args = ("adapter", qwen_adapter, dst, "--base", chat_src, "--llama-base", carded[0], "--quick")
    bad(*args, needle="exists")
    assert (dst / "README.md").read_text() == "someone's notes"  # refused: nothing touched
    assert cli(*args, "--force").exit_code == 0
    card = ModelCard.load(dst / "README.md")
    assert card.data.library_name == "peft" and "lora" in card.data.tags
    assert "**equivalent**" in card.text and "someone's notes" not in card.text
    shutil.rmtree(dst)
    assert cli("adapter", qwen_adapter, dst, "--no-verify").exit_code == 0
    assert "**Not verified**" in (dst / "README.md").read_text()


def test_hostile_names_and_values_print_literally(tmp_path):
    """A source folder and an ignored file named with markup and control characters: the card's
    metadata still parses and its text shows them escaped, never as markup or raw escapes."""
    src = synthesize(tmp_path / "evil`](javascript:x)<b>", "tiny", seed=6)
    (src / "notes\x1b[31m`<script>.txt").write_text("x")
    out = tmp_path / "out"
    assert cli("convert", src, out, "--no-verify", "--ignore", "notes*").exit_code == 0
    text = (out / "README.md").read_text()
    assert ModelCard.load(out / "README.md").data.license == "other"
    assert "\x1b" not in text and "`evil'](javascript:x)<b>`" in text
    assert "`notes\\x1b[31m'<script>.txt`" in text
