"""Batch jobs and sources: Trainer checkpoints, hub ids from a local cache, resumable runs,
shards, and the summaries CI systems read."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from qwen2llama import batch
from qwen2llama.batch import JobResult
from qwen2llama.convert import Options
from qwen2llama.errors import InputError
from qwen2llama.synth import synthesize

from helpers import run_cli


def statuses(summary: Path) -> list[str]:
    return [j["status"] for j in json.loads(summary.read_text())["jobs"]]


def names(summary: Path) -> list[str]:
    return [j["name"] for j in json.loads(summary.read_text())["jobs"]]


class Payload:
    """Unpickling this runs a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def run_folder(tmp_path):
    """runs/exp/checkpoint-{100..400}: Trainer-style (no vocabulary, optimizer.pt etc.), the 300 one
    corrupt, the 200 one with an optimizer.pt that runs code if anyone unpickles it."""
    import torch

    runs = tmp_path / "runs" / "exp"
    for step in (100, 200, 300, 400):
        synthesize(runs / f"checkpoint-{step}", "tiny", seed=step, trainer=True)
    torch.save({"state": Payload(tmp_path / "payload-ran")}, runs / "checkpoint-200" / "optimizer.pt")
    weights = runs / "checkpoint-300" / "model.safetensors"
    os.truncate(weights, weights.stat().st_size - 4096)
    return runs


@pytest.mark.slow
def test_trainer_run_folder_converts_verifies_and_resumes(run_folder, tmp_path):
    out = tmp_path / "llama"
    args = ["batch", str(run_folder / "checkpoint-*"), "--out-root", out, "--quick"]
    first = run_cli(*args, "--summary", tmp_path / "s1.json", "--junit", tmp_path / "j1.xml")
    assert first.returncode == 2, first.stdout + first.stderr
    assert "Traceback" not in first.stdout + first.stderr
    jobs = {j["name"]: j for j in json.loads((tmp_path / "s1.json").read_text())["jobs"]}
    assert {n: j["status"] for n, j in jobs.items()} == {
        "exp--checkpoint-100": "passed", "exp--checkpoint-200": "passed", "exp--checkpoint-300": "bad input",
        "exp--checkpoint-400": "passed"}
    assert any("runs past the end of the file" in line for line in jobs["exp--checkpoint-300"]["failures"])
    assert "model.safetensors" in "\n".join(jobs["exp--checkpoint-300"]["failures"])
    assert "bundled Qwen v1 vocabulary" in first.stdout
    assert not (tmp_path / "payload-ran").exists()  # optimizer.pt is never unpickled
    good = out / "exp--checkpoint-100"
    record = json.loads((good / "conversion.json").read_text())
    assert record["verify"]["passed"] is True and any("bundled" in n for n in record["source"]["notes"])
    assert (out / "exp--checkpoint-100.verify.json").is_file()
    published = {n: (out / n / "conversion.json").stat().st_mtime_ns
                 for n in jobs if n != "exp--checkpoint-300"}

    second = run_cli(*args, "--summary", tmp_path / "s2.json")
    assert second.returncode == 2
    again = {j["name"]: j["status"] for j in json.loads((tmp_path / "s2.json").read_text())["jobs"]}
    assert again == {"exp--checkpoint-100": "up to date", "exp--checkpoint-200": "up to date",
                     "exp--checkpoint-300": "bad input", "exp--checkpoint-400": "up to date"}
    assert published == {n: (out / n / "conversion.json").stat().st_mtime_ns for n in published}

    synthesize(tmp_path / "fixed", "tiny", seed=300, trainer=True)
    os.replace(tmp_path / "fixed" / "model.safetensors", run_folder / "checkpoint-300" / "model.safetensors")
    third = run_cli(*args, "--summary", tmp_path / "s3.json")
    assert third.returncode == 0, third.stdout + third.stderr
    assert statuses(tmp_path / "s3.json").count("up to date") == 3


@pytest.mark.slow
def test_failing_rerun_keeps_what_was_published(tmp_path):
    """The source of a published job changes and breaks: the rerun reports it and the earlier
    output stays as it was."""
    from safetensors.torch import load_file, save_file

    src = synthesize(tmp_path / "src", "tiny")
    job = batch.Job("out", str(src), tmp_path / "out")
    assert [r.status for r in batch.run_jobs([job], quick=True)] == ["passed"]
    before = {p.name: p.read_bytes() for p in job.out.iterdir()}
    tensors = load_file(src / "model.safetensors")
    tensors["lm_head.weight"][0, 0] = float("nan")
    save_file(tensors, src / "model.safetensors")
    (result,) = batch.run_jobs([job], quick=True)
    assert result.status == "bad input" and any("NaN" in line for line in result.failures)
    assert {p.name: p.read_bytes() for p in job.out.iterdir()} == before
    tensors["lm_head.weight"] = tensors["lm_head.weight"].nan_to_num(0.0)
    save_file(tensors, src / "model.safetensors")
    assert [r.status for r in batch.run_jobs([job], quick=True)] == ["passed"]  # changed source: redone
    assert [r.status for r in batch.run_jobs([job], quick=True)] == ["up to date"]
    assert [r.status for r in batch.run_jobs([job], quick=True, force=True)] == ["passed"]


def tiny_batch(tmp_path, count: int, *options: str) -> tuple[list[str], Path]:
    """`count` tiny checkpoints m0, m1, ...; the batch command over them, and its output root."""
    for k in range(count):
        synthesize(tmp_path / "src" / f"m{k}", "tiny", seed=k)
    out = tmp_path / "out"
    return [sys.executable, "-m", "qwen2llama", "batch", str(tmp_path / "src" / "m*"), "--out-root", str(out),
            *options], out


@pytest.mark.slow
def test_sigkill_mid_batch_then_rerun_publishes_each_once(tmp_path):
    args, out = tiny_batch(tmp_path, 3, "--quick")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (out / "m0").exists() or not list(out.glob(".m1.qwen2llama-staging-*")):
        assert proc.poll() is None and time.monotonic() < deadline, \
            "the batch ended before the second job started"
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    assert not (out / "m1").exists() and not (out / "m2").exists()
    rerun = run_cli(*args[3:], "--summary", tmp_path / "s.json")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    statuses = {j["name"]: j["status"] for j in json.loads((tmp_path / "s.json").read_text())["jobs"]}
    assert statuses == {"m0": "up to date", "m1": "passed", "m2": "passed"}
    for name in statuses:
        assert json.loads((out / name / "conversion.json").read_text())["verify"]["passed"] is True
    assert sorted(p.name for p in out.iterdir()) == ["m0", "m0.verify.json", "m1", "m1.verify.json", "m2",
                                                     "m2.verify.json"]


def make_hub_cache(hf_home: Path, repo: str, folder: Path, commit: str, refs=("main",)) -> Path:
    """The layout huggingface_hub keeps on disk: blobs by hash, snapshots of symlinks, refs."""
    root = hf_home / "hub" / ("models--" + repo.replace("/", "--"))
    snapshot = root / "snapshots" / commit
    for folder_ in (root / "blobs", snapshot, root / "refs"):
        folder_.mkdir(parents=True, exist_ok=True)
    for f in folder.iterdir():
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        (root / "blobs" / digest).write_bytes(f.read_bytes())
        os.symlink(f"../../blobs/{digest}", snapshot / f.name)
    for ref in refs:
        (root / "refs" / ref).write_text(commit)
    return snapshot


# Runs the CLI with an audit hook that records every file opened under the hub cache.
AUDITED = """
import os, sys
opened, root = [], sys.argv[1]
def hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.fsdecode(args[0])
        if path.startswith(root):
            opened.append(path)
sys.addaudithook(hook)
from qwen2llama.cli import entry
log, sys.argv = sys.argv[2], ["qwen2llama", *sys.argv[3:]]
try:
    entry()
finally:
    open(log, "w").write("\\n".join(opened))
"""


def test_hub_ids_resolve_offline_and_remote_code_is_never_read(tmp_path):
    src = synthesize(tmp_path / "release", "tiny", seed=3)
    (src / "modeling_qwen.py").write_text("raise SystemExit('remote code ran')\n")
    (src / "tokenization_qwen.py").write_text("raise SystemExit('remote code ran')\n")
    commit = "0123456789abcdef0123456789abcdef01234567"
    make_hub_cache(tmp_path / "hf", "Qwen/Qwen-7B-Chat", src, commit, refs=("main", "v1.1"))
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    for k, spec in enumerate(["Qwen/Qwen-7B-Chat", f"Qwen/Qwen-7B-Chat@{commit}", "Qwen/Qwen-7B-Chat@v1.1"]):
        log = tmp_path / f"opened-{k}.txt"
        result = subprocess.run([sys.executable, "-c", AUDITED, str(tmp_path / "hf"), str(log), "convert",
                                 spec,
                                 str(tmp_path / f"out-{k}"), "--no-verify"], capture_output=True, text=True,
                                env={**os.environ, **env}, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        opened = log.read_text().splitlines()
        assert any(p.endswith("model.safetensors") for p in opened), (opened,
                                                                      result.stdout)  # the hook sees reads
        assert not [p for p in opened if p.endswith(".py")], opened
    manifest = json.loads((tmp_path / "out-2" / "conversion.json").read_text())
    assert manifest["source"]["folder"].endswith(f"snapshots/{commit}")
    bad = run_cli("inspect", "Qwen/Qwen-7B-Chat@v9", env=env)
    assert bad.returncode == 2
    assert "not a folder here, and the Hugging Face hub could not provide it" in bad.stderr
    assert "Traceback" not in bad.stderr
    missing = run_cli("inspect", tmp_path / "no" / "such" / "folder")
    assert missing.returncode == 2 and "not a folder, nor a hub id" in missing.stderr


def test_output_naming_rule(tmp_path):
    (tmp_path / "runs" / "r1" / "checkpoint-500").mkdir(parents=True)
    (tmp_path / "Qwen-7B").mkdir()
    assert batch.output_name(str(tmp_path / "runs" / "r1" / "checkpoint-500")) == "r1--checkpoint-500"
    assert batch.output_name(str(tmp_path / "Qwen-7B")) == "Qwen-7B"
    assert batch.output_name("Qwen/Qwen-7B-Chat") == "Qwen--Qwen-7B-Chat"
    assert batch.output_name("Qwen/Qwen-7B-Chat@v1.1") == "Qwen--Qwen-7B-Chat@v1.1"


def test_jobs_file(tmp_path):
    (tmp_path / "jobs.toml").write_text('out_root = "o"\n[defaults]\ndtype = "float32"\n'
                                        '[[jobs]]\nsrc = "a"\n[[jobs]]\nsrc = "b"\nout = '
                                        '"elsewhere/b"\nkind = "base"\n')
    a, b = batch.jobs_from_file(tmp_path / "jobs.toml", None, Options())
    assert (a.out, a.options.dtype, a.options.kind) == (Path("o/a"), "float32", "auto")
    assert (b.out, b.options.dtype, b.options.kind) == (Path("elsewhere/b"), "float32", "base")
    (tmp_path / "bad.toml").write_text('[[jobs]]\nsrc = "a"\nout = "x"\ndtpye = "float32"\n')
    with pytest.raises(InputError, match="unknown key.*dtpye"):
        batch.jobs_from_file(tmp_path / "bad.toml", None, Options())
    with pytest.raises(InputError, match="would both be written"):
        batch.check_unique(batch.jobs_from_args([str(tmp_path / "x"), str(tmp_path / "y" / "x")], tmp_path,
                                                Options()))
    with pytest.raises(InputError, match="matches nothing"):
        batch.expand([str(tmp_path / "nothing-*")])


def test_shards_from_slurm_and_kubernetes_partition_the_jobs():
    jobs = [batch.Job(f"j{k}", f"s{k}", Path(f"/o/j{k}")) for k in range(5)]
    envs = [[{"SLURM_ARRAY_TASK_ID": str(t), "SLURM_ARRAY_TASK_MIN": "3",
              "SLURM_ARRAY_TASK_COUNT": "2"} for t in (3, 4)],
            [{"SLURM_ARRAY_TASK_ID": str(t), "SLURM_ARRAY_TASK_MIN": "0",
              "SLURM_ARRAY_TASK_MAX": "1"} for t in (0, 1)],
            [{"JOB_COMPLETION_INDEX": str(t), "QWEN2LLAMA_SHARD_COUNT": "2"} for t in (0, 1)]]
    for pair in envs:
        shards = [batch.take_shard(jobs, *batch.shard_from_env(env)) for env in pair]
        names = [j.name for shard in shards for j in shard]
        assert sorted(names) == [f"j{k}" for k in range(5)] and all(shards), pair
    assert batch.shard_from_env({}) is None
    with pytest.raises(InputError, match="QWEN2LLAMA_SHARD_COUNT"):
        batch.shard_from_env({"JOB_COMPLETION_INDEX": "0"})
    with pytest.raises(InputError):
        batch.parse_shard("2/2")


@pytest.mark.slow
def test_two_shard_processes_cover_a_five_job_list(tmp_path):
    common, out = tiny_batch(tmp_path, 5, "--no-verify")
    procs = [subprocess.Popen(common + ["--shard", f"{i}/2", "--summary", str(tmp_path / f"s{i}.json")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    slurm = run_cli(*common[3:], "--summary", tmp_path / "s-slurm.json",
                    env={"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_MIN": "0",
                         "SLURM_ARRAY_TASK_COUNT": "2"})
    assert slurm.returncode == 0 and "shard 1 of 2: 2 job(s)" in slurm.stdout
    assert statuses(tmp_path / "s-slurm.json") == ["up to date"] * 2
    per_shard = [names(tmp_path / f"s{i}.json") for i in range(2)]
    assert sorted(per_shard[0] + per_shard[1]) == [f"m{k}" for k in range(5)] and len(per_shard[1]) == 2
    kube = [subprocess.Popen(common[:3] + [*common[3:], "--summary", str(tmp_path / f"k{i}.json")],
                             env={**os.environ, "JOB_COMPLETION_INDEX": str(i),
                                  "QWEN2LLAMA_SHARD_COUNT": "2"},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for proc in kube:
        assert proc.communicate(timeout=600)[0].count("up to date") >= 2 and proc.returncode == 0
    assert [names(tmp_path / f"k{i}.json") for i in range(2)] == per_shard
    merged = run_cli("batch", "--summarize", tmp_path / "s0.json", tmp_path / "s1.json", "--junit",
                     tmp_path / "all.xml")
    assert merged.returncode == 0, merged.stderr
    assert len(ET.parse(tmp_path / "all.xml").getroot().find("testsuite").findall("testcase")) == 5


def _results():
    return [JobResult("a", "runs/a", "o/a", "passed", 3.5, 0.04, 3.1e-06),
            JobResult("b", "runs/b", "o/b", "failed", 4.0, 0.04, 0.71,
                      ["logits: 'x': max |Δlogit| 0.71 > 1e-4"]),
            JobResult("c", "runs/c", "o/c", "bad input", 0.1, 0.0, None,
                      ["tensor t runs past the end", "file: f"])]


def test_junit_and_github_summary(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from qwen2llama import summary
    from qwen2llama.cli import app

    (tmp_path / "s.json").write_text(json.dumps(summary.to_json(_results())))
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    step = tmp_path / "step.md"
    result = CliRunner().invoke(app, ["batch", "--summarize", str(tmp_path / "s.json"), "--junit",
                                      str(tmp_path / "j.xml")])
    assert result.exit_code == 2 and not step.exists()
    root = ET.parse(tmp_path / "j.xml").getroot()
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("3", "1", "1")
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert all(c.get("classname") and float(c.get("time")) >= 0 for c in cases.values())
    assert cases["a"].find("failure") is None and cases["a"].find("error") is None
    assert "max |Δlogit| 0.71" in cases["b"].find("failure").text
    assert "runs past the end" in cases["c"].find("error").get("message")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step))
    CliRunner().invoke(app, ["batch", "--summarize", str(tmp_path / "s.json")])
    text = step.read_text()
    assert "1/3 jobs passed" in text and "| a | `runs/a` | passed | 3.10e-06 |" in text
    assert "**failed**" in text


def test_shipped_examples_are_valid():
    """The jobs file parses into the jobs it describes; the Slurm script is valid bash."""
    root = Path(__file__).resolve().parent.parent / "examples"
    jobs = batch.jobs_from_file(root / "jobs.toml", None, Options())
    assert [j.name for j in jobs] == ["Qwen--Qwen-1_8B-Chat", "Qwen--Qwen-7B", "Qwen--Qwen-7B-Chat",
                                      "Qwen--Qwen-14B-Chat", "Qwen--Qwen-72B-Chat", "sft-v2-3000",
                                      "Qwen--Qwen-7B-Chat"]
    assert jobs[5].options.base == "Qwen/Qwen-7B-Chat" and jobs[4].options.dtype == "bfloat16"
    assert jobs[-1].options.target == "qwen2" and {j.options.target for j in jobs[:-1]} == {"llama"}
    batch.check_unique(jobs)  # the same source twice, in two layouts: two outputs
    assert subprocess.run(["bash", "-n", str(root / "slurm-array.sh")]).returncode == 0
    manifest = (root / "kubernetes-indexed-job.yaml").read_text()
    assert "completionMode: Indexed" in manifest and "QWEN2LLAMA_SHARD_COUNT" in manifest


def test_base_supplies_what_a_trainer_checkpoint_lacks(tmp_path):
    from qwen2llama.convert import convert
    from qwen2llama.qwen.checkpoint import COMPANIONS
    from qwen2llama.sources import open_source

    release = synthesize(tmp_path / "release", "tiny", chat=True)
    checkpoint = synthesize(tmp_path / "runs" / "checkpoint-9", "tiny", seed=9, trainer=True)
    ckpt = open_source(checkpoint, base=release)
    assert ckpt.companions == {name: release / name for name in COMPANIONS}
    assert len(ckpt.notes) == 4 and all("taken from --base" in note for note in ckpt.notes)
    record = convert(checkpoint, tmp_path / "out", base=str(release))
    assert record["target"]["chat"] is True and record["source"]["notes"] == ckpt.notes
    assert (tmp_path / "out" / "LICENSE").read_bytes() == (release / "LICENSE").read_bytes()
    assert 151645 in json.loads((tmp_path / "out" / "generation_config.json").read_text())["eos_token_id"]
    alone = open_source(checkpoint)  # no base: the bundled vocabulary, and chat assumed, both said
    assert any("bundled Qwen v1 vocabulary" in n for n in alone.notes)
    assert any("no generation_config.json" in n for n in alone.notes)
    config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps({**config, "vocab_size": 1000}))
    with pytest.raises(InputError, match="the bundled vocabulary cannot be assumed"):
        open_source(checkpoint)
