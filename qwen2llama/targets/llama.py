"""The LLaMA layout (`LlamaForCausalLM`): what every runtime with LLaMA support loads. Qwen's q/k/v
biases need `attention_bias: true`, which gives o_proj a bias slot too: written as zeros."""
from __future__ import annotations

from ..dtypes import NAME_OF
from ..qwen.config import QwenConfig
from ..tokens import ENDOFTEXT_ID, IM_END_ID
from .base import Target


class Llama(Target):
    name = "llama"
    model_type = "llama"
    architecture = "LlamaForCausalLM"
    label = "the LLaMA layout"
    short = "LLaMA"
    attention_biases = frozenset({"q_proj", "k_proj", "v_proj", "o_proj"})
    holds_mlp_bias = True
    modeling = "transformers.models.llama.modeling_llama"
    classes = ("LlamaConfig", "LlamaDecoderLayer", "LlamaRMSNorm", "LlamaRotaryEmbedding")

    def config(self, cfg: QwenConfig, dtype: str, chat: bool, mlp_bias: bool = False, context=None) -> dict:
        """Every value is explicit: LlamaConfig's defaults (bos 1, eos 2, rope_theta 10000, no
        biases) are wrong for Qwen. `mlp_bias`: a GPTQ source whose quantizer stored non-zero MLP
        biases (formats/gptq.py)."""
        name = NAME_OF[dtype]
        return {
            "architectures": [self.architecture],
            "model_type": self.model_type,
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
            "rope_theta": context.rope_theta if context else cfg.rotary_emb_base,
            # Qwen's dynamic NTK and logn attention are identity up to seq_length and have no
            # LLaMA equivalent beyond it, so the exact range is what we advertise.
            "max_position_embeddings": context.tokens if context else cfg.seq_length,
            "vocab_size": cfg.vocab_rows,
            "attention_bias": True,
            "attention_dropout": 0.0,
            "mlp_bias": mlp_bias,
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

    def expected_config(self, raw: dict, loaded, mlp_bias: bool) -> dict[str, tuple]:
        return {
            "model_type": (raw.get("model_type"), "llama"),
            "attention_bias": (getattr(loaded, "attention_bias", None), True),
            "mlp_bias": (getattr(loaded, "mlp_bias", False), mlp_bias),
        }


LLAMA = Llama()
