"""qwen.tiktoken -> Hugging Face byte-level BPE files that give tiktoken's ids."""
from .files import write_tokenizer_files
from .merges import recover_merges
from .tiktoken_file import read_tiktoken

__all__ = ["read_tiktoken", "recover_merges", "write_tokenizer_files"]
