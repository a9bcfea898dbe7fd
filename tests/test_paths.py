"""The path rule (paths.py): no output, with or without --force, may equal, contain or lie inside
anything the run reads; every output location is checked before the first byte is written; a
batch replaces only what it can prove it wrote; nothing ever offers to run a folder's code.
Each case fails on the code before the rule (the defects of the safety issue, numbered)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from qwen2llama.convert import convert
from qwen2llama.synth import synthesize
from qwen2llama.synth import synthesize_adapter

from helpers import cli, run_cli
from test_batch import make_hub_cache


def digest_tree(folder: Path) -> dict[str, str]:
    """Every file under a folder (or the file itself) by its sha256: 'unchanged' means equal."""
    if folder.is_file():
        return {folder.name: hashlib.sha256(folder.read_bytes()).hexdigest()}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(*args, needle="overlaps the source"):
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert needle in result.output, result.output
    return result


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("paths")
    src = synthesize(root / "src", "tiny", layers=1, seed=1)
    out = root / "out"
    convert(src, out)
    lora = synthesize_adapter(root / "lora", src, seed=2)
    return src, out, lora


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_golden_never_overwrites_an_input_or_an_existing_file(model, tmp_path, force):  # 2
    src, out, _ = model
    before = digest_tree(src)
    refused("golden", src, src / "model.safetensors", "--quick", *force)
    refused("golden", src, src / "new.safetensors", "--quick", *force)  # into the source folder
    assert digest_tree(src) == before
    existing = tmp_path / "g.safetensors"
    existing.write_bytes(b"someone's file")
    if not force:
        refused("golden", src, existing, "--quick", needle="already exists")
        assert existing.read_bytes() == b"someone's file"
    else:
        assert cli("golden", src, existing, "--quick", "--force").exit_code == 0
        assert existing.read_bytes()[:8] != b"someone'"


@pytest.mark.slow
@pytest.mark.parametrize("force", [[], ["--force"]])
def test_base_and_merged_adapter_are_never_replaced(model, tmp_path, force):  # 3
    src, out, lora = model
    trainer = synthesize(tmp_path / "checkpoint-7", "tiny", layers=1, seed=1, trainer=True)
    base = shutil.copytree(src, tmp_path / "base")
    before = digest_tree(base)
    refused("convert", trainer, base, "--base", base, "--no-verify", *force)
    assert digest_tree(base) == before
    inside = shutil.copytree(out, tmp_path / "llama")
    shutil.copytree(lora, inside / "lora")
    before = digest_tree(inside)
    refused("convert", src, inside, "--adapter", inside / "lora", "--merge", "--no-verify", *force)
    assert digest_tree(inside) == before


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_adapter_output_never_lands_on_an_input_or_the_model(model, tmp_path, force):  # 3, 5
    src, _, lora = model
    before = digest_tree(src)
    dst = tmp_path / "llama"
    refused("convert", src, dst, "--adapter", lora, "--adapter-out", src, "--no-verify", *force)
    refused("convert", src, dst, "--adapter", lora, "--adapter-out", src / "lora", "--no-verify", *force)
    assert digest_tree(src) == before and not (src / "lora").exists()
    refused("convert", src, dst, "--adapter", lora, "--adapter-out", dst, "--no-verify", *force,
            needle="overlaps")
    assert not dst.exists()  # refused before the model was written


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_adapter_command_never_replaces_the_converted_base(model, tmp_path, force):  # 3
    src, out, lora = model
    llama_base = shutil.copytree(out, tmp_path / "llama-base")
    before = digest_tree(llama_base)
    refused("adapter", lora, llama_base, "--base", src, "--llama-base", llama_base, *force)
    assert digest_tree(llama_base) == before


def test_golden_and_report_locations_are_checked_before_anything_is_written(model, tmp_path):  # 5
    src, out, _ = model
    dst = shutil.copytree(out, tmp_path / "dst")
    before = digest_tree(dst)
    refused("convert", src, dst, "--golden", dst / "g.safetensors", "--force",
            needle="inside the output folder")
    assert digest_tree(dst) == before
    new = tmp_path / "new"
    refused("convert", src, new, "--golden", tmp_path / "no" / "such" / "g.safetensors",
            needle="does not exist")
    refused("convert", src, new, "--report", tmp_path / "no" / "r.json", needle="does not exist")
    assert not new.exists()
    refused("verify", src, dst, "--report", dst / "report.json", "--quick")
    assert digest_tree(dst) == before


@pytest.mark.slow
def test_batch_never_writes_over_another_jobs_source(model, tmp_path):  # 3
    src, _, _ = model
    a = shutil.copytree(src, tmp_path / "a")
    b = shutil.copytree(src, tmp_path / "b")
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(f'[[jobs]]\nsrc = "{a}"\nout = "{b}"\n\n[[jobs]]\nsrc = "{b}"\nout = '
                    f'"{tmp_path / "ob"}"\n')
    before = digest_tree(b)
    result = cli("batch", "--jobs-file", jobs, "--force", "--no-verify")
    assert result.exit_code == 2 and "overlaps the source" in result.output, result.output
    assert digest_tree(b) == before
    assert (tmp_path / "ob" / "conversion.json").is_file()  # the other job still ran


@pytest.mark.parametrize("out", ["", "."])
def test_a_jobs_file_cannot_name_the_current_folder(model, tmp_path, monkeypatch, out):  # 4
    src, _, _ = model
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    jobs = work / "jobs.toml"
    jobs.write_text(f'[[jobs]]\nsrc = "{src}"\nout = "{out}"\n')
    result = cli("batch", "--jobs-file", jobs, "--force", "--no-verify")
    needle = "current folder" if out else "jobs.0.out: string should have at least 1 character"
    assert result.exit_code == 2 and needle in result.output, result.output
    assert (work / "notes.txt").read_text() == "mine" and jobs.is_file()


@pytest.mark.slow
def test_batch_replaces_only_what_it_proves_it_wrote(model, tmp_path):  # 1
    src, out, _ = model
    for name, plant in [("corrupt", lambda f: (f / "conversion.json").write_text("{not json")),
                        ("not ours",
                         lambda f: (f / "conversion.json").write_text('{"tool": {"name": "other"}}')),
                        ("extra file", lambda f: (f / "thesis.pdf").write_text("irreplaceable"))]:
        folder = tmp_path / name.replace(" ", "-")
        shutil.copytree(out, folder)
        plant(folder)
        before = digest_tree(folder)
        jobs = tmp_path / "jobs.toml"
        jobs.write_text(f'[[jobs]]\nsrc = "{src}"\nout = "{folder}"\n')
        result = cli("batch", "--jobs-file", jobs, "--no-verify")
        assert result.exit_code == 2 and "not written by qwen2llama" in result.output, (name, result.output)
        assert digest_tree(folder) == before, name


@pytest.mark.slow
def test_batch_rerun_redoes_an_output_with_a_missing_or_cut_file(model, tmp_path):  # 7
    src, _, _ = model
    jobs = tmp_path / "jobs.toml"
    dst = tmp_path / "dst"
    jobs.write_text(f'[[jobs]]\nsrc = "{src}"\nout = "{dst}"\n')
    assert cli("batch", "--jobs-file", jobs, "--quick").exit_code == 0
    assert "up to date" in cli("batch", "--jobs-file", jobs, "--quick").output
    weights = dst / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    again = cli("batch", "--jobs-file", jobs, "--quick")
    assert again.exit_code == 0 and "up to date" not in again.output, again.output
    assert weights.read_bytes() == good
    (dst / "merges.txt").unlink()
    again = cli("batch", "--jobs-file", jobs, "--quick")
    assert again.exit_code == 0 and (dst / "merges.txt").is_file(), again.output


@pytest.mark.slow
def test_hub_cache_blobs_are_never_an_output_and_links_outside_are_refused(model, tmp_path):  # 3, 8
    """In a child process: huggingface_hub reads HF_HOME when it is imported."""
    src, _, _ = model
    release = shutil.copytree(src, tmp_path / "release")
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = make_hub_cache(tmp_path / "hf", "Qwen/Qwen-7B-Chat", release, commit)
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}

    def refused_child(*args, needle="overlaps the source"):
        result = run_cli(*args, env=env)
        assert result.returncode == 2 and needle in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        return result

    blobs = snapshot.parent.parent / "blobs"
    before = digest_tree(blobs)
    refused_child("convert", "Qwen/Qwen-7B-Chat", blobs, "--force", "--no-verify")
    refused_child("convert", "Qwen/Qwen-7B-Chat", snapshot / "llama", "--no-verify")
    assert digest_tree(blobs) == before
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the output")
    (snapshot / "LICENSE").unlink()
    os.symlink(secret, snapshot / "LICENSE")
    result = refused_child("convert", "Qwen/Qwen-7B-Chat", tmp_path / "out", "--no-verify",
                           needle="links outside the cache's blobs")
    assert "secret" in result.stderr and not (tmp_path / "out").exists()


def test_verify_never_offers_to_run_a_folders_code(model, tmp_path):  # 9
    """On a terminal (a pty), where transformers would ask "run the custom code? [y/N]": no prompt,
    no code run, a failed check."""
    import pty
    import select
    import subprocess
    import sys
    import time

    src, out, _ = model
    dst = shutil.copytree(out, tmp_path / "dst")
    config = json.loads((dst / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
    config["tokenizer_class"] = "EvilTokenizer"  # only the remote code knows it
    (dst / "tokenizer_config.json").write_text(json.dumps(config))
    (dst / "tokenization_evil.py").write_text("open(__file__ + '.ran', 'w').close()\n")
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "qwen2llama", "verify", str(src), str(dst), "--quick"],
                            stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    text, end = b"", time.monotonic() + 240
    while time.monotonic() < end:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            text += chunk
            if b"[y/N]" in text:
                os.write(master, b"y\n")  # what a user pressing y would do: must never be asked
        elif proc.poll() is not None:
            break
    proc.wait(timeout=60)
    os.close(master)
    output = text.decode(errors="replace")
    assert "[y/N]" not in output, output[-2000:]  # never asked
    assert not (dst / "tokenization_evil.py.ran").exists()
    assert proc.returncode == 1, output[-2000:]


def test_batch_summaries_and_adapter_reports_follow_the_rule(model, tmp_path):  # 3, 5
    src, out, lora = model
    before = digest_tree(src)
    refused("batch", src, "--out-root", tmp_path / "o", "--summary", src / "config.json", "--no-verify")
    refused("batch", src, "--out-root", tmp_path / "o", "--junit", tmp_path / "o" / "src" / "b.xml",
            "--no-verify",
            needle="inside the output folder")
    refused("adapter", lora, tmp_path / "a", "--report", lora / "adapter_config.json")
    assert digest_tree(src) == before and not (tmp_path / "o").exists() and not (tmp_path / "a").exists()
