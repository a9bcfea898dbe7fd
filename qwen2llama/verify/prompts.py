"""What verify feeds both models and both tokenizers: the prompt set, Qwen's chat rendering,
and tiktoken configured as Qwen's own tokenizer."""
from __future__ import annotations

import json
import unicodedata
from functools import lru_cache
from importlib import resources
from pathlib import Path

from ..errors import InputError
from ..tokens import DEFAULT_SYSTEM, PATTERN, SPECIAL_IDS

# Golden ids from the Qwen documentation (specials parsed).
GOLDEN = {'print("<|endoftext|>")': [1350, 445, 151643, 899], "Hello world": [9707, 1879],
          " Hello world": [21927, 1879]}
# Qwen's vocabulary has no multi-digit ASCII token; full-width "１０" and "２０" are its only
# two-numeral tokens, so they are what exposes a digit-grouping regex.
PROBES = ["1234567890 and 3.14159265", "全角数字１０２０と１２３", "  leading spaces\r\n\r\nCRLF", "x" * 40,
          "中文数字一二三123", "don't I'LL\ttabs $value"]


def load_prompts(path: Path | None, quick: bool) -> tuple[list[str], list[list[dict]]]:
    """(texts, chats) from a prompt file or the bundled set; --quick keeps 3 texts and 1 chat."""
    try:
        text = (Path(path).read_text(encoding="utf-8") if path else
                (resources.files("qwen2llama") / "configs" / "prompts.json").read_text(encoding="utf-8"))
        data = json.loads(text)
        texts, chats = list(data.get("texts", [])), list(data.get("chats", []))
        ok = all(isinstance(t, str) for t in texts) and bool(texts + chats)
    except (OSError, ValueError, AttributeError, RecursionError):
        ok = False
    if not ok:
        raise InputError("the prompt set is unreadable: expected JSON {\"texts\": [...], \"chats\": [[...]]}",
                         path=path, fix="fix the prompt file, or omit --prompts")
    return (texts[:3], chats[:1]) if quick else (texts, chats)


def qwen_chat_text(messages: list[dict]) -> str:
    """Qwen v1's chat helper (make_context), from its logic: a system turn, then each turn."""
    system = DEFAULT_SYSTEM
    if messages and messages[0]["role"] == "system":
        system, messages = messages[0]["content"], messages[1:]
    text = f"<|im_start|>system\n{system}<|im_end|>"
    for m in messages:
        text += f"\n<|im_start|>{m['role']}\n{m['content']}<|im_end|>"
    return text + "\n<|im_start|>assistant\n"


def tiktoken_encoder(vocab: Path):
    """tiktoken configured as Qwen's own tokenizer: NFC first, its regex, its specials parsed."""
    from ..tokenizer import read_tiktoken

    tokens = read_tiktoken(vocab)  # validated, and parsed once per file version
    stat = Path(vocab).stat()
    enc = _encoding(str(vocab), stat.st_size, stat.st_mtime_ns, tuple(tokens))
    return lambda text: enc.encode(unicodedata.normalize("NFC", text), allowed_special="all")


@lru_cache(maxsize=4)
def _encoding(name: str, size: int, mtime_ns: int, tokens: tuple[bytes, ...]):
    import tiktoken

    return tiktoken.Encoding("qwen", pat_str=PATTERN, mergeable_ranks={t: r for r, t in enumerate(tokens)},
                             special_tokens=SPECIAL_IDS)
