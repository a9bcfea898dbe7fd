"""Bad input read from outside — jobs files, summaries, adapter and GPTQ settings, Slurm and
Kubernetes variables, JSON of any depth — is exit 2 with the file (or variable), the field and the
expected value; never a traceback, never a wrong result (the safety issue's traceback classes)."""
from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from qwen2llama import batch, schemas, summary
from qwen2llama.cli import app
from qwen2llama.errors import InputError
from qwen2llama.synth import synthesize
from qwen2llama.synth import synthesize_adapter

from defects import edit_weights
from helpers import bad, cli


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    return synthesize(root / "src", "tiny", layers=1, seed=4), root


def slurm(task, low, high, count, step=1):
    return {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_MIN": str(low),
            "SLURM_ARRAY_TASK_MAX": str(high),
            "SLURM_ARRAY_TASK_COUNT": str(count), "SLURM_ARRAY_TASK_STEP": str(step)}


def test_slurm_ranges_and_steps_cover_every_job_once_and_lists_are_refused():  # 13
    jobs = [batch.Job(f"j{k}", f"s{k}", Path(f"/o/j{k}")) for k in range(7)]
    for tasks, low, high, step in [((0, 1, 2, 3), 0, 3, 1), ((0, 2, 4, 6), 0, 6, 2), ((5, 6), 5, 6, 1)]:
        shards = [batch.take_shard(jobs, *batch.shard_from_env(slurm(t, low, high, len(tasks),
                                                                     step))) for t in tasks]
        assert sorted(j.name for s in shards for j in s) == [f"j{k}" for k in range(7)]
    for env in [slurm(4, 0, 4, 3), slurm(3, 1, 3, 2), slurm(2, 0, 4,
                                                            3)]:  # --array=0,2,4 and a retry --array=1,3
        with pytest.raises(InputError, match="not a plain range") as info:
            batch.shard_from_env(env)
        assert "--shard" in info.value.fix
    for env, needle in [({**slurm(0, 0, 3, 4), "SLURM_ARRAY_TASK_STEP": "0"}, "SLURM_ARRAY_TASK_STEP='0'"),
                        ({**slurm(0, 0, 3, 4), "SLURM_ARRAY_TASK_ID": "x1"}, "SLURM_ARRAY_TASK_ID='x1'"),
                        ({"JOB_COMPLETION_INDEX": "2", "QWEN2LLAMA_SHARD_COUNT": "2"}, "not below"),
                        ({"JOB_COMPLETION_INDEX": "-1", "QWEN2LLAMA_SHARD_COUNT": "2"}, "whole number")]:
        with pytest.raises(InputError, match=needle.replace("(", r"\(")):
            batch.shard_from_env(env)


def test_a_list_array_task_refuses_before_doing_anything(tiny, tmp_path):
    src, _ = tiny
    bad("batch", src, "--out-root", tmp_path / "out", env=slurm(4, 0, 4, 3), needle="not a plain range")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("line,needle", [
    ('out = 5', "jobs.0.out"),
    ('checksums = "no"', "jobs.0.checksums"),
    ('dtype = "fp16"', "jobs.0.dtype"),
    ('shard_size = -3', "jobs.0.shard_size"),
    ('colour = "red"', "jobs.0.colour"),
    ('out = ""', "jobs.0.out"),
])
def test_jobs_file_values_of_the_wrong_type(tiny, tmp_path, line, needle):
    src, _ = tiny
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(f'[[jobs]]\nsrc = "{src}"\n{line}\n')
    bad("batch", "--jobs-file", jobs, "--out-root", tmp_path / "o", needle=needle)
    assert not (tmp_path / "o").exists()


def test_job_fields_schema_follows_the_options():
    assert set(schemas.JobFields.model_fields) == batch.JOB_KEYS


def test_summaries_of_the_wrong_shape(tmp_path):
    bad("batch", "--summarize", needle="needs the summary files")
    for name, data, needle in [("list", [1, 2], "(the whole file)"), ("no-jobs", {"x": 1}, "jobs"),
                               ("wrong-type", {"jobs": [{"name": 1, "src": "a", "out": "b",
                                                         "status": "passed"}]},
                                "jobs.0.name"),
                               ("status", {"jobs": [{"name": "a", "src": "a", "out": "b",
                                                     "status": "great"}]},
                                "jobs.0.status")]:
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(data))
        bad("batch", "--summarize", path, needle=needle)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    bad("batch", "--summarize", deep, needle="not a batch summary")


def test_junit_stays_well_formed_with_control_characters():
    results = [batch.JobResult("run\x01\x1b[31m", "src\x00", "/o/x", "failed", failures=["bad \x07 byte"])]
    root = ET.fromstring(summary.to_junit(results).split("\n", 1)[1])
    assert root.find(".//testcase") is not None


@pytest.mark.parametrize("edit,needle", [
    (lambda c: c.__setitem__("rank_pattern", {"attn.c_attn[": 4}), "is not a regular expression"),
    (lambda c: c.__setitem__("alpha_pattern", {"c_attn": "sixteen"}), "alpha_pattern.c_attn"),
    (lambda c: c.__setitem__("r", "8"), "adapter_config.json: r"),
    (lambda c: c.__setitem__("use_dora", "yes"), "use_dora"),
])
def test_adapter_config_values_of_the_wrong_type(tiny, tmp_path, edit, needle):
    src, _ = tiny
    lora = synthesize_adapter(tmp_path / "lora", src, seed=1)
    config = json.loads((lora / "adapter_config.json").read_text())
    edit(config)
    (lora / "adapter_config.json").write_text(json.dumps(config))
    bad("adapter", lora, tmp_path / "out", needle=needle)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_c_attn_lora_b_that_does_not_split_in_three_is_refused_without_base(tiny, tmp_path):
    src, _ = tiny
    lora = synthesize_adapter(tmp_path / "lora", src, seed=1)
    from safetensors.torch import load_file, save_file

    t = load_file(lora / "adapter_model.safetensors")
    name = next(n for n in t if n.endswith("c_attn.lora_B.weight"))
    t[name] = t[name][:-1].contiguous()
    save_file(t, lora / "adapter_model.safetensors")
    bad("adapter", lora, tmp_path / "out", needle="do not split into 3 equal parts")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags", [[], ["--no-verify"]])
def test_gptq_g_idx_out_of_range(tmp_path, flags):
    src = synthesize(tmp_path / "src", "tiny-int4", layers=1, seed=2)
    name = "transformer.h.0.mlp.w1.g_idx"
    edit_weights(src, lambda t: t[name].__setitem__(5, 99))
    bad("convert", src, tmp_path / "out", *flags, needle=f"tensor {name} holds group 99")
    assert not (tmp_path / "out").exists()


def test_gptq_settings_of_the_wrong_type(tmp_path):
    src = synthesize(tmp_path / "src", "tiny-int4", layers=1, seed=2)
    config = json.loads((src / "quantize_config.json").read_text())
    config["desc_act"] = "no"
    (src / "quantize_config.json").write_text(json.dumps(config))
    bad("inspect", src, needle="quantize_config.json: desc_act")


def test_batch_out_root_that_cannot_be_made(tiny, tmp_path):
    src, _ = tiny
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = cli("batch", src, "--out-root", blocker / "sub", "--no-verify")
    assert result.exit_code == 2 and "cannot create the output's folder" in result.output, result.output


# Every JSON file a conversion reads, mutated at random: a value replaced by one of another type, a
# key removed, or a value nested far deeper than Python's stack. The answer is exit 0 (a mutation
# that changes nothing the conversion reads) or exit 2 with a fix, never a traceback.
FILES = ["config.json", "generation_config.json", "quantize_config.json"]
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2, 2**40), st.floats(allow_nan=True),
                   st.text(max_size=5),
                   st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(),
                                                                        max_size=2))


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_mutations_of_the_json_files_are_bad_input_never_a_traceback(tiny, tmp_path_factory, data):
    _, root = tiny
    name = data.draw(st.sampled_from(FILES), label="file")
    base = root / "gptq-src"
    if not base.exists():
        synthesize(base, "tiny-int4", layers=1, seed=5)
    folder = tmp_path_factory.mktemp("mutated")
    src = shutil.copytree(base, folder / "src")
    doc = json.loads((src / name).read_text())
    key = data.draw(st.sampled_from(sorted(doc)), label="key")
    how = data.draw(st.sampled_from(["replace", "remove", "nest"]), label="how")
    if how == "remove":
        doc.pop(key)
        text = json.dumps(doc)
    elif how == "replace":
        doc[key] = data.draw(VALUES, label="value")
        text = json.dumps(doc)
    else:
        doc[key] = "DEEP"
        text = json.dumps(doc).replace('"DEEP"', "[" * 100_000 + "]" * 100_000)
    (src / name).write_text(text)
    result = CliRunner().invoke(app, ["convert", str(src), str(folder / "out"), "--dry-run"])
    assert result.exception is None or isinstance(result.exception,
                                                  SystemExit), (name, key, how, result.output)
    assert result.exit_code in (0, 2), (name, key, how, result.output)
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        assert "fix:" in result.output, result.output
    assert not (folder / "out").exists()
