"""The Qwen2 layout (`Qwen2ForCausalLM`): Qwen v1's network module for module — q/k/v with a bias,
o_proj and the MLP without — native in the runtimes that dropped Qwen v1. It has no slot for a
bias on o_proj or the MLP, so a source that stores a non-zero one there cannot be held."""
from __future__ import annotations

from ..qwen.config import QwenConfig
from .base import Target


class Qwen2(Target):
    name = "qwen2"
    model_type = "qwen2"
    architecture = "Qwen2ForCausalLM"
    label = "the Qwen2 layout"
    short = "Qwen2"
    attention_biases = frozenset({"q_proj", "k_proj", "v_proj"})
    holds_mlp_bias = False
    modeling = "transformers.models.qwen2.modeling_qwen2"
    classes = ("Qwen2Config", "Qwen2DecoderLayer", "Qwen2RMSNorm", "Qwen2RotaryEmbedding")

    def check_holds(self, cfg: QwenConfig, path) -> None:
        if cfg.projection_size != cfg.hidden_size:
            raise self.refuse(f"kv_channels x heads is {cfg.projection_size}, hidden_size {cfg.hidden_size}; "
                              "transformers before 4.5x derives Qwen2's head size from hidden_size / heads",
                              path)

    def own_config(self, cfg: QwenConfig, mlp_bias: bool, context) -> dict:
        """As Qwen2 releases write it; no sliding window (Qwen v1 has none: `use_sliding_window`
        false, and `max_window_layers` every layer)."""
        if mlp_bias:
            raise ValueError("the Qwen2 layout has no MLP biases (the plan refuses such a source)")
        return {"use_sliding_window": False, "sliding_window": context.tokens if context else cfg.seq_length,
                "max_window_layers": cfg.num_layers}

    def expected_config(self, raw: dict, loaded, mlp_bias: bool) -> dict[str, tuple]:
        return {
            "model_type": (raw.get("model_type"), "qwen2"),
            "use_sliding_window": (getattr(loaded, "use_sliding_window", None), False),
            "attention_bias (Qwen2 has none to set)": ("attention_bias" in raw, False),
            "mlp_bias (Qwen2 has none to set)": (mlp_bias or "mlp_bias" in raw, False),
        }


QWEN2 = Qwen2()
