"""Hostile inputs, round 2, by class, each fixed at its root and tested over many generated cases:
paths judged after the OS resolves them (paths.output_path), outputs that are only ever regular
files and folders, one file never two outputs, hub caches that stay inside the cache
(sources.check_snapshot), the weight set a runtime loads (one, or a failed check)."""
from __future__ import annotations

import json
import re
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qwen2llama import batch
from qwen2llama.convert import convert
from qwen2llama.errors import InputError
from qwen2llama.options import ConvertOptions
from qwen2llama.paths import output_path
from qwen2llama.synth import synthesize, synthesize_adapter

from helpers import cli, run_cli
from test_batch import make_hub_cache


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile2")
    src = synthesize(root / "src", "tiny", layers=1, seed=3)
    out = root / "out"
    convert(src, out)
    return src, out, root


DEEP = Path("1/2/3/4/5")  # w lies this deep, so that five ".." stay inside the scratch folder


def _tree(root: Path) -> Path:
    """w/a/b/c, w/d/e, and links in w: L -> a/b, M -> d (absolute), N -> a/b/c (relative), T -> a
    folder outside w; returns w."""
    w = root / DEEP / "w"
    w.mkdir(parents=True)
    (root / DEEP / "outside").mkdir()
    for name, target in (("L", w / "a" / "b"), ("M", w / "d"), ("N", Path("a/b/c")),
                         ("T", root / DEEP / "outside")):
        os.symlink(target, w / name)
    for d in ("a/b/c", "d/e"):
        (w / d).mkdir(parents=True)
    return w


def _dirs(root: Path) -> set[str]:
    return {os.path.join(p, d) for p, ds, _ in os.walk(root) for d in ds}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(["a", "b", "c", "d", "e", "L", "M", "N", "T", ".."]), min_size=0,
                max_size=5))
def test_an_output_path_is_where_the_os_puts_it(parts):
    """For any path through links and `..`, output_path names the folder the OS creates for it."""
    root = Path(os.path.realpath(tempfile.mkdtemp()))
    try:
        path = Path(_tree(root), *parts, "new")
        predicted = output_path(path)
        assert root in predicted.parents  # five ".." from w cannot leave the scratch folder
        before = _dirs(root)
        try:
            os.mkdir(path)
        except (FileNotFoundError, NotADirectoryError, FileExistsError):
            return  # the OS cannot create it either
        created = _dirs(root) - before
        assert len(created) == 1
        assert Path(os.path.realpath(created.pop())) == predicted, (parts, predicted)
    finally:
        shutil.rmtree(root)


def test_force_replaces_the_folder_the_os_resolves_not_the_one_the_string_names(model, tmp_path):
    """convert SRC dd/L/../x --force, L -> far/deep: the output is dd/far/x; dd/x (the folder that
    normalising the string would name) keeps the user's file."""
    src, _, _ = model
    dd = tmp_path / "dd"
    (dd / "far" / "deep").mkdir(parents=True)
    os.symlink(dd / "far" / "deep", dd / "L")
    (dd / "x").mkdir()
    (dd / "x" / "user.txt").write_text("keep me")
    result = cli("convert", src, f"{dd}/L/../x", "--force", "--no-verify")
    assert result.exit_code == 0, result.output
    assert (dd / "x" / "user.txt").read_text() == "keep me"
    assert (dd / "far" / "x" / "config.json").is_file()


@pytest.mark.parametrize("kind", ["fifo", "link to a file", "link to a folder"])
def test_single_file_outputs_are_only_ever_regular_files(model, tmp_path, kind):
    src, out, _ = model
    target, victim = tmp_path / "target", tmp_path / "victim"
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "link to a file":
        victim.write_text("untouched")
        os.symlink(victim, target)
    else:
        victim.mkdir()
        os.symlink(victim, target)
    for args in (["golden", src, target, "--quick", "--force"],
                 ["verify", src, out, "--quick", "--report", target],
                 ["verify", src, out, "--quick", "--junit", target]):
        result = cli(*args)
        assert result.exit_code == 2, result.output
        assert "not a regular file" in result.output or "folder" in result.output, result.output
    assert os.path.islink(target) or kind == "fifo"
    if kind == "link to a file":
        assert victim.read_text() == "untouched"


def test_one_file_is_never_two_outputs_of_a_run(model, tmp_path):
    src, out, root = model
    lora = synthesize_adapter(tmp_path / "lora", src, seed=2)
    (tmp_path / "d").mkdir()
    os.symlink(tmp_path / "d", tmp_path / "L")
    same = [(tmp_path / "r.json", tmp_path / "r.json"), (tmp_path / "d" / "r", tmp_path / "L" / "r")]
    for first, second in same:
        for args in (["verify", src, out, "--quick", "--report", first, "--junit", second],
                     ["batch", src, "--out-root", tmp_path / "o", "--summary", first, "--junit", second],
                     ["adapter", lora, tmp_path / "ad", "--report", first, "--junit", second, "--base", src,
                      "--llama-base", out],
                     ["convert", src, tmp_path / "c", "--report", first, "--junit", second]):
            result = cli(*args)
            assert result.exit_code == 2 and "same" in result.output, (args, result.output)
            assert not first.exists() and not (tmp_path / "o").exists() and not (tmp_path / "c").exists()


def test_batch_jobs_that_share_or_nest_an_output_are_refused_before_anything_starts(tmp_path):
    (tmp_path / "o").mkdir()
    os.symlink(tmp_path / "o", tmp_path / "L")

    def jobs(*outs):
        return [batch.Job(f"j{k}", f"src{k}", Path(o), ConvertOptions()) for k, o in enumerate(outs)]

    o, link = tmp_path / "o", tmp_path / "L"
    clashes = ((o / "a", link / "a"), (o / "a", o / "a" / "b"), (link / "a" / "b", o / "a"), (o, link / "z"))
    for outs in clashes:
        with pytest.raises(InputError):
            batch.check_unique(jobs(*outs))
    batch.check_unique(jobs(tmp_path / "o" / "a", tmp_path / "o" / "ab", tmp_path / "L" / "b"))


@pytest.mark.slow
def test_hub_revisions_refs_and_snapshots_stay_inside_the_cache(model, tmp_path):
    """In a child process (huggingface_hub reads HF_HOME when imported): a revision that is a path,
    a ref whose content climbs out, a snapshot that is a link elsewhere — each exit 2, nothing read
    from or written for the folder outside."""
    src, _, _ = model
    commit = "0123456789abcdef0123456789abcdef01234567"
    hf = tmp_path / "hf"
    snapshot = make_hub_cache(hf, "Qwen/Qwen-7B", shutil.copytree(src, tmp_path / "release"), commit)
    elsewhere = shutil.copytree(src, tmp_path / "elsewhere")
    env = {"HF_HOME": str(hf), "HF_HUB_OFFLINE": "1"}
    repo = snapshot.parent.parent

    def refused(spec, needle):
        result = run_cli("inspect", spec, env=env)
        assert result.returncode == 2 and needle in result.stderr, result.stderr
        assert "Traceback" not in result.stderr

    for revision in ("../../../../elsewhere", "main/../../x", "/etc", ".."):
        refused(f"Qwen/Qwen-7B@{revision}", "not a commit hash or a ref name")
    (repo / "refs" / "climb").write_text(os.path.relpath(elsewhere, repo / "snapshots"))
    refused("Qwen/Qwen-7B@climb", "not a commit folder inside the cache")
    other = "fedcba9876543210fedcba9876543210fedcba98"
    os.symlink(elsewhere, repo / "snapshots" / other)
    (repo / "refs" / "linked").write_text(other)
    refused("Qwen/Qwen-7B@linked", "not a commit folder inside the cache")
    assert run_cli("inspect", "Qwen/Qwen-7B", env=env).returncode == 0  # the honest cache still works


def test_a_folder_with_two_weight_sets_fails_verify(model, tmp_path):
    """transformers loads model.safetensors before an index: a folder holding both (a tampered
    single file beside a correct index and shards) fails, whichever one verify would have read."""
    src, _, _ = model
    out = tmp_path / "out"
    convert(src, out, shard_size="10MB")
    assert (out / "model.safetensors.index.json").is_file()
    first_shard = next(out.glob("model-00001-*.safetensors"))
    shutil.copyfile(first_shard, out / "model.safetensors")
    result = cli("verify", src, out, "--quick")
    assert result.exit_code == 1 and "2 weight sets" in result.output, result.output


@pytest.mark.parametrize("damage", ["empty config.json", "config.json a list", "no weights",
                                    "a .bin that asks for code"])
def test_a_broken_converted_folder_is_a_failed_check_not_bad_input(model, tmp_path, damage):
    src, out, _ = model
    dst = shutil.copytree(out, tmp_path / "dst")
    if damage == "empty config.json":
        (dst / "config.json").write_text("")
    elif damage == "config.json a list":
        (dst / "config.json").write_text("[]")
    elif damage == "no weights":
        (dst / "model.safetensors").unlink()
    else:
        import torch

        class Payload:
            def __reduce__(self):
                return (os.system, (f"touch {tmp_path / 'ran'}",))

        (dst / "model.safetensors").unlink()
        torch.save({"x": Payload()}, dst / "pytorch_model.bin")
    for args in (["verify", src, dst, "--quick"],):
        result = cli(*args)
        assert result.exit_code == 1 and "check failed" in result.output, result.output
    assert not (tmp_path / "ran").exists()
    assert json.loads((out / "config.json").read_text())  # the original is untouched


RAW_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
PIECES = ["a", "b", "[", "]", "/", "=", "#", "\\", "\x1b", "\x07", "\u202e", "\x9b", "\r", "\t", "[bold]",
          "[/]", "[link=x]", "\x1b]0;t\x07", "\x1b[31m", ":smile:", "\\[", "\udce9", "\ue001"]
NAME = st.lists(st.sampled_from(PIECES), min_size=1, max_size=6).map("".join).filter(
    lambda s: s.strip("/") not in ("", ".", "..") and "//" not in s and "/../" not in f"/{s}/"
    and "/./" not in f"/{s}/")


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(NAME)
def test_every_outside_string_is_printed_literally(model, name):
    """Folder names with markup and control characters: inspect and convert show them as written
    (markup escaped, controls as escapes), and nothing raw reaches the terminal."""
    from qwen2llama.cli.literal import visible

    src, _, root = model
    scratch = Path(tempfile.mkdtemp(dir=root))
    try:
        folder = scratch / name.strip("/")
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, folder)
        for args in (["inspect", folder], ["convert", folder, scratch / "out", "--dry-run"],
                     ["convert", scratch / "missing" / name.strip("/"), scratch / "o2"]):
            result = cli(*args)
            assert result.exit_code in (0, 2), result.output
            assert not RAW_CONTROL.search(result.output), repr(result.output)
            assert visible(str(args[1]), newlines=True) in result.output.replace("\n", ""), \
                (repr(str(args[1])), result.output)
    finally:
        shutil.rmtree(scratch)


def test_config_strings_in_errors_are_printed_literally(model, tmp_path):
    src, _, _ = model
    bad = shutil.copytree(src, tmp_path / "bad")
    config = json.loads((bad / "config.json").read_text())
    config["kv_channels"] = "\x1b[2J[bold red]wipe"
    (bad / "config.json").write_text(json.dumps(config))
    result = cli("inspect", bad)
    assert result.exit_code == 2 and not RAW_CONTROL.search(result.output), repr(result.output)
    assert "\\x1b[2J[bold red]wipe" in result.output, result.output


# Class 5: unbounded reads and counts. Each case in a child that reports its own peak memory: the
# high-water mark of its own address space (VmHWM), not ru_maxrss, which Linux carries over from
# the forking parent (a pytest worker with torch loaded) through exec.
MEASURED = """
import sys, time
from qwen2llama.cli import entry
sys.argv = ["qwen2llama", *sys.argv[1:]]
t0 = time.perf_counter()
try:
    entry()
except SystemExit as stop:
    code = stop.code
hwm = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(f"MEASURE {time.perf_counter() - t0:.2f} {hwm}", file=sys.stderr)
sys.exit(code)
"""


def _measured(*args, timeout=60):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", MEASURED, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)
    seconds, rss_kib = done.stderr.rsplit("MEASURE ", 1)[1].split()
    return done, float(seconds), int(rss_kib) / 1024


@pytest.mark.slow
def test_resource_cases_are_refused_within_seconds_and_little_memory(model, tmp_path):
    src, out, _ = model
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    huge = shutil.copytree(src, tmp_path / "huge")
    config = json.loads((huge / "config.json").read_text())
    config["num_hidden_layers"] = 10**9
    (huge / "config.json").write_text(json.dumps(config))
    cases = {
        "10^9 layers": ["convert", huge, tmp_path / "o1"],
        "prompts /dev/zero": ["verify", src, out, "--prompts", "/dev/zero"],
        "prompts FIFO": ["verify", src, out, "--prompts", fifo],
        "jobs file /dev/zero": ["batch", "--jobs-file", "/dev/zero", "--out-root", tmp_path / "o2"],
        "tokenizer of /dev/zero": ["tokenizer", "/dev/zero", tmp_path / "o4"],
        "greedy 10^9": ["verify", src, out, "--greedy-tokens", str(10**9)],
        "greedy -1": ["verify", src, out, "--greedy-tokens", "-1"],
    }
    for name, args in cases.items():
        done, seconds, mib = _measured(*args)
        assert done.returncode == 2 and "Traceback" not in done.stderr, (name, done.stderr)
        assert seconds < 10 and mib < 1024, (name, seconds, mib)
    assert not any((tmp_path / f"o{k}").exists() for k in (1, 2, 4))


def test_prompt_sets_are_bounded_the_same_for_recording_and_reading(model, tmp_path):
    from qwen2llama.verify import golden, prompts

    src, out, _ = model
    assert golden.MAX_PROMPTS is prompts.MAX_PROMPTS and golden.MAX_GREEDY is prompts.MAX_GREEDY
    many = tmp_path / "many.json"
    many.write_text(json.dumps({"texts": ["x"] * prompts.MAX_PROMPTS, "chats": []}))
    result = cli("golden", src, tmp_path / "g", "--prompts", many)
    assert result.exit_code == 2 and f"at most {prompts.MAX_PROMPTS - 1} prompts" in result.output
    assert not (tmp_path / "g").exists()
    for chats in ([[{"role": "user"}]], [[{"role": "user", "content": 5}]], [[]], ["hello"]):
        bad_chats = tmp_path / "chats.json"
        bad_chats.write_text(json.dumps({"texts": ["x"], "chats": chats}))
        result = cli("verify", src, out, "--quick", "--prompts", bad_chats)
        assert result.exit_code == 2 and "prompt set is unreadable" in result.output, (chats, result.output)


@pytest.mark.parametrize("field,value", [("rotary_emb_base", "1e400"), ("rotary_emb_base", "-1"),
                                         ("layer_norm_epsilon", "1e999"), ("seq_length", "1e300"),
                                         ("hidden_size", "10000000000")])
def test_what_we_write_is_finite_or_nothing_is_written(model, tmp_path, field, value):
    """JSON parses 1e400 as infinity: such a config is refused before a byte is written (no
    config.json holding `Infinity`, which is not JSON)."""
    src, _, _ = model
    bad = shutil.copytree(src, tmp_path / "bad")
    text = (bad / "config.json").read_text()
    config = json.loads(text)
    config[field] = 0  # placeholder, replaced by the raw literal below
    (bad / "config.json").write_text(json.dumps(config).replace(f'"{field}": 0', f'"{field}": {value}'))
    result = cli("convert", bad, tmp_path / "out", "--no-verify")
    assert result.exit_code == 2 and field in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_write_json_never_writes_nan_and_keeps_undecodable_names(tmp_path):
    from qwen2llama.manifest import write_json

    with pytest.raises(ValueError):
        write_json(tmp_path / "x.json", {"v": float("nan")})
    name = os.fsdecode(b"caf\xe9-model")  # a Latin-1 folder name on a UTF-8 system
    write_json(tmp_path / "y.json", {"folder": name})
    assert json.loads((tmp_path / "y.json").read_text(encoding="utf-8"))["folder"] == name


def test_a_folder_name_that_is_not_utf8_converts(model, tmp_path):
    src, _, _ = model
    odd = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9-src"))
    shutil.copytree(src, odd)
    result = run_cli("convert", odd, tmp_path / "out", "--quick")
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "out" / "conversion.json").read_text(encoding="utf-8"))
    assert record["source"]["folder"] == str(odd)


def test_a_pickle_whose_shape_holds_strings_is_bad_input(model, tmp_path):
    import pickle
    import zipfile

    src, _, _ = model
    bad = shutil.copytree(src, tmp_path / "bad")
    (bad / "model.safetensors").unlink()
    import torch

    torch.save({"transformer.wte.weight": torch.zeros(2, 2)}, bad / "pytorch_model.bin")
    with zipfile.ZipFile(bad / "pytorch_model.bin") as z:
        members = {n: z.read(n) for n in z.namelist()}
    pkl = next(n for n in members if n.endswith("data.pkl"))
    members[pkl] = members[pkl].replace(pickle.dumps((2, 2), protocol=2)[2:-1], pickle.dumps(("a", "b"),
                                                                                             protocol=2)[2:-1])
    with zipfile.ZipFile(bad / "pytorch_model.bin", "w", zipfile.ZIP_STORED) as z:
        for n, data in members.items():
            z.writestr(n, data)
    result = cli("inspect", bad)
    assert result.exit_code == 2, result.output


@pytest.mark.parametrize("preset", ["../../../etc/passwd", "/tmp/x", "tiny/../tiny", "prompts"])
def test_synth_presets_are_names_never_paths(tmp_path, preset):
    result = cli("synth", tmp_path / "s", "--preset", preset)
    assert result.exit_code == 2 and "unknown preset" in result.output, result.output
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("size", ["1" + "0" * 400 + "GB", "1e3GB", "2PB", "0", "-5GB"])
def test_absurd_shard_sizes_are_bad_input(model, tmp_path, size):
    src, _, _ = model
    result = cli("convert", src, tmp_path / "out", "--shard-size", size, "--no-verify")
    assert result.exit_code == 2 and "size" in result.output, result.output
