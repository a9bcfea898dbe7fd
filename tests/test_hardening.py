"""Hostile and broken inputs, interrupted runs: exit 2 with a short message naming the file,
no traceback, nothing that looks like a finished model."""
from __future__ import annotations

import json
import os
import resource
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from qwen2llama.convert import convert
from qwen2llama.errors import OutputError
from qwen2llama.publish import OLD_TAG, STAGING_TAG
from qwen2llama.synth import synthesize

from helpers import assert_bad_input, default_signals, run_cli, spawn_cli  # noqa: F401


def no_output(out: Path):
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}{STAGING_TAG}*"))


@pytest.fixture
def src(tmp_path):
    return synthesize(tmp_path / "src", "tiny")


@pytest.fixture
def bin_src(tmp_path):
    return synthesize(tmp_path / "binsrc", "tiny", fmt="bin")


class Payload:
    """Unpickling this runs a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_payload_is_never_run(bin_src, tmp_path):
    marker = tmp_path / "payload-ran"
    state = torch.load(bin_src / "pytorch_model.bin", weights_only=True)
    state["transformer.ln_f.weight"] = Payload(marker)
    torch.save(state, bin_src / "pytorch_model.bin")
    result = run_cli("convert", bin_src, tmp_path / "out")
    assert_bad_input(result, "refusing to load", "system", "pytorch_model.bin")
    assert not marker.exists()
    no_output(tmp_path / "out")
    # the payload is live: a full unpickle does run it (in a child process)
    subprocess.run([sys.executable, "-c",
                    f"import torch; torch.load({str(bin_src / 'pytorch_model.bin')!r}, weights_only=False)"],
                   capture_output=True)
    assert marker.exists()


def _rewrite_header(path: Path, edit):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    edit(header)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])


def test_truncated_shard(src, tmp_path):
    path = src / "model.safetensors"
    os.truncate(path, path.stat().st_size - 1000)
    assert_bad_input(run_cli("convert", src, tmp_path / "out"), "runs past the end", "model.safetensors")
    no_output(tmp_path / "out")


def test_header_longer_than_file(src, tmp_path):
    path = src / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(struct.pack("<Q", 10**9) + data[8:])
    assert_bad_input(run_cli("convert", src, tmp_path / "out"), "header length", "model.safetensors")


def test_overlapping_offsets(src, tmp_path):
    def edit(h):
        a, b = h["transformer.h.0.ln_1.weight"], h["transformer.h.0.ln_2.weight"]
        b["data_offsets"] = list(a["data_offsets"])
    _rewrite_header(src / "model.safetensors", edit)
    assert_bad_input(run_cli("convert", src, tmp_path / "out"), "overlap", "model.safetensors")


def test_corrupt_header_json(src, tmp_path):
    path = src / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[10:14] = b"\xff\xfe{{"
    path.write_bytes(bytes(data))
    assert_bad_input(run_cli("inspect", src), "not valid JSON", "model.safetensors")


@pytest.fixture
def sharded(tmp_path):
    return synthesize(tmp_path / "sharded", "tiny", shards=2)


def test_index_names_missing_shard(sharded, tmp_path):
    (sharded / "model-00002-of-00002.safetensors").unlink()
    assert_bad_input(run_cli("convert", sharded, tmp_path / "out"), "missing",
                     "model-00002-of-00002.safetensors")


def test_index_path_traversal(sharded, tmp_path):
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    index["weight_map"]["lm_head.weight"] = "../../etc/passwd"
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    assert_bad_input(run_cli("convert", sharded, tmp_path / "out"), "path traversal", "index.json")


def test_two_shards_claim_one_tensor(sharded, tmp_path):
    first, second = sharded / "model-00001-of-00002.safetensors", sharded / "model-00002-of-00002.safetensors"
    tensors = load_file(second)
    tensors["transformer.wte.weight"] = load_file(first)["transformer.wte.weight"]
    save_file(tensors, second)
    assert_bad_input(run_cli("convert", sharded, tmp_path / "out"), "stored in two shards",
                     "transformer.wte.weight")


@pytest.mark.parametrize("edit,needle", [
    (lambda p: p.write_text("{not json"), "not valid JSON"),
    (lambda p: p.write_text(json.dumps({k: v for k,
                                        v in json.loads(p.read_text()).items() if k != "hidden_size"})),
     "hidden_size"),
    (lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "hidden_size": 128})),
     "config.json implies"),
    (lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "num_hidden_layers": 1})), "layer 1"),
    (lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "model_type": "llama"})),
     "not a Qwen v1 config"),
])
def test_bad_config(src, tmp_path, edit, needle):
    edit(src / "config.json")
    assert_bad_input(run_cli("convert", src, tmp_path / "out"), needle)
    no_output(tmp_path / "out")


def _edit_source(src, fn):
    tensors = load_file(src / "model.safetensors")
    fn(tensors)
    save_file(tensors, src / "model.safetensors")


def test_unknown_tensor(src, tmp_path):
    _edit_source(src, lambda t: t.__setitem__("transformer.h.0.attn.lora_A.weight", torch.zeros(4, 4)))
    assert_bad_input(run_cli("convert", src, tmp_path / "out"),
                     "unknown tensor transformer.h.0.attn.lora_A.weight")


def test_missing_tensor(src, tmp_path):
    _edit_source(src, lambda t: t.pop("transformer.h.1.mlp.w2.weight"))
    assert_bad_input(run_cli("convert", src, tmp_path / "out"),
                     "missing tensors: transformer.h.1.mlp.w2.weight")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("cast", [[], ["--dtype", "float32"]])  # byte copy, and the cast path
def test_non_finite_weight(src, tmp_path, value, cast):
    def poison(t):
        t["transformer.h.1.attn.c_proj.weight"][2, 3] = value
    _edit_source(src, poison)
    assert_bad_input(run_cli("convert", src, tmp_path / "out", *cast), "transformer.h.1.attn.c_proj.weight",
                     "NaN or Inf", "element 131 ")
    no_output(tmp_path / "out")


def test_broken_vocabulary(src, tmp_path):
    lines = (src / "qwen.tiktoken").read_bytes().splitlines()
    lines[500] = lines[499]
    (src / "qwen.tiktoken").write_bytes(b"\n".join(lines))
    assert_bad_input(run_cli("convert", src, tmp_path / "out"), "line 501", "qwen.tiktoken")
    no_output(tmp_path / "out")


def test_existing_output_needs_force_and_survives_failure(src, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert_bad_input(run_cli("convert", src, out, "--no-verify"), "already exists", "--force")
    # --force with a failing conversion leaves the old folder as it was
    _edit_source(src, lambda t: t["lm_head.weight"].__setitem__((0, 0), float("nan")))
    assert_bad_input(run_cli("convert", src, out, "--force", "--no-verify"), "lm_head.weight")
    assert (out / "precious.txt").read_text() == "keep me"


def test_force_replaces_on_success(src, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("old")
    result = run_cli("convert", src, out, "--force", "--no-verify")
    assert result.returncode == 0, result.stderr
    assert not (out / "precious.txt").exists() and (out / "model.safetensors").exists()


def test_dry_run_writes_nothing(src, tmp_path):
    result = run_cli("convert", src, tmp_path / "out", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "nothing written" in result.stdout and "29 tensors" in result.stdout
    no_output(tmp_path / "out")
    assert_bad_input(run_cli("convert", src, src / "inside", "--dry-run"), "overlaps the source")


def test_output_inside_source(src):
    assert_bad_input(run_cli("convert", src, src / "llama"), "overlaps the source")
    assert not (src / "llama").exists()


def test_source_missing_or_unreadable(src, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from qwen2llama.cli import app

    assert_bad_input(run_cli("convert", tmp_path / "nowhere", tmp_path / "out"), "not a folder")
    # root reads any file whatever its mode, so simulate the permission error the OS would give
    real_open = open

    def refusing_open(path, *args, **kwargs):
        if str(path).endswith("model.safetensors"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", refusing_open)
    result = CliRunner().invoke(app, ["convert", str(src), str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "Permission denied" in result.output and "model.safetensors" in result.output
    assert "Traceback" not in result.output
    no_output(tmp_path / "out")


def test_disk_full(src, tmp_path):
    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (8 << 20, 8 << 20))  # files larger than 8 MB fail to grow
    result = run_cli("convert", src, tmp_path / "out", "--no-verify", preexec=small_disk)
    assert_bad_input(result, "cannot write the output")
    no_output(tmp_path / "out")


def _wait_for(predicate, proc, limit=120.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.002)
    return False


KILL_POINTS = {
    "staging created": lambda st: st is not None,
    "weights being written": lambda st: st is not None and any(st.glob("*.safetensors")),
    "tokenizer written": lambda st: st is not None and (st / "tokenizer_config.json").exists(),
    "manifest written": lambda st: st is not None and (st / "conversion.json").exists(),
}


@pytest.mark.slow
@pytest.mark.parametrize("point", list(KILL_POINTS))
@pytest.mark.parametrize("existing", [False, True])
def test_sigkill_leaves_nothing_half_written(src, tmp_path, point, existing):
    out = tmp_path / "out"
    if existing:
        out.mkdir()
        (out / "old.txt").write_text("previous model")
    args = ["convert", src, out, "--quick"] + (["--force"] if existing else [])
    proc = spawn_cli(*args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staging = lambda: next(iter(tmp_path.glob(f".out{STAGING_TAG}*")), None)  # noqa: E731
    reached = _wait_for(lambda: KILL_POINTS[point](staging()), proc)
    proc.kill()
    proc.wait()
    assert reached, f"conversion ended before {point}"
    if existing:
        assert (out / "old.txt").read_text() == "previous model" and not (out / "config.json").exists()
    else:
        assert not out.exists()
    rerun = run_cli("convert", src, out, "--no-verify", *(["--force"] if existing else []))
    assert rerun.returncode == 0, rerun.stderr
    assert (out / "conversion.json").exists() and not (out / "old.txt").exists()
    assert not list(tmp_path.glob(".out.qwen2llama-*"))


@pytest.mark.parametrize("inherited", ["default", "ignored"])
def test_sigint_stops_cleanly(src, tmp_path, inherited):
    """Ctrl-C stops a conversion, also when the test process itself was started with SIGINT
    ignored (as under `make test &`)."""
    out = tmp_path / "out"
    previous = signal.signal(signal.SIGINT,
                             signal.SIG_IGN if inherited == "ignored" else signal.default_int_handler)
    try:
        proc = spawn_cli("convert", src, out, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    staging = lambda: next(iter(tmp_path.glob(f".out{STAGING_TAG}*")), None)  # noqa: E731
    assert _wait_for(lambda: staging() is not None, proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    no_output(out)


def test_debug_flag_shows_traceback(tmp_path):
    result = run_cli("--debug", "convert", tmp_path / "nowhere", tmp_path / "out")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_model_set_aside_by_a_killed_force_run_is_never_replaced_without_force(src, tmp_path):
    """A --force run killed between its two renames leaves OUT absent and the user's model set
    aside; a run without --force must put it back and refuse, not publish over it."""
    out = tmp_path / "out"
    aside = tmp_path / f".out{OLD_TAG}999999999"  # no such process
    aside.mkdir()
    (aside / "weights.txt").write_text("the user's model")
    assert_bad_input(run_cli("convert", src, out, "--dry-run"), "already exists", "--force")
    assert_bad_input(run_cli("convert", src, out, "--no-verify"), "already exists", "--force")
    assert (out / "weights.txt").read_text() == "the user's model"
    assert not aside.exists() and not (out / "config.json").exists()


@pytest.mark.slow
def test_second_run_to_the_same_output_loses_cleanly(src, tmp_path):
    """Two conversions to one OUT at once: the second is refused with exit 2 while the first
    writes, and OUT holds the first one's result."""
    other = synthesize(tmp_path / "other", "tiny", seed=11)
    out = tmp_path / "out"
    first = spawn_cli("convert", src, out, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    staging = lambda: next(iter(tmp_path.glob(f".out{STAGING_TAG}*")), None)  # noqa: E731
    assert _wait_for(lambda: staging() is not None, first)
    second = run_cli("convert", other, out, "--no-verify")
    assert_bad_input(second, "another qwen2llama run", "out")
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert json.loads((out / "conversion.json").read_text())["source"]["folder"] == str(src.resolve())
    assert not list(tmp_path.glob(".out.qwen2llama-*"))


@pytest.mark.parametrize("force", [False, True])
def test_publish_never_replaces_a_folder_that_appeared_meanwhile(src, tmp_path, force):
    """Another program creates OUT while the conversion writes: without --force it stays as it is
    and the run fails; with --force it is replaced, as asked."""
    out = tmp_path / "out"

    def someone_else_writes(staging):
        out.mkdir()
        (out / "theirs.txt").write_text("not ours")

    if force:
        convert(src, out, force=True, before_publish=someone_else_writes)
        assert (out / "conversion.json").exists() and not (out / "theirs.txt").exists()
    else:
        with pytest.raises(OutputError, match="appeared while this run was writing"):
            convert(src, out, before_publish=someone_else_writes)
        assert sorted(p.name for p in out.iterdir()) == ["theirs.txt"]
    assert not list(tmp_path.glob(".out.qwen2llama-*"))


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A source and its conversion, copied afresh by each test that damages one of them."""
    root = tmp_path_factory.mktemp("pair")
    src = synthesize(root / "src", "tiny")
    convert(src, root / "out")
    return src, root / "out"


def _damaged(pair, tmp_path, side: str, name: str, content: str):
    import shutil

    src, out = (shutil.copytree(p, tmp_path / p.name) for p in pair)
    target = src if side == "source" else out
    if content is None:
        (target / name).unlink()
    else:
        (target / name).write_text(content)
    return src, out


@pytest.mark.parametrize("name,content,needle", [
    ("generation_config.json", "{not json", "generation_config.json is not valid JSON"),
    ("generation_config.json", "[1, 2]", "generation_config.json is not a JSON object"),
    ("conversion.json", json.dumps({"files": ["config.json"]}), "'files' is not an object"),
    ("conversion.json", "{cut sh", "conversion.json is not valid JSON"),
])
@pytest.mark.slow
def test_verify_reports_a_damaged_converted_folder_as_a_failed_check(pair, tmp_path, name, content, needle):
    from typer.testing import CliRunner

    from qwen2llama.cli import app

    src, out = _damaged(pair, tmp_path, "output", name, content)
    result = CliRunner().invoke(app, ["verify", str(src), str(out), "--quick"])
    assert result.exception is None or isinstance(result.exception,
                                                  SystemExit), result.exception  # no traceback
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and needle in result.output and "NOT equivalent" in result.output


@pytest.mark.parametrize("content,needle", [
    ("{not json", "generation_config.json is not a valid JSON object"),
    ("[1, 2]", "generation_config.json is not a valid JSON object"),
])
@pytest.mark.slow
def test_verify_reports_a_damaged_source_as_bad_input(pair, tmp_path, content, needle):
    src, out = _damaged(pair, tmp_path, "source", "generation_config.json", content)
    assert_bad_input(run_cli("verify", src, out, "--quick"), needle, "generation_config.json")


@pytest.mark.slow
def test_verify_source_without_embedding_is_bad_input(pair, tmp_path):
    import shutil

    src, out = (shutil.copytree(p, tmp_path / p.name) for p in pair)
    _edit_source(src, lambda t: t.pop("transformer.wte.weight"))
    assert_bad_input(run_cli("verify", src, out, "--quick"), "missing tensors: transformer.wte.weight")
