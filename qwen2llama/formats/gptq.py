"""GPTQ (AutoGPTQ's original format): the block linears are stored transposed and packed, so a
block of output features is a block of *columns*: of `qweight` and `scales`, and of the packed
columns of `qzeros`; `g_idx` (per input) is copied to each part. Everything else is dense, kept
as stored (AutoGPTQ: float16; gptqmodel: the model's dtype, bf16 beside float16 scales) unless
--dtype casts it. With `dequantize`, the linears are written as dense weights instead.

AutoGPTQ builds every quantized linear with a bias, so its files carry one on `attn.c_proj`,
`mlp.w1`, `mlp.w2` and `mlp.c_proj` too (zeros where the float layer had none). Where the target
has a slot, a stored bias is written (LLaMA's o_proj, with `attention_bias: true`); the MLP's are
dropped when every one is zero (the tensors check re-reads them), else all written, with
`mlp_bias: true` and zeros for a linear that has none. A bias the target has no slot for (Qwen2's
o_proj and MLP) is dropped when zero, and refused when not.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..dtypes import FLOAT_NAMES, NAME_OF, torch_dtype
from ..errors import InputError
from ..layout import BY_QWEN, Module, name_at
from ..qwen.quantization import SUPPORTED, GptqSettings
from ..storage import OutputTensor, TensorRef, read_ref
from ..storage.refs import COMPUTE_BLOCK, row_blocks
from .dense import DENSE, Stored
from .rows import split_rows, zero_biases

QUANTIZED = ("qweight", "qzeros", "scales")  # split by columns; g_idx is copied whole


def unpack(words, bits: int, along: int):
    """Unpack int32 words into `32 // bits` values each, lowest bits first, along dim `along`
    (0: qweight's packed input rows; 1: qzeros' packed output columns)."""
    import torch

    pack = 32 // bits
    shifts = torch.arange(0, 32, bits, dtype=torch.int32)
    if along == 0:
        values = (words[:, None, :] >> shifts[None, :, None]) & ((1 << bits) - 1)
        return values.reshape(words.shape[0] * pack, words.shape[1])
    values = (words[:, :, None] >> shifts[None, None, :]) & ((1 << bits) - 1)
    return values.reshape(words.shape[0], words.shape[1] * pack)


@dataclass(frozen=True)
class Dequantized:
    """Rows [start, stop) of a GPTQ linear's dense weight ([out, in], nn.Linear layout), computed
    as W[o, i] = scales[g_idx[i], o] * (q[i, o] - (z[g_idx[i], o] + 1)) in float32, where that
    is exact (a float16 scale times a small integer), then cast."""

    qweight: TensorRef
    qzeros: TensorRef
    scales: TensorRef
    g_idx: TensorRef
    bits: int
    start: int
    stop: int
    label = "dequantized"

    @property
    def file(self):
        return self.scales.file

    def describe(self) -> str:
        return f"dequantized {self.qweight.name.removesuffix('.qweight')} outputs [{self.start}:{self.stop}]"

    def blocks(self, dtype: str):
        """Memory: the packed qweight plus one block."""
        words = read_ref(self.qweight)
        groups = read_ref(self.g_idx).long()
        zeros = unpack(read_ref(self.qzeros), self.bits, along=1) + 1
        scales = read_ref(self.scales).float()
        for o0, o1 in row_blocks(self.start, self.stop, 4 * groups.numel(), COMPUTE_BLOCK):
            q = unpack(words[:, o0:o1], self.bits, along=0)
            w = scales[groups, o0:o1] * (q - zeros[groups, o0:o1]).float()
            yield w.T.contiguous().to(torch_dtype(dtype))


def _mlp(module: Module) -> bool:
    """A linear of the MLP (w1, w2, mlp.c_proj): Qwen gives none of them a bias."""
    return module.role == "linear" and ".mlp." in module.qwen


def _holds_bias(module: Module, target, mlp_bias: bool) -> bool:
    return all(target.has_bias(s.llama, mlp_bias) for s in module.into)


@dataclass(frozen=True)
class Gptq:
    """A Qwen v1 Int4/Int8 release. `dequantize`: the output dtype for dense linears, or None to
    keep them quantized (a LLaMA GPTQ folder). `mlp_bias`: the source's MLP biases are not all
    zero, so the output carries them (set by `for_source`)."""

    settings: GptqSettings
    dequantize: str | None = None
    mlp_bias: bool = False
    name = "gptq"
    label = "a GPTQ release"
    mergeable = False  # LoRA merges into dense weights only

    @classmethod
    def detect(cls, ckpt, dequantize: str | None = None) -> Gptq | None:
        """The format of a checkpoint with GPTQ settings; `dequantize` (a dtype name): dense output."""
        if ckpt.quantization is None:
            return None
        if dequantize is not None and dequantize not in FLOAT_NAMES:
            raise InputError(f"unknown --dequantize {dequantize!r}",
                             fix=f"use one of {', '.join(FLOAT_NAMES)}")
        return cls(ckpt.quantization, FLOAT_NAMES[dequantize] if dequantize else None)

    @staticmethod
    def explain_unknown(ckpt, name: str, ref: TensorRef) -> InputError | None:
        """A packed tensor the table does not place: no GPTQ settings, or a quantized module GPTQ
        releases do not quantize."""
        if not name.endswith((".qweight", ".qzeros", ".g_idx")):
            return None
        if ckpt.quantization is None:
            return InputError(f"tensor {name} is GPTQ-packed, but config.json has no quantization_config and "
                              "there is no quantize_config.json", path=ref.file,
                              fix="restore the config files that came with the quantized checkpoint")
        return InputError(f"tensor {name} is quantized: unsupported quantization (only the block linears "
                          "of a Qwen v1 GPTQ release are; wte and lm_head stay float16)", path=ref.file,
                          fix=f"qwen2llama converts {SUPPORTED}")

    @property
    def quantized(self) -> bool:
        return self.dequantize is None

    @property
    def fingerprint(self) -> list:
        return [self.name, self.quantized]

    def describe(self, dtype: str) -> str:
        """One line for inspect and --dry-run (`dtype`: the output's, by name)."""
        s = self.settings
        kept = "written as a GPTQ folder" if self.quantized else f"dequantized to {dtype} (--dequantize)"
        return f"GPTQ {s.bits}-bit, group_size {s.group_size}, desc_act {s.desc_act} ({s.path.name}); {kept}"

    def implied_by(self) -> str:
        s = self.settings
        return f"config.json with bits {s.bits}, group_size {s.group_size} implies"

    def wrong_dtype(self, name: str, ref: TensorRef, want: Stored) -> InputError:
        if want.dtypes[0] in NAME_OF:
            return DENSE.wrong_dtype(name, ref, want)
        return InputError(f"tensor {name} is {ref.dtype}; GPTQ stores it as {' or '.join(want.dtypes)}",
                          path=ref.file, fix="check that the checkpoint is an unmodified AutoGPTQ export")

    def output_config(self) -> dict:
        """transformers reads the settings from config.json."""
        return {"quantization_config": self.settings.output_config()} if self.quantized else {}

    def output_files(self) -> dict[str, dict]:
        """AutoGPTQ-style loaders read quantize_config.json."""
        return {"quantize_config.json": self.settings.output_config()} if self.quantized else {}

    @property
    def keeps_stored_dtypes(self) -> bool:
        """Without --dtype each tensor keeps its stored type (mixed types are how quantizers write)."""
        return self.quantized

    def for_source(self, found: dict, target) -> Gptq:
        """This format with the MLP-bias decision for the source's tensors (whose `g_idx` must
        index existing groups: a value out of range would crash, or write a wrong model); a
        non-zero bias the target has no slot for is bad input."""
        for refs in found.values():
            if "g_idx" in refs:
                _check_groups(refs["g_idx"], refs["scales"].shape[0])
        decided = replace(self, mlp_bias=any(_nonzero(ref) for ref in _mlp_biases(found)))
        for ref in decided.dropped(found, target):
            if _nonzero(ref):
                raise target.refuse(f"{ref.name} is not all zero, and {target.label} has no bias there",
                                    path=ref.file)
        return decided

    def dropped(self, found: dict, target) -> list[TensorRef]:
        """Stored biases the output leaves out, where the target has no slot for them: the MLP's
        unless mlp_bias (and, for Qwen2, c_proj's); each must be zero (for_source, the tensors check)."""
        return [refs["bias"] for (qwen, _), refs in found.items()
                if "bias" in refs and not _holds_bias(BY_QWEN[qwen], target, self.mlp_bias)]

    def stored(self, module: Module, sizes: dict[str, int]) -> dict[str, Stored]:
        if module.role != "linear":
            return DENSE.stored(module, sizes)
        out_f, in_f = (sizes[s] for s in module.features)
        s = self.settings
        groups = s.groups(in_f)
        return {"qweight": Stored((in_f // s.pack, out_f), ("I32",)),
                "qzeros": Stored((groups, out_f // s.pack), ("I32",)),
                "scales": Stored((groups, out_f)),
                "g_idx": Stored((in_f,), ("I32",)),
                "bias": Stored((out_f,), optional=not module.bias)}

    def outputs(self, module: Module, layer: int | None, refs: dict[str, TensorRef],
                dtype: str | None, target) -> list[OutputTensor]:
        """`dtype`: of the dense tensors, None to keep each as stored."""
        if module.role != "linear":
            return DENSE.outputs(module, layer, refs, dtype, target)
        out_f = refs["scales"].shape[1]
        tensors = self._dense(module, layer, refs,
                              dtype) if self.dequantize else self._packed(module, layer, refs)
        dense_dtype = self.dequantize or dtype
        if "bias" in refs and _holds_bias(module, target, self.mlp_bias):
            return tensors + split_rows(module, layer, "bias", refs["bias"], dense_dtype)
        if "bias" in refs:
            return tensors  # a zero bias without a slot: dropped (Gptq.dropped)
        return tensors + zero_biases(module, layer, out_f, dense_dtype or refs["scales"].dtype, target,
                                     self.mlp_bias)

    def _packed(self, module: Module, layer: int | None, refs: dict[str, TensorRef]) -> list[OutputTensor]:
        tensors = []
        for split in module.into:
            name = name_at(split.llama, layer)
            for suffix in QUANTIZED:
                ref = refs[suffix]
                c0, c1 = split.block(ref.shape[1])
                cols = None if split.count == 1 else (c0, c1)
                tensors.append(OutputTensor(f"{name}.{suffix}", ref.dtype, (ref.shape[0], c1 - c0), ref, 0,
                                            ref.shape[0], cols))
            g_idx = refs["g_idx"]
            tensors.append(OutputTensor(f"{name}.g_idx", g_idx.dtype, g_idx.shape, g_idx, 0, g_idx.shape[0]))
        return tensors

    def _dense(self, module: Module, layer: int | None, refs: dict[str, TensorRef],
               dtype: str) -> list[OutputTensor]:
        out_f, in_f = refs["scales"].shape[1], refs["g_idx"].shape[0]
        tensors = []
        for split in module.into:
            start, stop = split.block(out_f)
            recipe = Dequantized(refs["qweight"], refs["qzeros"], refs["scales"], refs["g_idx"],
                                 self.settings.bits, start, stop)
            tensors.append(OutputTensor(f"{name_at(split.llama, layer)}.weight", dtype, (stop - start, in_f),
                                        None, derived=recipe))
        return tensors


def _check_groups(g_idx: TensorRef, groups: int) -> None:
    g = read_ref(g_idx)
    if g.numel() and (int(g.min()) < 0 or int(g.max()) >= groups):
        bad = int(g.min()) if int(g.min()) < 0 else int(g.max())
        raise InputError(f"tensor {g_idx.name} holds group {bad}, but the scales have {groups} groups",
                         path=g_idx.file,
                         fix="restore the checkpoint files the quantizer wrote")


def _mlp_biases(found: dict) -> list[TensorRef]:
    """The biases a quantizer stored on the MLP linears (map_source's found: (module, layer) -> refs)."""
    return [refs["bias"] for (qwen, _), refs in found.items() if "bias" in refs and _mlp(BY_QWEN[qwen])]


def _nonzero(ref: TensorRef) -> bool:
    """Whether a (small) stored tensor has any non-zero element; -0.0 counts as zero."""
    return bool(read_ref(ref).float().ne(0).any())
