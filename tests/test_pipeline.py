"""The library's one run (pipeline.py): verify before publishing, the adapter opened once and
verified with the same outputs as a model (report, JUnit, GitHub summary), and a storage format
added as one module plus its registration."""
from __future__ import annotations

import json
import os
import re
import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from qwen2llama import formats, pipeline, reference
from qwen2llama.cli import app
from qwen2llama.errors import InputError, OutputError, VerificationFailed
from qwen2llama.formats.dense import Dense
from qwen2llama.lora import read as lora_read
from qwen2llama.progress import Progress
from qwen2llama.synth import synthesize, synthesize_adapter

from defects import DEFECTS, rehash


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("pipeline") / "qwen", "tiny", layers=2, dtype="float32",
                      seed=11)


class Tamper(Progress):
    """Flips one byte of the staged weights as verify starts: the run must then publish nothing."""

    def __init__(self):
        self.staging = None

    def note(self, message):
        if message == "checking file hashes":
            shard = next(self.staging.glob("model*.safetensors"))
            data = bytearray(shard.read_bytes())
            data[-3] ^= 0x40
            shard.write_bytes(bytes(data))


def test_run_verifies_before_publishing(qwen, tmp_path, monkeypatch):
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    good = pipeline.run(qwen, tmp_path / "good", verify=pipeline.VerifyOptions(quick=True))
    assert good.verified["passed"] and good.verified["output"] == str(tmp_path / "good")
    assert json.loads((tmp_path / "good" / "conversion.json").read_text())["verify"]["passed"] is True

    run = pipeline.plan(qwen, tmp_path / "bad", verify=pipeline.VerifyOptions(
        quick=True, report=tmp_path / "bad.json", junit=tmp_path / "bad.xml"))
    tamper = Tamper()
    tamper.staging = run.prepared.out.parent / f".bad.qwen2llama-staging-{os.getpid()}"
    with pytest.raises(VerificationFailed) as failed:
        pipeline.execute(run, progress=tamper)
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad.qwen2llama-*"))
    verdict = failed.value.result
    assert verdict["checks"]["integrity"]["passed"] is False
    assert verdict["checks"]["tensors"]["passed"] is False
    assert json.loads((tmp_path / "bad.json").read_text())["passed"] is False
    cases = ET.parse(tmp_path / "bad.xml").getroot().iter("testcase")
    assert any(c.get("name") == "tensors" and c.find("failure") is not None for c in cases)

    unverified = pipeline.run(qwen, tmp_path / "plain", verify=None)
    assert unverified.verified is None and "verify" not in unverified.record


def test_every_output_is_checked_before_a_byte_is_written(qwen, tmp_path):
    (tmp_path / "golden.st").write_text("old")
    (tmp_path / "out-adapter").mkdir()  # an earlier adapter output, which --force would replace
    for kwargs in (dict(golden=tmp_path / "golden.st"),  # exists, no --force
                   dict(golden=tmp_path / "out" / "g.st"),  # inside the output
                   dict(verify=pipeline.VerifyOptions(report=qwen / "r.json")),  # inside the source
                   dict(golden=tmp_path / "same", verify=pipeline.VerifyOptions(report=tmp_path / "same")),
                   dict(verify=pipeline.VerifyOptions(report=tmp_path / "out-adapter" / "r.json"),
                        adapter=pipeline.AdapterStep(tmp_path / "lora"))):  # inside the adapter's output
        with pytest.raises(OutputError):
            pipeline.plan(qwen, tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists() and (tmp_path / "golden.st").read_text() == "old"
    assert not list((tmp_path / "out-adapter").iterdir())


def test_convert_with_adapter_opens_it_once_and_reports_like_a_model(qwen, tmp_path, monkeypatch):
    lora = synthesize_adapter(tmp_path / "lora", qwen, seed=3)
    opened = []
    real_open = lora_read.open_adapter

    def counting(folder):
        opened.append(folder)
        return real_open(folder)

    for module in ("qwen2llama.lora.read", "qwen2llama.lora.convert", "qwen2llama.lora.verify",
                   "qwen2llama.convert", "qwen2llama.verify.checks"):
        monkeypatch.setattr(f"{module}.open_adapter", counting)
    step = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step))
    result = CliRunner().invoke(app, ["convert", str(qwen), str(tmp_path / "llama"), "--adapter", str(lora),
                                      "--quick", "--junit", str(tmp_path / "model.xml")])
    assert result.exit_code == 0, result.output
    assert len(opened) == 1, opened
    assert (tmp_path / "llama-adapter" / "adapter_config.json").is_file()
    summary = step.read_text()  # one section per verdict: the model, then the adapter
    assert summary.count("### qwen2llama verify") == 2 and str(tmp_path / "llama-adapter") in summary

    runner, before = CliRunner(), _tree(tmp_path)
    for args in (["verify", qwen, tmp_path / "llama", "--adapter", lora, "--llama-adapter",
                  tmp_path / "llama-adapter", "--junit", tmp_path / "llama-adapter" / "x.xml"],  # into it
                 ["adapter", lora, tmp_path / "a2", "--junit", lora / "x.xml"],  # into its source
                 ["adapter", lora, tmp_path / "a2", "--junit", tmp_path / "a2" / "x.xml"],  # into its output
                 ["adapter", lora, tmp_path / "a2", "--no-verify", "--junit", tmp_path / "a.xml"],
                 ["convert", qwen, tmp_path / "l2", "--no-verify", "--report", tmp_path / "r.json"],
                 ["convert", qwen, tmp_path / "l2", "--junit", qwen / "x.xml"],
                 ["convert", qwen, tmp_path / "l2", "--junit", tmp_path]):  # a folder
        bad = runner.invoke(app, [str(a) for a in args])
        assert bad.exit_code == 2 and "Traceback" not in bad.output, (args, bad.output)
    assert _tree(tmp_path) == before  # nothing written, nothing replaced

    step.unlink()
    junit = tmp_path / "adapter.xml"
    result = CliRunner().invoke(app, ["verify", str(qwen), str(tmp_path / "llama"), "--adapter", str(lora),
                                      "--llama-adapter", str(tmp_path / "llama-adapter"), "--junit",
                                      str(junit),
                                      "--report", str(tmp_path / "adapter.json")])
    assert result.exit_code == 0, result.output
    names = {c.get("name") for c in ET.parse(junit).getroot().iter("testcase")}
    assert {"integrity", "tensors", "config", "logits"} <= names
    assert "equivalent" in step.read_text() and json.loads((tmp_path / "adapter.json").read_text())["passed"]


def _tree(root) -> dict:
    return {str(p): p.stat().st_size for p in root.rglob("*") if p.is_file()}


LINEAR = re.compile(r"\.(attn\.c_attn|attn\.c_proj|mlp\.w1|mlp\.w2|mlp\.c_proj)\.weight$")


@dataclass(frozen=True)
class Renamed(Dense):
    """A toy format: an exporter that saved every block linear's weight under `.w` instead of `.weight`."""

    name = "renamed"
    label = "a renamed export"
    fingerprint = ["renamed"]

    @classmethod
    def detect(cls, ckpt, dequantize=None):
        return cls() if any(n.endswith(".w") for n in ckpt.tensors) else None

    def stored(self, module, sizes):
        linear = module.role == "linear"
        return {("w" if k == "weight" and linear else k): v for k, v in super().stored(module, sizes).items()}

    def outputs(self, module, layer, refs, dtype, target):
        return super().outputs(module, layer, {("weight" if k == "w" else k): v for k, v in refs.items()},
                               dtype, target)

    def output_config(self):
        return {"exported_by": "toy"}


def _read_renamed(reference_, linear: str):
    """The toy format's linears, read for the reference by the format's definition (not the converter's)."""
    from qwen2llama.storage import read_ref

    return read_ref(reference_.ckpt.tensors[f"{linear}.w"]).float()


def test_a_registered_format_converts_and_verifies_without_touching_the_plan(qwen, tmp_path, monkeypatch):
    from safetensors.torch import save_file

    src = tmp_path / "renamed"
    src.mkdir()
    for f in qwen.iterdir():
        if not f.name.startswith("model"):
            (src / f.name).write_bytes(f.read_bytes())
    weights = load_file(str(next(qwen.glob("model*.safetensors"))))
    save_file({(k[:-7] + ".w" if LINEAR.search(k) else k): v for k, v in weights.items()},
              str(src / "model.safetensors"))
    with pytest.raises(InputError, match="unknown tensor"):  # not registered: not a Qwen v1 model
        pipeline.plan(src, None)
    plain_conversion(qwen, tmp_path / "plain")
    monkeypatch.setattr(formats, "FORMATS", list(formats.FORMATS))
    formats.register(Renamed)
    monkeypatch.setattr(reference, "READERS", list(reference.READERS))
    reference.register_reader(lambda ckpt: any(n.endswith(".w") for n in ckpt.tensors), _read_renamed)
    run = pipeline.plan(src, tmp_path / "out", verify=pipeline.VerifyOptions(quick=True))
    assert run.prepared.plan.fmt.name == "renamed" and all(t.is_byte_copy for t in run.prepared.plan.tensors
                                                           if t.source is not None)
    verdict = pipeline.execute(run).verified
    assert verdict["passed"] and verdict["checks"]["logits"]["max_abs_logit_diff"] <= 1e-5
    planted = tmp_path / "planted"
    shutil.copytree(tmp_path / "out", planted)
    plant_gate_up_swap, _ = DEFECTS["gate/up swapped"]
    plant_gate_up_swap(planted)
    rehash(planted)
    caught = CliRunner().invoke(app, ["verify", str(src), str(planted), "--quick"])
    assert caught.exit_code == 1 and "gate_proj" in caught.output, caught.output
    assert json.loads((tmp_path / "out" / "config.json").read_text())["exported_by"] == "toy"
    ours = load_file(str(tmp_path / "out" / "model.safetensors"))
    q = weights["transformer.h.1.attn.c_attn.weight"]
    third = q.shape[0] // 3
    assert ours["model.layers.1.self_attn.k_proj.weight"].equal(q[third:2 * third])
    assert ours["model.embed_tokens.weight"].equal(weights["transformer.wte.weight"])
    assert set(ours) == set(load_file(str(next((tmp_path / "plain").glob("model*.safetensors")))))


def plain_conversion(qwen, out):
    pipeline.run(qwen, out, verify=None)
