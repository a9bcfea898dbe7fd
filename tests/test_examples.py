"""The examples run as written (#31), and the package is whole.

One wheel is built from this checkout and installed into a fresh virtual environment (the
project's dependencies reach it through a path file, so nothing is downloaded; qwen2llama itself
is the wheel, never this source tree). In it: `synth` + `convert` work from the packaged
vocabulary, LICENSE, NOTICE and presets; `examples/github-verify.yml` runs step by step (its
`run:` steps in a shell as written, the `uses:` steps replaced by their local equivalents, the
hub download served from a prepared cache with HF_HUB_OFFLINE=1) and fails when the model drifts;
the Kubernetes Job's container command runs for every completion index and the summaries merge.
(`examples/slurm-array.sh` runs as written on a real Slurm cluster in `make e2e`.)
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

from qwen2llama.synth import synthesize

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> tuple[Path, Path]:
    """(the fresh environment's bin folder, the wheel) with the wheel installed."""
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", root / "dist", ROOT],
                   check=True, cwd=root)
    wheel = next((root / "dist").glob("qwen2llama-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", root / "env"], check=True)
    env_python = root / "env" / "bin" / "python"
    purelib = subprocess.run([env_python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # the venv's own old setuptools would shadow the dependencies' (torch requires a newer one)
    subprocess.run([env_python, "-m", "pip", "uninstall", "-q", "-y", "setuptools"], check=True)
    subprocess.run([env_python, "-m", "pip", "install", "-q", "--no-deps", wheel], check=True, cwd=root)
    return root / "env" / "bin", wheel


def _env(bin_dir: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "HF_"))}
    # the fresh environment first, then the dependencies' own commands (hf), as an install has them
    path = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), env["PATH"]])
    return {**env, "PATH": path, **extra}


def test_the_wheel_holds_the_vocabulary_license_and_presets(venv, tmp_path):
    bin_dir, wheel = venv
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"qwen2llama/assets/qwen/qwen.tiktoken", "qwen2llama/assets/qwen/LICENSE",
            "qwen2llama/assets/qwen/NOTICE", "qwen2llama/configs/tiny.json",
            "qwen2llama/configs/qwen-7b.json", "qwen2llama/configs/prompts.json"} <= names
    where = subprocess.run([bin_dir / "python", "-c", "import qwen2llama; print(qwen2llama.__file__)"],
                           cwd=tmp_path, env=_env(bin_dir), capture_output=True, text=True, check=True)
    assert str(bin_dir.parent) in where.stdout  # the installed wheel, not this checkout
    for args in (["synth", "src", "--preset", "tiny"], ["convert", "src", "out", "--quick"]):
        result = subprocess.run([bin_dir / "qwen2llama", *args], cwd=tmp_path, env=_env(bin_dir),
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "out" / "README.md").is_file() and (tmp_path / "out" / "LICENSE").is_file()


def _hub_cache(home: Path, repo: str, folder: Path) -> None:
    """A Hugging Face cache holding `folder` as the main revision of `repo`."""
    owner, name = repo.split("/")
    cache = home / "hub" / f"models--{owner}--{name}"
    shutil.copytree(folder, cache / "snapshots" / "0123456789abcdef0123456789abcdef01234567")
    (cache / "refs").mkdir()
    (cache / "refs" / "main").write_text("0123456789abcdef0123456789abcdef01234567")


def _run_workflow(workflow: dict, work: Path, env: dict, start: str | None = None) -> tuple[list, dict]:
    """Each step of the job in order (from the one named `start`, with the environment the
    earlier steps left): `run:` in bash as GitHub runs it (GITHUB_ENV read back between steps);
    `uses:` by its local equivalent. Stops at the first failing step. Returns ([(step, exit
    code)], the environment after them)."""
    job = next(iter(workflow["jobs"].values()))
    # the job's env, but what the test points elsewhere on purpose (QWEN2LLAMA: the wheel)
    env = {**{k: str(v).replace("${{ github.workspace }}", str(work)) for k, v in job["env"].items()}, **env}
    done = []
    steps = job["steps"]
    if start is not None:
        steps = steps[next(k for k, step in enumerate(steps) if step.get("name") == start):]
    for step in steps:
        if "uses" in step:
            if step["uses"].startswith("actions/upload-artifact"):
                assert all((work / p).is_file() for p in step["with"]["path"].split())
            continue  # checkout: `work` is the checkout; setup-python: the fresh venv; cache: prepared
        github_env = work / "github-env"
        github_env.write_text("")
        result = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", step["run"]], cwd=work,
                                env={**env, "GITHUB_ENV": str(github_env),
                                     "GITHUB_STEP_SUMMARY": str(work / "summary.md")},
                                capture_output=True, text=True, timeout=600)
        done.append((step["name"], result.returncode))
        if result.returncode:
            print(step["name"], result.stdout[-3000:], result.stderr[-3000:])  # shown when a test fails
            return done, env
        env.update(line.split("=", 1) for line in github_env.read_text().splitlines() if "=" in line)
    return done, env


def test_github_workflow_runs_as_written_and_fails_on_drift(venv, tmp_path):
    bin_dir, wheel = venv
    workflow = yaml.safe_load((ROOT / "examples" / "github-verify.yml").read_text())
    text = json.dumps(workflow)
    assert "huggingface-cli" not in text and "pip install qwen2llama" not in text
    src = synthesize(tmp_path / "Qwen-tiny-Chat", "tiny", seed=11, chat=True)
    work, converted = tmp_path / "checkout", tmp_path / "converted"
    work.mkdir()
    subprocess.run([bin_dir / "qwen2llama", "convert", src, converted, "--no-verify", "--golden",
                    work / "qwen-7b-chat.golden.safetensors"], check=True, env=_env(bin_dir),
                   capture_output=True)
    model = next(iter(workflow["jobs"].values()))["env"]["MODEL"]
    _hub_cache(work / ".hf", model, converted)
    env = _env(bin_dir, HF_HUB_OFFLINE="1", QWEN2LLAMA=str(wheel))
    steps, env = _run_workflow(workflow, work, env)
    assert steps and all(code == 0 for _, code in steps), steps
    assert json.loads((work / "verify.json").read_text())["passed"] and (work / "summary.md").is_file()
    # drift: a changed byte in the published weights fails the verify step (exit 1)
    shard = next((work / ".hf").rglob("model.safetensors"))
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x40
    shard.write_bytes(bytes(data))
    steps, _ = _run_workflow(workflow, work, env, start="Verify against the golden file")
    assert steps == [("Verify against the golden file", 1)], steps


def test_kubernetes_job_command_runs_for_every_index(venv, tmp_path):
    bin_dir, wheel = venv
    text = (ROOT / "examples" / "kubernetes-indexed-job.yaml").read_text()
    job = yaml.safe_load(text)
    container = job["spec"]["template"]["spec"]["containers"][0]
    data = tmp_path / "data"
    for k in range(2):
        synthesize(data / "runs" / f"src-{k}", "tiny", seed=20 + k)
    (data / "summaries").mkdir()
    (data / "jobs.toml").write_text(f'out_root = "{data}/llama"\n' + "".join(
        f'[[jobs]]\nsrc = "{data}/runs/src-{k}"\n' for k in range(2)))
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env = {**env, "HF_HOME": str(data / "hf"), "QWEN2LLAMA": str(wheel)}
    command = container["args"][0].replace("/data", str(data))
    for index in range(job["spec"]["completions"]):
        result = subprocess.run(container["command"] + [command], cwd=tmp_path, timeout=600,
                                env=_env(bin_dir, **env, JOB_COMPLETION_INDEX=str(index)),
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
    merge = next(line for line in text.splitlines() if "--summarize" in line).split("with: ", 1)[1]
    result = subprocess.run(["bash", "-c", merge.replace("/data", str(data))], cwd=tmp_path,
                            env=_env(bin_dir), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(p.name for p in (data / "llama").iterdir() if p.is_dir()) == ["src-0", "src-1"]
    assert "failures=\"0\"" in (tmp_path / "batch.xml").read_text()
