"""`make e2e` (GPTQ producers): a dense Qwen v1 checkpoint's block linears packed by a real
quantizer's own code — AutoGPTQ 0.7.1's `QuantLinear.pack` (qlinear_cuda_old, pure torch/numpy,
loaded from its file: the package's import needs CUDA-era extras) or gptqmodel 7.7.0's
`TorchLinear.pack` with its `QuantizeConfig` serializer — saved under Qwen's module names as each
tool saves a model. No Qwen remote code: the linears are plain `nn.Linear`s.

The weights handed to `pack` are exactly representable, W = scales * (q - z) with random 4/8-bit
q, float16 scales and zero points z at the symmetric middle (sym, as the Qwen releases) or random
(asym), so the packed words must give back q and z: `OUT_DIR.expected.safetensors` holds them for
the caller to hold the packed file against.

    python tests/e2e_gptq_pack.py autogptq|gptqmodel DENSE_DIR OUT_DIR BITS sym|asym
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

LINEARS = ("attn.c_attn", "attn.c_proj", "mlp.w1", "mlp.w2", "mlp.c_proj")
GROUP = 32
COPIED = ("generation_config.json", "qwen.tiktoken", "LICENSE", "NOTICE", "tokenizer_config.json")


def autogptq_linear(bits: int, infeatures: int, outfeatures: int, bias: bool, sym: bool = True):
    import auto_gptq  # noqa: F401  (only to find the installed files)

    # AutoGPTQ's QuantLinear packs what it is given; it builds every quantized linear with a bias
    # (make_quant: bias=True)
    del bias, sym
    path = Path(auto_gptq.__file__).parent / "nn_modules" / "qlinear" / "qlinear_cuda_old.py"
    spec = importlib.util.spec_from_file_location("qlinear_cuda_old", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.QuantLinear(bits, GROUP, infeatures, outfeatures, True, weight_dtype=torch.float16)


def gptqmodel_linear(bits: int, infeatures: int, outfeatures: int, bias: bool, sym: bool = True):
    from gptqmodel.nn_modules.qlinear.torch import TorchLinear

    return TorchLinear(bits=bits, group_size=GROUP, sym=sym, desc_act=False, in_features=infeatures,
                       out_features=outfeatures, bias=bias, pack_dtype=torch.int32)


def to_original_format(ql, bits: int) -> None:
    """Zero points as a "gptq"-format file holds them: minus one. gptqmodel's pack leaves them as
    given (its own kernel then computes W = scales * (q - z) exactly, measured), and its loader adds
    one to a "gptq" file's zero points before its kernels run (utils/model.py,
    convert_gptq_v1_to_v2_format); so a file it saves holds them minus one, which its own
    convert_gptq_v2_to_v1_format_module makes."""
    from gptqmodel import QuantizeConfig
    from gptqmodel.utils.model import convert_gptq_v2_to_v1_format_module

    convert_gptq_v2_to_v1_format_module(module=ql, quantize_config=QuantizeConfig(bits=bits))


def _import_autogptq_root():
    """auto_gptq's __init__ imports datasets, peft, ...: find the package without running it."""
    spec = importlib.util.find_spec("auto_gptq")
    if spec is None:
        raise SystemExit("auto_gptq is not installed in this environment")
    stub = type(sys)("auto_gptq")
    stub.__file__ = spec.origin
    sys.modules.setdefault("auto_gptq", stub)


def _pack_linear(make, producer: str, tensor, bias, bits: int, sym: bool, gen):
    """One linear with exactly representable weights, packed by the producer's own code; returns
    (its state, the q and z it was given)."""
    top = 1 << bits
    out_f, in_f = tensor.shape
    groups = in_f // GROUP
    q = torch.randint(0, top, (out_f, in_f), generator=gen)
    z = torch.full((out_f, groups), top // 2) if sym else \
        torch.randint(1, top - 1, (out_f, groups), generator=gen)
    scales = ((0.5 + torch.rand(out_f, groups, generator=gen)) * (12 ** 0.5 / (top * in_f ** 0.5))).half()
    g_idx = torch.arange(in_f, dtype=torch.int32) // GROUP
    weight = (scales.float()[:, g_idx.long()] * (q - z[:, g_idx.long()]).float()).half()
    linear = torch.nn.Linear(in_f, out_f, bias=bias is not None, dtype=torch.float16)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias.to(torch.float16))
    ql = make(bits, in_f, out_f, bias is not None, sym)
    ql.pack(linear, scales.float(), z.float(), g_idx)
    if producer == "gptqmodel":
        to_original_format(ql, bits)
    state = {k: v for k, v in ql.state_dict().items() if k in ("qweight", "qzeros", "scales", "g_idx",
                                                               "bias")}
    if "g_idx" not in state:
        state["g_idx"] = g_idx
    return state, q, z


def pack_model(producer: str, dense: Path, out: Path, bits: int, sym: bool = True, seed: int = 0) -> dict:
    """Write the packed checkpoint; returns the settings written."""
    if producer == "autogptq":
        _import_autogptq_root()
    make = {"autogptq": autogptq_linear, "gptqmodel": gptqmodel_linear}[producer]
    gen = torch.Generator().manual_seed(seed)
    source = load_file(dense / "model.safetensors")
    packed, expected = {}, {}
    for name, tensor in source.items():
        stem = name.rsplit(".", 1)[0]
        if not stem.endswith(LINEARS):
            # AutoGPTQ loads and saves the model in float16; gptqmodel keeps the model's dtype
            packed[name] = tensor.to(torch.float16) if producer == "autogptq" else tensor
            continue
        if name.endswith(".bias"):
            continue  # the quantized linear holds it
        state, q, z = _pack_linear(make, producer, tensor, source.get(f"{stem}.bias"), bits, sym, gen)
        packed.update({f"{stem}.{k}": v.contiguous() for k, v in state.items() if v is not None})
        expected[f"{stem}.q"] = q.to(torch.int32).T.contiguous()  # [in, out], as qweight unpacks
        # [groups, out], before AutoGPTQ's "minus one"
        expected[f"{stem}.z"] = z.to(torch.int32).T.contiguous()
    out.mkdir(parents=True)
    save_file(packed, out / "model.safetensors", metadata={"format": "pt"})
    save_file(expected, out.parent / f"{out.name}.expected.safetensors")
    config = json.loads((dense / "config.json").read_text())
    settings = autogptq_settings(bits, sym) if producer == "autogptq" else gptqmodel_settings(bits, sym, out)
    config["quantization_config"] = settings
    if producer == "autogptq":
        config["torch_dtype"] = "float16"
        (out / "quantize_config.json").write_text(json.dumps(settings, indent=2))
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for name in COPIED:
        if (dense / name).exists():
            shutil.copyfile(dense / name, out / name)
    return settings


def autogptq_settings(bits: int, sym: bool) -> dict:
    """BaseQuantizeConfig(bits, group_size, desc_act=False, sym).to_dict() of AutoGPTQ 0.7.1
    (auto_gptq/modeling/_base.py; the class cannot be imported without its CUDA-era extras)."""
    return {"bits": bits, "group_size": GROUP, "damp_percent": 0.01, "desc_act": False,
            "static_groups": False,
            "sym": sym, "true_sequential": True, "model_name_or_path": None, "model_file_base_name": "model",
            "is_marlin_format": False, "quant_method": "gptq"}


def gptqmodel_settings(bits: int, sym: bool, out: Path) -> dict:
    """gptqmodel's own QuantizeConfig, with the meta fields its writer sets before saving."""
    from gptqmodel import QuantizeConfig
    from gptqmodel.version import __version__

    cfg = QuantizeConfig(bits=bits, group_size=GROUP, sym=sym, desc_act=False)
    cfg.meta_set_versionable(key="quantizer", value=[f"gptqmodel:{__version__}"])
    cfg.meta_set(key="uri", value="https://github.com/modelcloud/gptqmodel")
    for key in ("damp_percent", "damp_auto_increment", "static_groups", "true_sequential", "mse",
                "act_group_aware"):
        cfg.meta_set(key=key, value=getattr(cfg, key, None))
    cfg.save_pretrained(str(out))
    return cfg.to_dict()


if __name__ == "__main__":
    producer, dense, out, bits, sym = (sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]),
                                       sys.argv[5])
    print(json.dumps(pack_model(producer, dense, out, bits, sym=sym == "sym", seed=bits)))
