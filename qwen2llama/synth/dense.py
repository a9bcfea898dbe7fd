"""Write Qwen v1 checkpoints with random weights, at the widths of real releases.

No weights can be downloaded here, so tests, the demo and the benchmarks convert checkpoints
made by this module: the exact Qwen v1 file layout (names, shapes, safetensors or zip-format
torch `.bin`, sharded or not, both config generations) with the real `qwen.tiktoken`.
Biases and norm weights are random and far from zero/one, so a mapping error changes logits.
"""
from __future__ import annotations

import json
import shutil
from importlib import resources
from math import prod
from pathlib import Path

from ..dtypes import FLOAT_NAMES, ITEMSIZE, torch_dtype
from ..errors import InputError, OutputError
from ..qwen.config import parse_config
from ..storage import header_bytes

ASSETS = resources.files("qwen2llama") / "assets" / "qwen"
CONFIGS = resources.files("qwen2llama") / "configs"
VOCAB_FILES = ("qwen.tiktoken", "LICENSE", "NOTICE")

# generation_config.json of the releases: chat models use ChatML, base models raw text.
GENERATION = {
    True: {"chat_format": "chatml", "do_sample": True, "eos_token_id": 151643, "max_new_tokens": 512,
           "max_window_size": 6144, "pad_token_id": 151643, "repetition_penalty": 1.1, "top_k": 0,
           "top_p": 0.8},
    False: {"chat_format": "raw", "do_sample": True, "eos_token_id": 151643, "max_new_tokens": 512,
            "pad_token_id": 151643, "stop_words_ids": [[151643]], "top_k": 0, "top_p": 0.8},
}


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in CONFIGS.iterdir()
                  if p.name.endswith(".json") and p.name != "prompts.json")


# The GPTQ releases by name: the chat model's widths, quantized (see synth/gptq.py).
GPTQ_RELEASES = [f"qwen-{size}-chat-int{bits}" for size in ("1_8b", "7b", "14b", "72b") for bits in (4, 8)]


def vocab_path() -> Path:
    """The bundled qwen.tiktoken (the same file sources.bundled_vocab substitutes)."""
    from ..sources import bundled_vocab

    return bundled_vocab()


GPTQ_SUFFIXES = {"-int4": 4, "-int8": 8}  # "qwen-7b-chat-int4": the 7B chat preset as its Int4 release


def split_preset(name: str) -> tuple[str, int | None]:
    """(dense preset, GPTQ bits or None)."""
    for suffix, bits in GPTQ_SUFFIXES.items():
        if name.endswith(suffix):
            return name.removesuffix(suffix), bits
    return name, None


def load_preset(name: str) -> dict:
    """A preset by name: one of the package's configs, never a path (a name is looked up among
    preset_names(), not joined to a folder)."""
    name = split_preset(name)[0]
    known = preset_names()
    if name not in known and name.endswith("-chat"):
        name = name.removesuffix("-chat")  # "qwen-7b-chat": chat and base models share their widths
    path = CONFIGS / f"{name}.json"
    if name not in known:
        raise InputError(f"unknown preset {name!r}",
                         fix=f"choose one of: {', '.join(preset_names() + GPTQ_RELEASES)} (any with "
                             "-int4/-int8)")
    return json.loads(path.read_text())


def qwen_tensor_shapes(raw: dict) -> list[tuple[str, tuple[int, ...]]]:
    """Qwen tensor names and shapes, in the order the releases store them."""
    c = parse_config(raw, Path("config.json"))
    h, p, f, v = c.hidden_size, c.projection_size, c.mlp_width, c.vocab_rows
    out = [("transformer.wte.weight", (v, h))]
    for i in range(c.num_layers):
        pre = f"transformer.h.{i}."
        out += [(pre + "ln_1.weight", (h,)), (pre + "attn.c_attn.weight", (3 * p, h)),
                (pre + "attn.c_attn.bias", (3 * p,)), (pre + "attn.c_proj.weight", (h, p)),
                (pre + "ln_2.weight", (h,)), (pre + "mlp.w1.weight", (f, h)), (pre + "mlp.w2.weight", (f, h)),
                (pre + "mlp.c_proj.weight", (h, f))]
    return out + [("transformer.ln_f.weight", (h,)), ("lm_head.weight", (v, h))]


def _random(name: str, shape, generator, dtype):
    """Norm weights around 1, biases and weights with enough spread to matter."""
    import torch

    x = torch.randn(shape, generator=generator, dtype=torch.float32)
    if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
        x = 1.0 + 0.2 * x
    elif name.endswith("bias"):
        x = 0.2 * x
    elif name.endswith(("wte.weight",)):
        x = 0.5 * x
    else:
        x = x * (1.0 / shape[-1]) ** 0.5
    return x.to(dtype)


def _split_even(items: list, sizes: list[int], count: int) -> list[list]:
    total, target = sum(sizes), sum(sizes) / count
    groups: list[list] = [[] for _ in range(count)]
    acc = 0
    for item, size in zip(items, sizes):
        k = min(count - 1, int(acc / target)) if total else 0
        groups[k].append(item)
        acc += size
    return [g for g in groups if g]


def _write_safetensors(path: Path, entries, make) -> None:
    """Write (name, dtype, shape) tensors one at a time (memory: the largest tensor, not the shard)."""
    import torch

    with open(path, "wb") as fh:
        fh.write(header_bytes(entries))
        for name, _, shape in entries:
            fh.write(make(name, shape).contiguous().view(torch.uint8).numpy().tobytes())


def _trainer_files(out: Path, seed: int) -> None:
    """What the Hugging Face Trainer writes beside the weights of `checkpoint-N/` (and what it does
    not: no qwen.tiktoken, generation_config.json, LICENSE or NOTICE)."""
    import torch

    for name in ("qwen.tiktoken", "LICENSE", "NOTICE", "generation_config.json", "tokenizer_config.json"):
        (out / name).unlink()
    torch.save({"state": {0: {"exp_avg": torch.zeros(4)}}, "param_groups": [{"lr": 1e-5}]},
               out / "optimizer.pt")
    torch.save({"last_epoch": seed}, out / "scheduler.pt")
    torch.save({"python": seed, "cpu": torch.zeros(2, dtype=torch.uint8)}, out / "rng_state.pth")
    torch.save({"learning_rate": 1e-5}, out / "training_args.bin")
    (out / "trainer_state.json").write_text(json.dumps({"global_step": seed, "log_history": []}) + "\n")


def synthesize(out: str | Path, preset: str = "tiny", *, layers: int | None = None, fmt: str = "safetensors",
               shards: int = 1, dtype: str = "bfloat16", seed: int = 0, chat: bool | None = None,
               buffers: bool = False, trainer: bool = False, gptq: int | None = None,
               group_size: int | None = None,
               desc_act: bool = False, sym_zeros: bool = False, gptq_style: str = "autogptq",
               progress=None) -> Path:
    """Write a Qwen-format checkpoint folder; returns its path. `buffers` adds the non-weight
    buffers (rotary inv_freq) some releases carry, which the converter must drop; `trainer`
    makes it look like a Trainer's checkpoint-N/ folder (see `_trainer_files`). `gptq` (4 or 8,
    or a preset ending in -int4/-int8) writes an Int4/Int8 release instead, as `gptq_style`'s
    quantizer writes it (see synth/gptq.py; "gptqmodel" keeps `dtype` for the dense tensors)."""
    import torch

    from .gptq import GptqTensors, default_group_size, settings

    out = Path(out)
    gptq = gptq or split_preset(preset)[1]
    dtype = _checked(out, gptq, gptq_style, fmt, dtype, shards)
    raw = load_preset(preset)
    if layers is not None:
        raw["n_layer" if "n_layer" in raw else "num_hidden_layers"] = layers
    chat = ("chat" in preset or "2023-08" in preset) if chat is None else chat
    raw[next(k for k in ("torch_dtype", "params_dtype") if k in raw)] = (
        dtype if "torch_dtype" in raw else f"torch.{dtype}")
    generator = torch.Generator().manual_seed(seed)
    quant = None
    if gptq is not None:
        group = group_size or default_group_size(parse_config(raw, Path("config.json")).hidden_size)
        quant = GptqTensors(gptq, group, desc_act, sym_zeros, generator, gptq_style, FLOAT_NAMES[dtype])
        raw["quantization_config"] = settings(gptq, group, desc_act, gptq_style)
    _write_metadata(out, raw, chat, quant is not None)
    shapes = qwen_tensor_shapes(raw)
    if buffers:
        head_dim = raw.get("kv_channels", 128)
        shapes.insert(1, ("transformer.rotary_emb.inv_freq", (head_dim // 2,)))
    entries = quant.entries(shapes) if quant else [(n, FLOAT_NAMES[dtype], shape) for n, shape in shapes]
    torch_dt = getattr(torch, dtype)
    dtype_of = {n: d for n, d, _ in entries}

    def make(name, shape):
        if name.endswith("inv_freq"):
            d = shape[0] * 2
            return (1.0 / (raw["rotary_emb_base"] ** (torch.arange(0, d, 2).float() / d))).to(torch_dt)
        if quant is not None and quant.owns(name):
            t = quant.make(name, shape)
        else:
            t = _random(name, shape, generator, torch_dtype(dtype_of[name]))
        if progress:
            progress(t.numel() * t.element_size())
        return t

    _write_weights(out, entries, make, fmt, shards)
    if trainer:
        _trainer_files(out, seed)
    return out


def _checked(out: Path, gptq: int | None, gptq_style: str, fmt: str, dtype: str, shards: int) -> str:
    """The arguments checked; returns the dtype (AutoGPTQ's files are float16 whatever was asked)."""
    from .gptq import STYLES

    if gptq is not None:
        if gptq not in (4, 8):
            raise InputError(f"--gptq {gptq}: the Qwen v1 releases are Int4 and Int8",
                             fix="use --gptq 4 or 8")
        if gptq_style not in STYLES:
            raise InputError(f"unknown --gptq-style {gptq_style!r}", fix=f"use one of {', '.join(STYLES)}")
        if gptq_style == "autogptq":
            dtype = "float16"
    if fmt not in ("safetensors", "bin"):
        raise InputError(f"unknown format {fmt!r}", fix="use safetensors or bin")
    if dtype not in FLOAT_NAMES:
        raise InputError(f"unknown dtype {dtype!r}", fix=f"use one of {', '.join(FLOAT_NAMES)}")
    if shards < 1:
        raise InputError("--shards must be at least 1", fix="use --shards 1 for a single file")
    if out.exists() and any(out.iterdir()):
        raise OutputError("the output folder exists and is not empty", path=out, fix="choose a new folder")
    return dtype


def _write_metadata(out: Path, raw: dict, chat: bool, quantized: bool) -> None:
    """config.json (and quantize_config.json), generation and tokenizer configs, the vocabulary."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
    if quantized:
        (out / "quantize_config.json").write_text(json.dumps(raw["quantization_config"], indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(GENERATION[chat], indent=2, sort_keys=True) + "\n")
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"auto_map": {"AutoTokenizer": ["tokenization_qwen.QWenTokenizer", None]},
         "model_max_length": raw["seq_length"], "tokenizer_class": "QWenTokenizer"}, indent=2) + "\n")
    for name in VOCAB_FILES:
        shutil.copyfile(str(ASSETS / name), out / name)


def _write_weights(out: Path, entries: list, make, fmt: str, shards: int) -> None:
    """The weight files, split evenly into `shards`, with an index when there are several."""
    import torch

    sizes = [prod(s) * ITEMSIZE[d] for _, d, s in entries]
    groups = _split_even(entries, sizes, shards)
    ext = "safetensors" if fmt == "safetensors" else "bin"
    stem = "model" if fmt == "safetensors" else "pytorch_model"
    names = ([f"{stem}.{ext}"] if len(groups) == 1
             else [f"{stem}-{k:05d}-of-{len(groups):05d}.{ext}" for k in range(1, len(groups) + 1)])
    weight_map = {}
    for fname, group in zip(names, groups):
        if fmt == "safetensors":
            _write_safetensors(out / fname, group, make)
        else:
            torch.save({name: make(name, shape) for name, _, shape in group}, out / fname)
        weight_map.update({name: fname for name, _, _ in group})
    if len(groups) > 1:
        index = {"metadata": {"total_size": sum(sizes)}, "weight_map": dict(sorted(weight_map.items()))}
        (out / f"{stem}.{ext}.index.json").write_text(json.dumps(index, indent=2) + "\n")
