"""Check 3, config: the output's config, as transformers reads it, describes the Qwen network.
Written independently of the targets' `config()`, so a wrong value there shows up here; only the
fields that differ between layouts (model_type, where biases are declared) are the target's."""
from __future__ import annotations

from ..qwen.config import QwenConfig
from ..reference import ntk_alpha
from ..tokens import ENDOFTEXT_ID, IM_END_ID
from .report import check


def _quantization_failures(raw: dict, source: dict | None) -> list[str]:
    """A LLaMA GPTQ folder's quantization_config against the source's settings (`source`: as
    GptqSettings.output_config() gives them, None for a dense source)."""
    got = raw.get("quantization_config")
    if got is None:
        return []  # dense weights; the tensors check says whether they are the dequantized source
    if source is None:
        return ["quantization_config is present, but the source has dense weights"]
    if not isinstance(got, dict):
        return [f"quantization_config is {type(got).__name__}, not an object"]
    keys = ("bits", "group_size", "desc_act", "sym", "quant_method")
    failures = [f"quantization_config.{k}: {got.get(k)!r}, the source has {source[k]!r}"
                for k in keys if got.get(k) != source[k]]
    if got.get("checkpoint_format", "gptq") != "gptq":
        failures.append(f"quantization_config.checkpoint_format: {got['checkpoint_format']!r}; the "
                        "packed tensors "
                        "are in AutoGPTQ's original format ('gptq': zero points stored minus one)")
    return failures


def _rope_theta(q: QwenConfig, positions) -> float:
    """The RoPE base the folder must declare: Qwen's own for a prompt of `positions` tokens when it
    declares more than seq_length on a model with dynamic NTK (--context), else Qwen's base."""
    if not (q.use_dynamic_ntk and isinstance(positions, int) and positions > q.seq_length):
        return q.rotary_emb_base
    return q.rotary_emb_base * ntk_alpha(positions, q.seq_length, True) ** (q.head_dim / (q.head_dim - 2))


def check_config(q: QwenConfig, c, raw: dict, target, quantization: dict | None = None,
                 mlp_bias: bool = False, recorded_target: str | None = None,
                 recorded_positions: int | None = None) -> dict:
    """`c` is transformers' config of the folder (of the `target` layout), `raw` its config.json as
    written, `quantization` the source's GPTQ settings (GptqSettings.output_config()), if any;
    `mlp_bias`: the source's MLP linears carry non-zero biases (a quantizer's), so the output needs
    them; `recorded_target`: the layout a golden file was recorded for, `recorded_positions` the
    --context it was recorded for (the folder must declare those positions and their RoPE base)."""
    rope = getattr(c, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(c, "rope_theta", None))
    want_theta = _rope_theta(q, recorded_positions or raw.get("max_position_embeddings"))
    expect = {
        **target.expected_config(raw, c, mlp_bias),
        "hidden_size": (c.hidden_size, q.hidden_size),
        "intermediate_size": (c.intermediate_size, q.intermediate_size_written // 2),
        "num_hidden_layers": (c.num_hidden_layers, q.num_layers),
        "num_attention_heads": (c.num_attention_heads, q.num_heads),
        "num_key_value_heads": (c.num_key_value_heads, q.num_heads),
        "head_dim": (getattr(c, "head_dim", c.hidden_size // c.num_attention_heads), q.head_dim),
        "rms_norm_eps": (c.rms_norm_eps, q.layer_norm_epsilon),
        "rope_theta (as transformers reads it)": (theta, want_theta),
        "rope_type": (rope.get("rope_type", "default"), "default"),
        "vocab_size": (c.vocab_size, q.vocab_rows),
        "tie_word_embeddings": (raw.get("tie_word_embeddings", True), False),
        "hidden_act": (c.hidden_act, "silu"),
        "bos_token_id": (raw.get("bos_token_id"), ENDOFTEXT_ID),
        "pad_token_id": (raw.get("pad_token_id"), ENDOFTEXT_ID),
    }
    if recorded_target is not None:
        expect["layout (as the golden file was recorded)"] = (target.name, recorded_target)
    if recorded_positions is not None:
        expect["max_position_embeddings (as the golden file was recorded)"] = (
            raw.get("max_position_embeddings"), recorded_positions)
    if "rope_theta" in raw:
        expect["rope_theta (as written)"] = (raw["rope_theta"], want_theta)
    failures = [f"{k}: {got!r}, expected {want!r}" for k, (got, want) in expect.items() if got != want]
    failures += _quantization_failures(raw, quantization)
    if "rope_theta" not in raw and "rope_parameters" not in raw and theta != want_theta:
        failures.append(f"config.json has no rope_theta, so {target.short}'s default 10000 applies")
    eos = raw.get("eos_token_id")
    eos_ids = eos if isinstance(eos, list) else [eos]
    if not eos_ids or any(e not in (ENDOFTEXT_ID, IM_END_ID) for e in eos_ids):
        failures.append(f"eos_token_id: {eos!r}, expected Qwen's {ENDOFTEXT_ID} and/or {IM_END_ID}")
    return check(not failures, f"{len(expect) + 1} fields", compared=len(expect) + 1, failures=failures,
                 max_position_embeddings=raw.get("max_position_embeddings"), qwen_seq_length=q.seq_length)
