"""The LLaMA `config.json` and `generation_config.json` that describe the converted network.

Every value is written explicitly: LlamaConfig's defaults (bos 1, eos 2, rope_theta 10000,
no biases) are wrong for Qwen.
"""
from __future__ import annotations

from ..dtypes import NAME_OF
from ..qwen.config import QwenConfig
from ..tokens import ENDOFTEXT_ID, IM_END_ID, stop_ids

# Sampling settings copied from the source generation_config.json when present.
GENERATION_KEYS = ("do_sample", "temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens")


def llama_config(cfg: QwenConfig, dtype: str, chat: bool) -> dict:
    name = NAME_OF[dtype]
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.mlp_width,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.layer_norm_epsilon,
        # transformers 5 turns rope_theta into rope_parameters itself; writing rope_parameters with
        # rope_type "default" makes llama.cpp's converter warn about an unknown RoPE type.
        "rope_theta": cfg.rotary_emb_base,
        # Qwen's dynamic NTK and logn attention are identity up to seq_length and have no
        # LLaMA equivalent beyond it, so the exact range is what we advertise.
        "max_position_embeddings": cfg.seq_length,
        "vocab_size": cfg.vocab_rows,
        "attention_bias": True,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": True,
        "bos_token_id": ENDOFTEXT_ID,
        "eos_token_id": IM_END_ID if chat else ENDOFTEXT_ID,
        "pad_token_id": ENDOFTEXT_ID,
        "torch_dtype": name,
        "dtype": name,
        # The oldest transformers this config is written for (LLaMA with attention_bias and head_dim).
        # Without the field, transformers 4.57.3+ warns about a "Mistral regex" on every local tokenizer.
        "transformers_version": "4.45.0",
    }


def generation_config(chat: bool, source: dict | None) -> dict:
    out = {key: source[key] for key in GENERATION_KEYS if source and key in source}
    out.update({
        "bos_token_id": ENDOFTEXT_ID,
        "eos_token_id": stop_ids(chat),
        "pad_token_id": ENDOFTEXT_ID,
    })
    return dict(sorted(out.items()))
