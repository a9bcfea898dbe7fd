"""The LLaMA layout (`LlamaForCausalLM`): what every runtime with LLaMA support loads. Qwen's q/k/v
biases need `attention_bias: true`, which gives o_proj a bias slot too: written as zeros."""
from __future__ import annotations

from ..qwen.config import QwenConfig
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

    def own_config(self, cfg: QwenConfig, mlp_bias: bool, context) -> dict:
        """Qwen's q/k/v biases need attention_bias (which gives o_proj one too, written as zeros);
        `mlp_bias`: a GPTQ source whose quantizer stored non-zero MLP biases (formats/gptq.py)."""
        return {"attention_bias": True, "mlp_bias": mlp_bias, "pretraining_tp": 1}

    def expected_config(self, raw: dict, loaded, mlp_bias: bool) -> dict[str, tuple]:
        return {
            "model_type": (raw.get("model_type"), "llama"),
            "attention_bias": (getattr(loaded, "attention_bias", None), True),
            "mlp_bias": (getattr(loaded, "mlp_bias", False), mlp_bias),
        }


LLAMA = Llama()
