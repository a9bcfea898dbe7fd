"""What a target is: the questions the plan, the writer, verify and the adapter ask of an output
layout. Each target module subclasses `Target` and fills them in."""
from __future__ import annotations

from functools import cached_property

from ..dtypes import NAME_OF
from ..errors import InputError
from ..qwen.config import QwenConfig
from ..tokens import ENDOFTEXT_ID, IM_END_ID


class Target:
    name: str  # --target value
    model_type: str  # config.json model_type (how verify recognises a folder's target)
    architecture: str  # config.json architectures[0]: the transformers class a runtime loads
    label: str  # for messages: "the LLaMA layout"
    short: str  # for messages: "LLaMA"
    tokenizer_class = "Qwen2Tokenizer"  # both layouts load the Qwen v1 vocabulary as Qwen2's BPE
    attention_biases: frozenset[str]  # attention modules with a bias ("q_proj", ..., "o_proj")
    holds_mlp_bias: bool  # config.json can give the MLP linears biases (mlp_bias)
    modeling: str  # the transformers module with the classes below
    classes: tuple[str, str, str, str]  # config, decoder layer, RMSNorm, rotary embedding

    def has_bias(self, llama_module: str, mlp_bias: bool = False) -> bool:
        """Whether the output module (a layout name: "model.layers.{i}.self_attn.o_proj") carries
        a bias; `mlp_bias`: the source's MLP biases are kept (formats/gptq.py)."""
        part, _, proj = llama_module.rpartition(".")
        if part.endswith("self_attn"):
            return proj in self.attention_biases
        return part.endswith("mlp") and mlp_bias and self.holds_mlp_bias

    def check_holds(self, cfg: QwenConfig, path) -> None:
        """Bad input when this layout cannot express the source's network (the default: it can)."""

    def refuse(self, what: str, path, fix: str | None = None) -> InputError:
        other = next(n for n in ("llama", "qwen2") if n != self.name)
        return InputError(f"--target {self.name}: {what}", path=path,
                          fix=fix or f"convert with --target {other}")

    def config(self, cfg: QwenConfig, dtype: str, chat: bool, mlp_bias: bool = False, context=None) -> dict:
        """config.json: every value explicit (the layouts' defaults — bos 1, eos 2, rope_theta
        10000, no biases — are wrong for Qwen), the fields both layouts share here and the
        layout's own from `own_config`. `context` (context.Context): --context T's rope_theta and
        length; without it, Qwen's seq_length: up to it dynamic NTK and logn attention are the
        identity, so the exact range is what is advertised."""
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
            "max_position_embeddings": context.tokens if context else cfg.seq_length,
            "vocab_size": cfg.vocab_rows,
            "attention_dropout": 0.0,
            "tie_word_embeddings": False,
            "initializer_range": 0.02,
            "use_cache": True,
            "bos_token_id": ENDOFTEXT_ID,
            "eos_token_id": IM_END_ID if chat else ENDOFTEXT_ID,
            "pad_token_id": ENDOFTEXT_ID,
            "torch_dtype": name,
            "dtype": name,
            # The oldest transformers this config is written for (head_dim, attention_bias).
            # Without the field, transformers 4.57.3+ warns about a "Mistral regex" on every local tokenizer.
            "transformers_version": "4.45.0",
            **self.own_config(cfg, mlp_bias, context),
        }

    def own_config(self, cfg: QwenConfig, mlp_bias: bool, context) -> dict:
        """The layout's own config.json fields."""
        raise NotImplementedError

    def expected_config(self, raw: dict, loaded, mlp_bias: bool) -> dict[str, tuple]:
        """Target-specific fields of verify's config check: name -> (got, expected)."""
        raise NotImplementedError

    @cached_property
    def transformers(self):
        """(config class, decoder layer class, RMSNorm class, rotary embedding class)."""
        import importlib

        module = importlib.import_module(self.modeling)
        return tuple(getattr(module, name) for name in self.classes)

    def model_class(self):
        """The transformers causal-LM class of this layout (PEFT's adapter verify loads it)."""
        import transformers

        return getattr(transformers, self.architecture)
