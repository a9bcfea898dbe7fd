"""Qwen v1 special tokens and ids: the facts the tokenizer, the configs and verify share."""
from __future__ import annotations

N_REGULAR = 151643  # ranks 0..151642 in qwen.tiktoken
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END] + [f"<|extra_{k}|>" for k in range(205)]
SPECIAL_IDS = {tok: N_REGULAR + k for k, tok in enumerate(SPECIAL_TOKENS)}
ENDOFTEXT_ID, IM_START_ID, IM_END_ID = (SPECIAL_IDS[t] for t in (ENDOFTEXT, IM_START, IM_END))
VOCAB_SIZE = N_REGULAR + len(SPECIAL_TOKENS)  # 151851

DEFAULT_SYSTEM = "You are a helpful assistant."

# Pre-tokenisation regex of Qwen v1 (single digits, unlike cl100k's \p{N}{1,3}).
PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def stop_ids(chat: bool) -> list[int]:
    """Token ids that end generation: a chat reply ends at <|im_end|>; Qwen's own loop also
    stops at <|im_start|> and <|endoftext|>."""
    return [IM_END_ID, IM_START_ID, ENDOFTEXT_ID] if chat else [ENDOFTEXT_ID]
