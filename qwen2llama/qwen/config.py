"""Qwen v1 `config.json`, both generations of field names, normalised into one record.

The August 2023 release (Qwen-7B-Chat before 2023-09-25) used Megatron-style names
(`n_embd`, `n_layer`, `ffn_hidden_size`, ...); v1.1 and later use Hugging Face names.
Every other module reads only `QwenConfig`, never the raw JSON.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..smallfile import read_small_text

# meaning -> (v1.1 name, original name). The first name found wins; both present and
# different is an error, since we cannot know which one the weights were trained with.
FIELD_NAMES: dict[str, tuple[str, ...]] = {
    "hidden_size": ("hidden_size", "n_embd"),
    "num_layers": ("num_hidden_layers", "n_layer"),
    "num_heads": ("num_attention_heads", "n_head"),
    "intermediate_size_written": ("intermediate_size", "ffn_hidden_size"),
    "vocab_rows": ("padded_vocab_size", "vocab_size"),
    "max_position_field": ("max_position_embeddings", "n_positions"),
}


@dataclass(frozen=True)
class QwenConfig:
    """The Qwen v1 hyper-parameters the conversion and the reference forward use."""

    generation: str  # "v1.1" or "original"
    hidden_size: int
    num_layers: int
    num_heads: int
    head_dim: int  # kv_channels
    intermediate_size_written: int  # Qwen writes twice the real MLP width
    vocab_rows: int
    seq_length: int
    max_position_field: int | None
    layer_norm_epsilon: float
    rotary_emb_base: float
    use_dynamic_ntk: bool
    use_logn_attn: bool
    dtype: str | None  # what the config says the weights are ("bfloat16", ...), if anything

    def __post_init__(self):
        """The same bounds parse_config checks, for configs built from elsewhere (a golden file's
        header): a ValueError naming the field."""
        for field, name in BOUNDED.items():
            value = getattr(self, field)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or not 0 < value <= MOST[name]:
                raise ValueError(f"{field} {value!r} is not a positive number of at most "
                                 f"{MOST[name]:g}"[:200])

    @property
    def mlp_width(self) -> int:
        """F: the width of w1/w2, half of what the config calls intermediate size."""
        return self.intermediate_size_written // 2

    @property
    def projection_size(self) -> int:
        return self.num_heads * self.head_dim

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pick(raw: dict, meaning: str, path: Path, required: bool = True):
    names = FIELD_NAMES[meaning]
    found = {n: raw[n] for n in names if n in raw and raw[n] is not None}
    if meaning == "vocab_rows" and len(found) == 2:
        # The original generation writes both; the padded one is the embedding height.
        return found["padded_vocab_size"]
    values = set(map(json.dumps, found.values()))
    if len(values) > 1:
        raise InputError(
            f"config.json gives two different values for {meaning}: {found}",
            path=path,
            fix="keep only the field that matches the weights",
        )
    if found:
        return next(iter(found.values()))
    if required:
        raise InputError(
            f"config.json has no {meaning} (looked for {' / '.join(names)})",
            path=path,
            fix="use the config.json that came with the checkpoint",
        )
    return None


CONFIG_FIX = "use the config.json that came with the checkpoint"
# QwenConfig fields -> their name in MOST (QwenConfig.__post_init__ checks a config built elsewhere)
BOUNDED = {"hidden_size": "hidden_size", "num_layers": "num_hidden_layers",
           "num_heads": "num_attention_heads", "head_dim": "kv_channels",
           "intermediate_size_written": "intermediate_size",
           "vocab_rows": "vocab_size", "seq_length": "seq_length", "layer_norm_epsilon": "layer_norm_epsilon",
           "rotary_emb_base": "rotary_emb_base"}
# The largest value each size may take: far above every Qwen v1 release (72B: 80 layers, hidden
# 8192, 64 heads, vocab 152064), low enough that nothing sized by them exhausts memory before the
# weights are checked against them. Checked once, here.
MOST = {"hidden_size": 1 << 16, "num_attention_heads": 1 << 10, "kv_channels": 1 << 12,
        "intermediate_size": 1 << 20, "num_hidden_layers": 1 << 10, "vocab_size": 1 << 22,
        "seq_length": 1 << 20, "layer_norm_epsilon": 1.0, "rotary_emb_base": 1e12}


def _positive_int(value, name: str, path: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MOST[name]:
        raise InputError(f"config.json: {name} must be a positive integer of at most {MOST[name]}, got "
                         f"{value!r}"[:300], path=path, fix=CONFIG_FIX)
    return value


def _positive_float(value, name: str, path: Path) -> float:
    """A positive, finite number within its bound (1e400 parses as infinity: never written on)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MOST[name]:
        raise InputError(f"config.json: {name} must be a positive finite number of at most "
                         f"{MOST[name]:g}, got {value!r}"[:300], path=path, fix=CONFIG_FIX)
    return float(value)


MULTIMODAL = {"visual": "Qwen-VL (a vision tower)", "audio": "Qwen-Audio (an audio encoder)"}


def multimodal(what: str, why: str, path) -> InputError:
    """The refusal of a multimodal Qwen checkpoint, by name (not "unknown tensor")."""
    return InputError(f"this is {what} checkpoint ({why}): the encoder and its adapter into the language "
                      "model have no place in a text-only LLaMA or Qwen2 layout", path=path,
                      fix="convert a text-only Qwen v1 model; a multimodal one needs a runtime made for it")


def _dtype_of(raw: dict) -> str | None:
    for key in ("torch_dtype", "dtype", "params_dtype"):
        if isinstance(raw.get(key), str):
            return raw[key].removeprefix("torch.")
    if raw.get("bf16"):
        return "bfloat16"
    if raw.get("fp16"):
        return "float16"
    return None


def _check_layout_fields(raw: dict, path: Path) -> None:
    """Settings no Qwen v1 release changes, which the LLaMA layout cannot express otherwise."""
    rotary_pct = raw.get("rotary_pct", 1.0)
    if rotary_pct != 1.0:
        raise InputError(f"config.json: rotary_pct={rotary_pct}; the LLaMA layout rotates the whole head",
                         path=path, fix="only rotary_pct 1.0 (every Qwen v1 release) can be converted")
    if raw.get("tie_word_embeddings"):
        raise InputError("config.json: tie_word_embeddings is true; Qwen v1 releases keep a separate lm_head",
                         path=path, fix="check that this is an unmodified Qwen v1 checkpoint")
    base = raw.get("rotary_emb_base", 10000)
    if "rope_theta" in raw and raw["rope_theta"] != base and "rotary_emb_base" in raw:
        raise InputError(f"config.json: rotary_emb_base={base} but rope_theta={raw['rope_theta']}",
                         path=path, fix="keep only the value the model was trained with")


def parse_config(raw: Any, path: Path) -> QwenConfig:
    """Normalise a parsed config.json; raise InputError naming the field on anything unusable."""
    if not isinstance(raw, dict):
        raise InputError("config.json is not a JSON object", path=path,
                         fix="use the checkpoint's config.json")
    archs = raw.get("architectures") or []
    if raw.get("model_type") not in (None, "qwen") or (archs and "QWenLMHeadModel" not in archs):
        raise InputError(
            f"not a Qwen v1 config (model_type={raw.get('model_type')!r}, architectures={archs})",
            path=path,
            fix="qwen2llama converts Qwen v1 (QWenLMHeadModel); Qwen1.5/Qwen2 already load as Qwen2 in "
                "transformers",
        )
    for block, what in MULTIMODAL.items():
        if isinstance(raw.get(block), dict):
            raise multimodal(what, f"config.json has a `{block}` block", path)
    generation = "original" if "n_embd" in raw or "n_layer" in raw else "v1.1"
    hidden = _positive_int(_pick(raw, "hidden_size", path), "hidden_size", path)
    heads = _positive_int(_pick(raw, "num_heads", path), "num_attention_heads", path)
    head_dim = raw.get("kv_channels", hidden // heads if hidden % heads == 0 else None)
    head_dim = _positive_int(head_dim, "kv_channels", path)
    if head_dim % 2:
        raise InputError(f"config.json: kv_channels {head_dim} is odd; rotary embeddings need an "
                         "even head size",
                         path=path, fix="check the config against the weights")
    inter = _positive_int(_pick(raw, "intermediate_size_written", path), "intermediate_size", path)
    if inter % 2:
        raise InputError(f"config.json: intermediate_size {inter} is odd; Qwen writes twice the MLP width",
                         path=path, fix="check the config against the weights")
    _check_layout_fields(raw, path)
    base = raw.get("rotary_emb_base", 10000)
    seq_length = _positive_int(raw.get("seq_length"), "seq_length", path)
    max_pos = _pick(raw, "max_position_field", path, required=False)
    return QwenConfig(
        generation=generation,
        hidden_size=hidden,
        num_layers=_positive_int(_pick(raw, "num_layers", path), "num_hidden_layers", path),
        num_heads=heads,
        head_dim=head_dim,
        intermediate_size_written=inter,
        vocab_rows=_positive_int(_pick(raw, "vocab_rows", path), "vocab_size", path),
        seq_length=seq_length,
        max_position_field=max_pos if isinstance(max_pos, int) else None,
        layer_norm_epsilon=_positive_float(raw.get("layer_norm_epsilon", 1e-6), "layer_norm_epsilon", path),
        rotary_emb_base=_positive_float(base, "rotary_emb_base", path),
        use_dynamic_ntk=bool(raw.get("use_dynamic_ntk", False)),
        use_logn_attn=bool(raw.get("use_logn_attn", False)),
        dtype=_dtype_of(raw),
    )


def read_raw_config(folder: Path) -> Any:
    """config.json as parsed JSON, or bad input naming the file."""
    path = folder / "config.json"
    if not path.is_file():
        raise InputError("no config.json in the checkpoint folder", path=path,
                         fix="point SRC at the folder that holds config.json and the weights")
    try:
        raw = json.loads(read_small_text(path, "config", fix="restore the checkpoint's config.json"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise InputError(f"config.json is not valid JSON ({exc})", path=path,
                         fix="restore the config.json that came with the checkpoint") from None
    return raw
