"""One declaration of the conversion options (options.py): the jobs-file schema, the batch keys and
the fingerprint derive from it, and the CLI fills it by name."""
from __future__ import annotations

import inspect
from dataclasses import fields, make_dataclass, replace

import pytest
from pydantic import StrictInt, ValidationError

from qwen2llama import batch, convert, manifest, schemas
from qwen2llama.cli import batch_command, commands
from qwen2llama.options import ConvertOptions, job_options, option
from qwen2llama.synth import synthesize


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    src = synthesize(tmp_path_factory.mktemp("options") / "qwen", "tiny", layers=1, seed=2)
    return convert.prepare(src, ConvertOptions())


def test_a_new_option_reaches_the_jobs_schema_and_the_fingerprint_unedited(prepared):
    extended = make_dataclass("Extended", [("draft_layers", int, option(0, job=StrictInt))],
                              bases=(ConvertOptions,), frozen=True, kw_only=True)
    jobs = schemas.job_fields(extended)
    assert jobs.model_validate({"src": "a", "draft_layers": 4}).draft_layers == 4
    with pytest.raises(ValidationError):
        jobs.model_validate({"src": "a", "draft_layers": "4"})  # strict, like every jobs-file key
    with pytest.raises(ValidationError):
        schemas.JobFields.model_validate({"src": "a", "draft_layers": 4})  # not an option of ours
    base = manifest.fingerprint(prepared)
    assert manifest.fingerprint(replace(prepared, options=extended())) == base  # the default: as before
    assert manifest.fingerprint(replace(prepared, options=extended(draft_layers=4))) != base


def test_target_enters_the_fingerprint_and_the_jobs_file(prepared):
    base = manifest.fingerprint(prepared)
    assert manifest.fingerprint(replace(prepared, options=ConvertOptions(target="qwen2"))) != base
    assert manifest.fingerprint(replace(prepared, options=ConvertOptions(force=True))) == base
    assert manifest.fingerprint(replace(prepared, options=ConvertOptions(hash="sha256"))) != base
    assert "target" in batch.JOB_KEYS and set(schemas.JobFields.model_fields) == batch.JOB_KEYS
    with pytest.raises(ValidationError):
        schemas.JobFields.model_validate({"src": "a", "target": "gpt2"})


def test_options_are_keyword_only_and_every_one_reaches_the_cli():
    with pytest.raises(TypeError):
        ConvertOptions("5GB")  # positional construction was how fields got crossed
    convert_params = set(inspect.signature(commands.convert).parameters)
    # merge_adapter is --adapter with --merge
    assert {f.name for f in fields(ConvertOptions)} - {"merge_adapter"} <= convert_params
    batch_params = set(inspect.signature(batch_command.batch).parameters)
    unset_by_batch = {"merge_adapter", "checksums", "hash", "dequantize"}  # jobs-file keys only
    assert {f.name for f in job_options()} - unset_by_batch <= batch_params
    picked = ConvertOptions.pick({"target": "qwen2", "verify": True, "dtype": None})
    assert picked == ConvertOptions(target="qwen2")
