"""PEFT LoRA adapters trained on Qwen v1: reading one and every refusal (`read`), the mapping onto
the LLaMA layout and the merge into base weights (`mapping`), converting (`convert`) and verifying
with PEFT itself (`verify`, imported on use: it needs torch, transformers and peft)."""
from .convert import PreparedAdapter, convert_adapter_unverified, prepare_adapter, write_adapter
from .read import QwenAdapter, open_adapter

__all__ = ["PreparedAdapter", "QwenAdapter", "convert_adapter_unverified", "open_adapter", "prepare_adapter",
           "write_adapter"]
