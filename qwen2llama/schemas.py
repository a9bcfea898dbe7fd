"""The shapes of the files and variables read from outside that no other module parses in full:
jobs files, batch summaries, adapter_config.json, GPTQ settings. Each is a pydantic model with
strict types (a string is not a number, "no" is not a boolean); `validated` turns a failure into
one InputError naming the file, the field path and what was expected.

Golden headers are checked in verify/golden.py against the numbers they describe; config.json
in qwen/config.py, which knows both generations of its field names.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import (BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr,
                      ValidationError, create_model, field_validator)

from .errors import InputError
from .options import ConvertOptions, job_options

Model = TypeVar("Model", bound=BaseModel)
Positive = Annotated[StrictInt, Field(gt=0)]
PositiveNumber = Annotated[StrictInt | StrictFloat, Field(gt=0)]


def validated(model: type[Model], data, path: str | Path, fix: str, where: str = "") -> Model:
    """`data` as `model`, or InputError: '<where>field.path: what was expected (got ...)'."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(the whole file)"
        got = repr(first.get("input"))[:60]
        what = f"unknown key {field}" if first["type"] == "extra_forbidden" else \
            f"{field}: {first['msg'].lower()} (got {got})"
        raise InputError(f"{where}{what}"
                         + (f"; {len(exc.errors()) - 1} more" if len(exc.errors()) > 1 else ""),
                         path=path, fix=fix) from None


def job_fields(options=ConvertOptions) -> type[BaseModel]:
    """The schema of one [[jobs]] table or [defaults] of a jobs file: src, out and every option
    that declares a `job` type (options.py), each optional."""
    return create_model("JobFields", __config__=ConfigDict(extra="forbid"),
                        src=(StrictStr | None, None),
                        out=(Annotated[StrictStr, Field(min_length=1)] | None, None),
                        **{f.name: (f.metadata["job"] | None, None) for f in job_options(options)})


JobFields = job_fields()


class JobsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    out_root: StrictStr | None = None
    defaults: JobFields = JobFields()
    jobs: Annotated[list[JobFields], Field(min_length=1)]


class JobRecord(BaseModel):
    """A job in a batch summary (`batch --summary`), as `summary.summary_json` writes it."""

    model_config = ConfigDict(extra="ignore")
    name: StrictStr
    src: StrictStr
    out: StrictStr
    status: Literal["passed", "converted", "up to date", "failed", "bad input", "error"]
    seconds: StrictInt | StrictFloat = 0.0
    gigabytes: StrictInt | StrictFloat = 0.0
    max_abs_logit_diff: StrictInt | StrictFloat | None = None
    failures: list[StrictStr] = []
    notes: list[StrictStr] = []


class Summary(BaseModel):
    model_config = ConfigDict(extra="ignore")
    jobs: list[JobRecord]


def _patterns_compile(value):
    for key in value or {}:
        try:
            re.compile(key)
        except re.error as exc:
            raise ValueError(f"{key!r} is not a regular expression ({exc})") from None
    return value


class AdapterConfig(BaseModel):
    """What the conversion reads of PEFT's adapter_config.json; everything else is carried over."""

    model_config = ConfigDict(extra="allow")
    peft_type: StrictStr
    r: Positive
    lora_alpha: PositiveNumber
    rank_pattern: dict[StrictStr, Positive] | None = None
    alpha_pattern: dict[StrictStr, PositiveNumber] | None = None
    target_modules: list[StrictStr] | StrictStr | None = None
    modules_to_save: list[StrictStr] | None = None
    use_rslora: StrictBool = False
    use_dora: StrictBool = False
    fan_in_fan_out: StrictBool = False
    bias: StrictStr = "none"
    layers_to_transform: StrictInt | list[StrictInt] | None = None
    layers_pattern: StrictStr | list[StrictStr] | None = None

    _compile = field_validator("rank_pattern", "alpha_pattern")(_patterns_compile)


class GptqConfig(BaseModel):
    """A GPTQ quantization_config / quantize_config.json (AutoGPTQ's keys, gptqmodel's too)."""

    model_config = ConfigDict(extra="allow")
    bits: StrictInt
    group_size: StrictInt = -1
    desc_act: StrictBool = False
    sym: StrictBool = True
    quant_method: StrictStr = "gptq"
    checkpoint_format: StrictStr | None = None
    format: StrictStr | None = None
    is_marlin_format: StrictBool = False
    lm_head: StrictBool = False
    quant_lm_head: StrictBool = False
    meta: dict | None = None
