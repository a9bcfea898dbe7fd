"""GPTQ (AutoGPTQ's original format): the block linears are stored transposed and packed, so a
block of output features is a block of *columns*: of `qweight` and `scales`, and of the packed
columns of `qzeros`; `g_idx` (per input) is copied to each part. Everything else is float16 and
dense. With `dequantize`, the linears are written as dense weights instead.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..dtypes import torch_dtype
from ..layout import Module, name_at
from ..qwen.quantization import GptqSettings
from ..storage import OutputTensor, TensorRef, read_ref
from ..storage.refs import COMPUTE_BLOCK
from .dense import DENSE, Stored, split_rows, zero_biases

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
        step = max(1, COMPUTE_BLOCK // (4 * groups.numel()))
        for o0 in range(self.start, self.stop, step):
            o1 = min(o0 + step, self.stop)
            q = unpack(words[:, o0:o1], self.bits, along=0)
            w = scales[groups, o0:o1] * (q - zeros[groups, o0:o1]).float()
            yield w.T.contiguous().to(torch_dtype(dtype))


class Gptq:
    """A Qwen v1 Int4/Int8 release. `dequantize`: the output dtype for dense linears, or None to
    keep them quantized (a LLaMA GPTQ folder)."""

    name = "gptq"

    def __init__(self, settings: GptqSettings, dequantize: str | None = None):
        self.settings = settings
        self.dequantize = dequantize

    def stored(self, module: Module, sizes: dict[str, int]) -> dict[str, Stored]:
        if module.role != "linear":
            return DENSE.stored(module, sizes)
        out_f, in_f = (sizes[s] for s in module.features)
        s = self.settings
        groups = s.groups(in_f)
        stored = {"qweight": Stored((in_f // s.pack, out_f), ("I32",)),
                  "qzeros": Stored((groups, out_f // s.pack), ("I32",)),
                  "scales": Stored((groups, out_f)),
                  "g_idx": Stored((in_f,), ("I32",))}
        if module.bias:
            stored["bias"] = Stored((out_f,))
        return stored

    def outputs(self, module: Module, layer: int | None, refs: dict[str, TensorRef], dtype: str) -> list[OutputTensor]:
        if module.role != "linear":
            return DENSE.outputs(module, layer, refs, dtype)
        out_f = refs["scales"].shape[1]
        tensors = self._dense(module, layer, refs, dtype) if self.dequantize else self._packed(module, layer, refs)
        if "bias" in refs:
            tensors += split_rows(module, layer, "bias", refs["bias"], dtype if self.dequantize else refs["bias"].dtype)
        return tensors + zero_biases(module, layer, out_f, dtype)

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

    def _dense(self, module: Module, layer: int | None, refs: dict[str, TensorRef], dtype: str) -> list[OutputTensor]:
        out_f, in_f = refs["scales"].shape[1], refs["g_idx"].shape[0]
        tensors = []
        for split in module.into:
            start, stop = split.block(out_f)
            recipe = Dequantized(refs["qweight"], refs["qzeros"], refs["scales"], refs["g_idx"], self.settings.bits,
                                 start, stop)
            tensors.append(OutputTensor(f"{name_at(split.llama, layer)}.weight", dtype, (stop - start, in_f), None,
                                        derived=recipe))
        return tensors
