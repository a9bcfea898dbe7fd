"""The LLaMA `generation_config.json`: Qwen's stop tokens, its sampling settings kept."""
from __future__ import annotations

from ..tokens import ENDOFTEXT_ID, stop_ids

# Sampling settings copied from the source generation_config.json when present.
GENERATION_KEYS = ("do_sample", "temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens")


def generation_config(chat: bool, source: dict | None) -> dict:
    out = {key: source[key] for key in GENERATION_KEYS if source and key in source}
    out.update({
        "bos_token_id": ENDOFTEXT_ID,
        "eos_token_id": stop_ids(chat),
        "pad_token_id": ENDOFTEXT_ID,
    })
    return dict(sorted(out.items()))
