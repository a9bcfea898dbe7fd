"""Nothing left behind: every file of a source folder is converted, carried, known and not needed,
ignored on purpose, or unknown — and unknown files that hold weights stop the run. A reward model's
value head is carried and checked; multimodal Qwen and adapters inside a model folder are named."""
from __future__ import annotations

import json
import shutil
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from qwen2llama.synth import synthesize

from defects import edit_json, rehash
from helpers import bad, cli


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("inventory") / "src", "tiny", layers=1, dtype="float32", seed=8)


def _copy(base, tmp_path, name="src"):
    return shutil.copytree(base, tmp_path / name)


def _value_head(folder, hidden=64, value=None):
    weight = torch.randn(1, hidden) if value is None else torch.full((1, hidden), value)
    save_file({"v_head.summary.weight": weight, "v_head.summary.bias": torch.zeros(1)},
              str(folder / "value_head.safetensors"))


def test_every_file_has_a_place_and_conversion_json_records_it(base, tmp_path):
    src = _copy(base, tmp_path)
    (src / "README.md").write_text("# the source's card\n")
    (src / "modeling_qwen.py").write_text("raise SystemExit('never run')\n")
    (src / "train_results.json").write_text("{}")
    (src / "notes.xyz").write_text("a user's note")
    _value_head(src)
    result = cli("inspect", src)
    assert result.exit_code == 0, result.output
    assert "1 unknown" in result.output and "notes.xyz" in result.output
    assert "value_head.safetensors" in result.output
    out = tmp_path / "out"
    assert cli("convert", src, out, "--quick").exit_code == 0
    record = json.loads((out / "conversion.json").read_text())
    inv = record["inventory"]
    assert set(inv["converted"]) == {"model.safetensors", "config.json", "generation_config.json",
                                     "qwen.tiktoken"}
    assert set(inv["carried"]) == {"LICENSE", "NOTICE", "value_head.safetensors"}
    assert inv["unknown"] == ["notes.xyz"]
    known = {f for files in inv["known"].values() for f in files}
    assert {"README.md", "modeling_qwen.py", "train_results.json", "tokenizer_config.json"} <= known
    assert not (out / "modeling_qwen.py").exists()
    assert "the source's card" not in (out / "README.md").read_text()  # ours, never the source's


@pytest.mark.parametrize("stray", ["visual.bin", "extra_head.safetensors", "blob",
                                   "global_step5/mp_rank_00.pt"])
def test_unknown_weights_stop_the_run_until_ignored_on_purpose(base, tmp_path, stray):
    src = _copy(base, tmp_path)
    path = src / stray
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"w": torch.ones(2)}, str(path))  # "blob": no name to go by, safetensors by its bytes
    bad("convert", src, tmp_path / "out", needle=stray.split("/")[-1][:8])
    assert not (tmp_path / "out").exists()
    result = cli("convert", src, tmp_path / "out", "--quick", "--ignore", stray)
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "out" / "conversion.json").read_text())
    assert record["inventory"]["ignored"] == [stray]


@pytest.mark.parametrize("pattern", ["model*", "*.safetensors", "qwen.tiktoken", "config.json", "*"])
def test_ignore_never_drops_what_the_conversion_reads(base, tmp_path, pattern):
    bad("convert", _copy(base, tmp_path), tmp_path / "out", "--ignore", pattern,
        needle="which the conversion reads")


def test_an_adapter_inside_a_model_folder_is_named(base, tmp_path):
    from qwen2llama.synth import synthesize_adapter

    src = _copy(base, tmp_path)
    lora = synthesize_adapter(tmp_path / "lora", src, seed=3)
    for f in lora.iterdir():
        shutil.copyfile(f, src / f.name)
    result = bad("convert", src, tmp_path / "out", needle="PEFT adapter")
    assert "--adapter" in result.output


def test_a_second_weight_set_is_named_when_equal_and_refused_when_not(base, tmp_path):
    src = _copy(base, tmp_path)
    weights = load_file(str(src / "model.safetensors"))
    torch.save(weights, src / "pytorch_model.bin")
    result = cli("inspect", src)
    assert result.exit_code == 0 and "0 unknown" in result.output, result.output
    weights["transformer.wte.weight"] = weights["transformer.wte.weight"][:-64].clone()
    torch.save(weights, src / "pytorch_model.bin")
    bad("inspect", src, needle="disagree")


def test_a_value_head_is_carried_digested_and_checked(base, tmp_path):
    src = _copy(base, tmp_path)
    _value_head(src)
    for target in ("llama", "qwen2"):
        out = tmp_path / f"out-{target}"
        report_path = tmp_path / f"{target}.json"
        result = cli("convert", src, out, "--quick", "--target", target, "--report", report_path)
        assert result.exit_code == 0, result.output
        assert (out / "value_head.safetensors").read_bytes() == (src / "value_head.safetensors").read_bytes()
        record = json.loads((out / "conversion.json").read_text())
        assert record["files"]["value_head.safetensors"]
        report = json.loads(report_path.read_text())
        assert report["checks"]["tensors"]["value_head"] == "carried, identical"
    out = tmp_path / "out-llama"
    _value_head(out, value=0.5)  # a different head, the manifest made to agree
    rehash(out)
    result = cli("verify", src, out, "--quick")
    assert result.exit_code == 1 and "value_head.safetensors: differs" in result.output, result.output
    (out / "value_head.safetensors").unlink()
    edit_json(out, "conversion.json", lambda r: (r["files"].pop("value_head.safetensors"),
                                                 r["sizes"].pop("value_head.safetensors")))
    result = cli("verify", src, out, "--quick")
    assert result.exit_code == 1 and "not in the output" in result.output, result.output


@pytest.mark.parametrize("damage", ["NaN", "infinity", "garbage", "other hidden size", "other names"])
def test_a_broken_value_head_is_refused_not_copied(base, tmp_path, damage):
    src = _copy(base, tmp_path)
    head = src / "value_head.safetensors"
    if damage == "NaN":
        _value_head(src, value=float("nan"))
    elif damage == "infinity":
        _value_head(src, value=float("inf"))
    elif damage == "garbage":
        head.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all")
    elif damage == "other hidden size":
        _value_head(src, hidden=48)
    else:
        save_file({"score.weight": torch.zeros(1, 64)}, str(head))
    bad("convert", src, tmp_path / "out", needle="value")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("how", ["visual", "audio", "visual tensors"])
def test_multimodal_qwen_is_named(base, tmp_path, how):
    src = _copy(base, tmp_path)
    if how == "visual tensors":
        weights = load_file(str(src / "model.safetensors"))
        weights["transformer.visual.conv1.weight"] = torch.zeros(4, 3)
        save_file(weights, str(src / "model.safetensors"))
        needle = "Qwen-VL"
    else:
        edit_json(src, "config.json", lambda c: c.__setitem__(how, {"image_size": 448}))
        needle = "Qwen-VL" if how == "visual" else "Qwen-Audio"
    result = bad("convert", src, tmp_path / "out", needle=needle)
    assert "unknown tensor" not in result.output


def test_a_fifo_or_link_in_the_source_folder_is_listed_never_opened(base, tmp_path):
    """The content sniff reads regular files only: a FIFO would block its open for ever."""
    import os

    from helpers import run_cli

    src = _copy(base, tmp_path)
    os.mkfifo(src / "stray")
    os.symlink("/dev/zero", src / "zeros")
    result = run_cli("inspect", src, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "2 unknown" in result.stdout and "stray" in result.stdout and "zeros" in result.stdout


def test_thousands_of_files_are_accounted_for_quickly(base, tmp_path):
    src = _copy(base, tmp_path)
    (src / "logs").mkdir()
    for k in range(3000):
        (src / "logs" / f"step-{k}.txt").write_text("x")
    for k in range(200):
        (src / f"note-{k}.cfg").write_text("y")
    t0 = time.perf_counter()
    result = cli("inspect", src)
    assert result.exit_code == 0, result.output
    assert time.perf_counter() - t0 < 20
    assert "200 unknown" in result.output and "and 190 more" in result.output
    assert len(result.output.splitlines()) < 30  # one screen, not one line per file
