"""qwen2llama: convert Qwen v1 checkpoints into the LLaMA layout, and prove the result equivalent."""
__version__ = "0.1.0"
