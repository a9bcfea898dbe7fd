"""Checkpoints with random weights in the exact Qwen v1 format, from the real vocabulary, for tests
and demos: dense releases (`dense`), their GPTQ Int4/Int8 forms as AutoGPTQ and gptqmodel write
them (`gptq`), and PEFT LoRA adapters for them (`adapter`)."""
from .adapter import synthesize_adapter
from .dense import load_preset, preset_names, synthesize, vocab_path

__all__ = ["load_preset", "preset_names", "synthesize", "synthesize_adapter", "vocab_path"]
