"""Storage formats: how a module's output-feature split becomes tensor slices, one module each.

A format says which tensors a Qwen module stores (`stored`: suffix -> shape and element types),
turns a module's tensors into output tensors (`outputs`), and answers the questions the plan, the
writer, the manifest and verify ask (the `Format` protocol below); none of those names a format.
Adding one is a module here and a line in `FORMATS` (or `register`): the first whose `detect`
claims a checkpoint is its format; `Dense` claims whatever is left.
"""
from __future__ import annotations

from typing import Protocol

from ..errors import InputError
from ..qwen.config import MULTIMODAL, multimodal
from ..layout import Module
from ..storage import OutputTensor, TensorRef
from .dense import DENSE, Dense, Stored
from .gptq import Gptq

__all__ = ["DENSE", "FORMATS", "Dense", "Format", "Gptq", "Stored", "explain_unknown", "format_for",
           "register"]


class Format(Protocol):
    name: str
    label: str  # for messages: "a GPTQ release"
    quantized: bool  # the output stays packed (its config gets output_config)
    dequantize: str | None  # a quantized source written dense, in this dtype
    mlp_bias: bool  # the output's MLP linears have biases (config.json mlp_bias)
    mergeable: bool  # a LoRA adapter can be folded into these weights
    keeps_stored_dtypes: bool  # without --dtype every tensor keeps its stored type
    fingerprint: list | None  # what a conversion's fingerprint adds (None: nothing)

    # decisions that need the source's tensors and the output layout (targets/)
    def for_source(self, found: dict, target) -> Format: ...
    def dropped(self, found: dict, target) -> list[TensorRef]: ...  # stored, all zero, left out (checked)
    def stored(self, module: Module, sizes: dict[str, int]) -> dict[str, Stored]: ...
    def outputs(self, module: Module, layer: int | None, refs: dict[str, TensorRef],
                dtype: str | None, target) -> list[OutputTensor]: ...
    def describe(self, dtype: str) -> str | None: ...  # a line for inspect (None: nothing to add)
    def implied_by(self) -> str: ...  # what the shapes in a shape error come from
    def wrong_dtype(self, name: str, ref: TensorRef, want: Stored) -> InputError: ...
    def output_config(self) -> dict: ...  # entries of the output's config.json
    def output_files(self) -> dict[str, dict]: ...  # JSON files of the output folder, by name


FORMATS: list[type] = [Gptq, Dense]  # tried in order; Dense last: it claims every checkpoint


def register(fmt: type) -> None:
    """Add a format, tried before the built-in ones."""
    FORMATS.insert(0, fmt)


def format_for(ckpt, dequantize: str | None = None) -> Format:
    """The format of a checkpoint's weights; `dequantize` (a dtype name) asks a quantized format
    for dense output."""
    return next(f for cls in FORMATS if (f := cls.detect(ckpt, dequantize)) is not None)


def explain_unknown(ckpt, name: str, ref: TensorRef) -> InputError:
    """Why a stored tensor fits no module of the table: a format's reason, else not Qwen v1."""
    for part, what in (("visual", MULTIMODAL["visual"]), ("audio", MULTIMODAL["audio"])):
        if name.startswith(f"transformer.{part}."):
            return multimodal(what, f"it holds transformer.{part}.* tensors", ref.file)
    for cls in FORMATS:
        if (reason := cls.explain_unknown(ckpt, name, ref)) is not None:
            return reason
    return InputError(f"unknown tensor {name} (shape {list(ref.shape)}): not part of a Qwen v1 model",
                      path=ref.file, fix="qwen2llama converts unmodified Qwen v1 checkpoints only; "
                      "merge or remove adapters and extra heads first (`qwen2llama adapter` converts a "
                      "PEFT adapter)")
