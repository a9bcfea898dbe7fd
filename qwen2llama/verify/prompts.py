"""What verify feeds both models and both tokenizers: the prompt set, Qwen's chat rendering,
and tiktoken configured as Qwen's own tokenizer."""
from __future__ import annotations

import json
import unicodedata
from functools import lru_cache
from importlib import resources
from pathlib import Path

from ..smallfile import read_small_text
from ..errors import InputError
from ..qwen.config import QwenConfig
from ..tokens import DEFAULT_SYSTEM, ENDOFTEXT_ID, PATTERN, SPECIAL_IDS

# Golden ids from the Qwen documentation (specials parsed).
GOLDEN = {'print("<|endoftext|>")': [1350, 445, 151643, 899], "Hello world": [9707, 1879],
          " Hello world": [21927, 1879]}
# Qwen's vocabulary has no multi-digit ASCII token; full-width "１０" and "２０" are its only
# two-numeral tokens, so they are what exposes a digit-grouping regex.
PROBES = ["1234567890 and 3.14159265", "全角数字１０２０と１２３", "  leading spaces\r\n\r\nCRLF", "x" * 40,
          "中文数字一二三123", "don't I'LL\ttabs $value"]


# Bounds on counts, the same for recording a golden file and reading one back (verify/golden.py):
# named prompts (the seq_length-token prompt included) and greedy tokens per prompt.
MAX_PROMPTS, MAX_GREEDY = 1024, 256


def _chat_ok(chat) -> bool:
    return isinstance(chat, list) and bool(chat) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in chat)


def load_prompts(path: Path | None, quick: bool) -> tuple[list[str], list[list[dict]]]:
    """(texts, chats) from a prompt file or the bundled set; --quick keeps 3 texts and 1 chat."""
    try:
        fix = "give a prompt file (JSON), or omit --prompts"
        text = (read_small_text(path, "prompts", fix=fix) if path else
                (resources.files("qwen2llama") / "configs" / "prompts.json").read_text(encoding="utf-8"))
        data = json.loads(text)
        texts, chats = list(data.get("texts", [])), list(data.get("chats", []))
        ok = all(isinstance(t, str) for t in texts) and bool(texts + chats)
        ok = ok and len(texts) + len(chats) < MAX_PROMPTS and all(_chat_ok(c) for c in chats)
    except (OSError, ValueError, AttributeError, RecursionError):
        ok = False
    if not ok:
        raise InputError("the prompt set is unreadable: expected JSON {\"texts\": [...], "
                         "\"chats\": [[...]]}, "
                         f"at most {MAX_PROMPTS - 1} prompts, each chat a list of {{\"role\", \"content\"}} "
                         "strings", path=path, fix="fix the prompt file, or omit --prompts")
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


def tiktoken_encoder(vocab: Path, extra: Path | None = None):
    """tiktoken configured as Qwen's own tokenizer: NFC first, its regex, its specials parsed, and
    a fine-tune's extension (ranks past the specials in `vocab`, or an `extra` vocabulary file)."""
    enc = _encoding(*_version(vocab), *(_version(extra) if extra is not None else ()))
    return lambda text: enc.encode(unicodedata.normalize("NFC", text), allowed_special="all")


def _version(path: Path) -> tuple[str, int, int]:
    stat = Path(path).stat()
    return str(path), stat.st_size, stat.st_mtime_ns


@lru_cache(maxsize=4)
def _encoding(*versions):
    import tiktoken

    return tiktoken.Encoding("qwen", pat_str=PATTERN, mergeable_ranks=qwen_ranks(*versions[::3]),
                             special_tokens=SPECIAL_IDS)


def _rank_lines(path: Path) -> list[tuple[bytes, int]]:
    import base64

    text = read_small_text(path, "vocabulary", fix="use the vocabulary files that came with the checkpoint")
    lines = (line.split() for line in text.splitlines() if line.strip())
    return [(base64.b64decode(token), int(rank)) for token, rank in lines]


def qwen_ranks(vocab: str | Path, extra: str | Path | None = None) -> dict[bytes, int]:
    """Qwen's mergeable ranks, read here apart from the converter's reader (tokenizer/), so that a
    token the converter loses shows as a difference: every line of qwen.tiktoken, then each line of
    the extra file unless its token is already there or its rank is taken (by a token, or a special
    token's id), as Qwen's tokenizer adds them."""
    from ..errors import InputError

    try:
        ranks = dict(_rank_lines(Path(vocab)))
        if extra is not None:
            used = set(ranks.values()) | set(SPECIAL_IDS.values())
            for token, rank in _rank_lines(Path(extra)):
                if token not in ranks and rank not in used:
                    ranks[token] = rank
    except (OSError, ValueError) as exc:
        raise InputError(f"the vocabulary cannot be read as Qwen reads it ({exc})"[:300], path=vocab,
                         fix="use the vocabulary files that came with the checkpoint") from None
    return ranks


def extension_samples(ranks: dict[bytes, int], most: int = 64) -> list[str]:
    """Texts that use an extension's tokens (ids past the special tokens): each alone, after a
    space, and beside its neighbour, so the tokenizer check sees every one of the first `most`."""
    first = max(SPECIAL_IDS.values()) + 1
    extra = [token.decode("utf-8", errors="replace")
             for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]) if rank >= first][:most]
    return [s for k, t in enumerate(extra) for s in (t, f" {t}", f"{t} and {extra[(k + 1) % len(extra)]}.")]


LONG_PROMPT_MAX_FLOPS = 2e13  # a few minutes of float32 matmuls on 2 cores
GREEDY_MAX_BYTES = 4 << 30  # greedy continuation re-reads the model per token: small models only


def greedy_count(model_bytes: int, quick: bool, requested: int | None) -> int:
    """Greedy tokens per prompt: as requested, else a few for models small enough to re-read."""
    if requested is not None:
        return requested
    return (4 if quick else 8) if model_bytes <= GREEDY_MAX_BYTES else 0


def long_prompt_flops(cfg: QwenConfig, tokens: int) -> float:
    """Rough cost of one `tokens`-long sequence through both models: matmuls plus attention."""
    layer = 4 * cfg.hidden_size * cfg.projection_size + 3 * cfg.hidden_size * cfg.mlp_width
    per_side = 2 * tokens * (cfg.num_layers * layer + cfg.vocab_rows * cfg.hidden_size)
    per_side += 4 * cfg.num_layers * tokens * tokens * cfg.projection_size
    return 2 * per_side


def prompt_set(cfg: QwenConfig, encode, texts, chats, quick: bool, long_prompt: bool | None):
    """(named token sequences, note on the seq_length-token prompt, whether it runs)."""
    prompts = [(t[:30], encode(t)) for t in texts]
    prompts += [(f"chat {k}", encode(qwen_chat_text(m))) for k, m in enumerate(chats)]
    prompts = [(n, ids[: cfg.seq_length]) for n, ids in prompts if ids]
    note = None
    if long_prompt is None:  # automatic: on unless it would take hours on a small machine
        flops = long_prompt_flops(cfg, cfg.seq_length)
        long_prompt = not quick and flops <= LONG_PROMPT_MAX_FLOPS
        if not quick and not long_prompt:
            note = (f"skipped the {cfg.seq_length}-token prompt: about {flops / 1e12:.0f} TFLOP, hours on a "
                    "few CPU cores; pass --long-prompt to run it")
    if long_prompt:
        filler = [x for _, ids in prompts for x in ids] or [ENDOFTEXT_ID]
        prompts.append((f"{cfg.seq_length} tokens (= seq_length)",
                        (filler * (cfg.seq_length // len(filler) + 1))[: cfg.seq_length]))
    return prompts, note or ("included" if long_prompt else "not run (--quick)"), long_prompt
