"""The one declaration of a conversion's options. The jobs-file schema (schemas.JobFields), the
batch keys and the fingerprint (manifest.fingerprint) derive from it; the CLI fills it by name.

Each field says how it enters a jobs file (`job`: its strict type there; absent: not a jobs-file
key) and the fingerprint (`fingerprint`): "always" (its value, always), "resolved" (through what
the plan resolves from it: the dtype, the chat decision, the shards, the files read), "none"
(it changes no output byte), or, by default, "value": its value when it is not the default, so a
new option enters the fingerprint without editing it, and older fingerprints stay as they were.
"""
from __future__ import annotations

from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Annotated, Literal

from pydantic import Field as Constraint
from pydantic import StrictBool, StrictInt, StrictStr

from .targets import DEFAULT as DEFAULT_TARGET
from .targets import TARGETS

FloatName = Literal["bfloat16", "float16", "float32"]


def option(default, *, job=None, fingerprint: str = "value"):
    """A field of ConvertOptions; see the module docstring for `job` and `fingerprint`."""
    metadata = {"fingerprint": fingerprint} | ({"job": job} if job is not None else {})
    return field(default=default, metadata=metadata)


@dataclass(frozen=True, kw_only=True)
class ConvertOptions:
    shard_size: str | int = option("5GB", job=StrictStr | Annotated[StrictInt, Constraint(gt=0)],
                                   fingerprint="resolved")
    dtype: str | None = option(None, job=FloatName, fingerprint="resolved")  # None: keep the source's
    kind: str = option("auto", job=Literal["auto", "chat", "base"], fingerprint="resolved")
    force: bool = option(False, fingerprint="none")  # replace an existing output, once complete
    checksums: bool = option(True, job=StrictBool, fingerprint="always")  # digests in conversion.json
    # folder or hub id supplying files the source lacks (a Trainer checkpoint)
    base: str | None = option(None, job=StrictStr, fingerprint="resolved")
    hash: str = option("blake3", job=Literal["blake3", "sha256"], fingerprint="always")  # manifest.HASHES
    dequantize: str | None = option(None, job=FloatName, fingerprint="resolved")  # GPTQ: dense output
    merge_adapter: str | None = option(None, job=StrictStr, fingerprint="resolved")  # LoRA folded in
    target: str = option(DEFAULT_TARGET, job=Literal[tuple(TARGETS)])  # the output layout (targets/)
    ignore: tuple[str, ...] = option((), job=list[StrictStr])  # source files left out on purpose (globs)
    context: int | None = option(None, job=Annotated[StrictInt, Constraint(gt=0)])  # context.py: --context T
    card: bool = option(True, job=StrictBool)  # README.md, the model card (card.py); --no-card: none

    def __post_init__(self):
        object.__setattr__(self, "ignore", tuple(self.ignore or ()))  # a jobs file gives a list

    @classmethod
    def pick(cls, values: dict) -> ConvertOptions:
        """The options among `values` (a command's parameters), by name."""
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})


def job_options(cls=ConvertOptions) -> list[Field]:
    """The options a jobs file may set."""
    return [f for f in fields(cls) if "job" in f.metadata]


def fingerprinted(options) -> dict:
    """What the options add to a conversion's fingerprint themselves (see the module docstring)."""
    what = {}
    for f in fields(options):
        rule, value = f.metadata.get("fingerprint", "value"), getattr(options, f.name)
        if rule == "always" or (rule == "value" and value != (None if f.default is MISSING else f.default)):
            what[f.name] = value
    return what
