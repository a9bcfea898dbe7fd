"""GPTQ tensors for synthesized checkpoints, in AutoGPTQ's original format as the Qwen v1
Int4/Int8 releases store them: random integer weights, zero points and float16 scales.

Two quantizers' files (`STYLES`), as their own code writes them (AutoGPTQ 0.7.1's
`BaseQuantizeConfig.to_dict` and `QuantLinear(bias=True)`; gptqmodel 7.7.0's `QuantizeConfig`
and packing, read in their sources): "autogptq" (default) gives every quantized linear a float16
bias — zeros where the float layer has none — and keeps the model float16; "gptqmodel" stores a
bias only where the layer has one and keeps the model's dtype (bf16 here) beside float16 scales,
with its settings nested under `meta`.

The zero points are random around the middle by default (stored minus one, as AutoGPTQ's format
does), not the constant of `sym` quantization, so that a misplaced `qzeros` column changes the
model; `sym_zeros` writes the releases' constant instead.
"""
from __future__ import annotations

LINEARS = ("attn.c_attn", "attn.c_proj", "mlp.w1", "mlp.w2", "mlp.c_proj")


STYLES = ("autogptq", "gptqmodel")


def settings(bits: int, group_size: int, desc_act: bool, style: str = "autogptq") -> dict:
    """quantize_config.json (also config.json's quantization_config) as each quantizer writes it."""
    if style == "gptqmodel":
        return {"bits": bits, "group_size": group_size, "desc_act": desc_act, "sym": True, "lm_head": False,
                "method": "gptq", "quant_method": "gptq", "format": "gptq", "checkpoint_format": "gptq",
                "pack_dtype": "int32",
                "meta": {"quantizer": ["gptqmodel:7.7.0"], "uri": "https://github.com/modelcloud/gptqmodel",
                         "damp_percent": 0.05, "damp_auto_increment": 0.01, "static_groups": False,
                         "true_sequential": True, "mse": 0.0, "act_group_aware": True}}
    return {"bits": bits, "group_size": group_size, "damp_percent": 0.01, "desc_act": desc_act,
            "static_groups": False, "sym": True, "true_sequential": True, "model_name_or_path": None,
            "model_file_base_name": "model", "is_marlin_format": False, "quant_method": "gptq"}


def default_group_size(hidden_size: int) -> int:
    """The releases' 128; at tiny widths 32, so that every linear still has several groups."""
    return 128 if hidden_size >= 512 else 32


class GptqTensors:
    """The tensor list and the tensors of a GPTQ checkpoint, from the dense one's names and shapes."""

    def __init__(self, bits: int, group: int, desc_act: bool, sym_zeros: bool, generator,
                 style: str = "autogptq",
                 dense_dtype: str = "BF16"):
        self.bits, self.group, self.desc_act, self.sym_zeros = bits, group, desc_act, sym_zeros
        self.generator = generator
        self.style = style
        # gptqmodel keeps the model's dtype for the dense tensors; AutoGPTQ loads and saves float16
        self.dense_dtype = dense_dtype if style == "gptqmodel" else "F16"
        self.inputs: dict[str, int] = {}  # linear -> its input features
        self.zero_biases: set[str] = set()  # biases AutoGPTQ adds to linears that had none

    def entries(self, dense: list[tuple[str, tuple[int, ...]]]) -> list[tuple[str, str, tuple]]:
        """(name, dtype, shape): the block linears packed (with their biases in float16),
        everything else in the dense dtype."""
        per = 32 // self.bits
        names = {name for name, _ in dense}
        out = []
        for name, shape in dense:
            stem = name.rsplit(".", 1)[0]
            if not stem.endswith(LINEARS):
                out.append((name, self.dense_dtype, shape))
            elif name.endswith(".bias"):
                out.append((name, "F16", shape))
            else:
                o, i = shape
                self.inputs[stem] = i
                groups = 1 if self.group == -1 else i // self.group
                out += [(f"{stem}.qweight", "I32", (i // per, o)), (f"{stem}.qzeros", "I32",
                                                                    (groups, o // per)),
                        (f"{stem}.scales", "F16", (groups, o)), (f"{stem}.g_idx", "I32", (i,))]
                if self.style == "autogptq" and f"{stem}.bias" not in names:
                    self.zero_biases.add(f"{stem}.bias")
                    out.append((f"{stem}.bias", "F16", (o,)))
        return out

    def owns(self, name: str) -> bool:
        """Whether `make` writes this tensor (the packed ones and the added zero biases)."""
        return name.endswith((".qweight", ".qzeros", ".scales", ".g_idx")) or name in self.zero_biases

    def make(self, name: str, shape: tuple):
        """One tensor of a linear, by its suffix: random but well-formed."""
        import torch

        if name in self.zero_biases:
            return torch.zeros(shape, dtype=torch.float16)
        bits, top, gen = self.bits, 1 << self.bits, self.generator
        inputs = self.inputs[name.rsplit(".", 1)[0]]
        if name.endswith(".qweight"):
            return pack(torch.randint(0, top, (inputs, shape[1]), generator=gen), bits, 0)
        if name.endswith(".qzeros"):
            full = (shape[0], shape[1] * (32 // bits))
            # around the middle, as trained zero points are: a far-off zero shifts a whole group of
            # inputs alike, and random ones across the range make activations blow up with depth
            zeros = torch.full(full, top // 2)
            if not self.sym_zeros:
                zeros += torch.randint(-(top // 8), top // 8 + 1, full, generator=gen)
            return pack(zeros - 1, bits, 1)
        if name.endswith(".scales"):
            # q - z has std about top / sqrt(12): weights come out with std about 1/sqrt(inputs), as
            # in the dense synthesized models
            spread = 12 ** 0.5 / (top * inputs ** 0.5)
            return (spread * (0.5 + torch.rand(shape, generator=gen))).to(torch.float16)
        if name.endswith(".g_idx"):
            size = inputs if self.group == -1 else self.group
            order = torch.randperm(inputs, generator=gen) if self.desc_act else torch.arange(inputs)
            g_idx = torch.empty(inputs, dtype=torch.int32)
            g_idx[order] = (torch.arange(inputs) // size).to(torch.int32)
            return g_idx
        raise ValueError(name)


def pack(values, bits: int, along: int):
    """Pack non-negative ints (< 2**bits) into int32 words, lowest bits first, along dim `along`."""
    import torch

    per = 32 // bits
    v = values.to(torch.int64)
    if along == 0:
        v = v.reshape(v.shape[0] // per, per, v.shape[1])
        shifts = torch.arange(0, 32, bits)[None, :, None]
    else:
        v = v.reshape(v.shape[0], v.shape[1] // per, per)
        shifts = torch.arange(0, 32, bits)[None, None, :]
    words = (v << shifts).sum(dim=1 + along)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
