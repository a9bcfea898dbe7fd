"""Check 4, tokenizer: the folder's tokenizer gives tiktoken's ids, every special token sits at
its id, the chat template renders Qwen v1's ChatML, and generation stops where Qwen's does."""
from __future__ import annotations

import json
from pathlib import Path

from ..tokens import ENDOFTEXT_ID, IM_END_ID, SPECIAL_IDS
from .prompts import GOLDEN, PROBES, qwen_chat_text
from .report import check


def _encoders(tok, dst: Path, failures: list[str]) -> dict:
    """transformers >= 5 rebuilds Qwen2Tokenizer from vocab and merges with its own regex, while
    other runtimes read tokenizer.json as written: both must give tiktoken's ids."""
    from tokenizers import Tokenizer

    encoders = {"AutoTokenizer": lambda t: tok(t, add_special_tokens=True)["input_ids"]}
    try:
        raw = Tokenizer.from_file(str(dst / "tokenizer.json"))
        encoders["tokenizer.json"] = lambda t: raw.encode(t).ids
    except Exception as exc:
        failures.append(f"tokenizer.json cannot be loaded by the tokenizers library: {exc}"[:300])
    return encoders


def _template_failures(tok, chats) -> tuple[list[str], list[str]]:
    """(Qwen's renderings, failures where the folder's chat template differs)."""
    failures, rendered = [], []
    for messages in chats:
        want = qwen_chat_text(messages)
        try:
            got = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:
            got = f"<error: {exc}>"
        if got != want:
            failures.append(f"chat template renders {got[:80]!r}..., Qwen's helper gives {want[:80]!r}...")
        rendered.append(want)
    return rendered, failures


def _stop_failures(dst: Path, chat: bool) -> list[str]:
    """generation_config.json must stop a chat model on <|im_end|> and every model on <|endoftext|>."""
    path = dst / "generation_config.json"
    if not path.is_file():
        gen = {}
    else:
        try:
            gen = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            return [f"generation_config.json is not valid JSON ({exc})"[:200]]
        if not isinstance(gen, dict):
            return ["generation_config.json is not a JSON object"]
    eos = gen.get("eos_token_id")
    eos_ids = eos if isinstance(eos, list) else [eos]
    failures = []
    if chat and IM_END_ID not in eos_ids:
        failures.append(f"generation_config.json eos_token_id {eos!r} lacks <|im_end|> ({IM_END_ID}): "
                        "a chat reply would run past its turn")
    if ENDOFTEXT_ID not in eos_ids:
        failures.append(f"generation_config.json eos_token_id {eos!r} lacks <|endoftext|>")
    return failures


def check_tokenizer(dst: Path, encode, texts, chats, chat: bool) -> dict:
    from transformers import AutoTokenizer

    present = [name for name in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json")
               if (dst / name).is_file()]
    if not present:
        return check(False, failures=["no tokenizer files (tokenizer.json, vocab.json + merges.txt, "
                                      "tokenizer_config.json): AutoTokenizer cannot load the folder"])
    try:
        tok = AutoTokenizer.from_pretrained(dst,
                                            trust_remote_code=False)  # never a folder's code, never a prompt
    except Exception as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return check(False, failures=[f"AutoTokenizer cannot load the folder ({', '.join(present)}): "
                                      f"{first_line}"[:300]])
    rendered, failures = _template_failures(tok, chats)
    samples = list(texts) + rendered + PROBES + list(GOLDEN)
    encoders = _encoders(tok, dst, failures)
    mismatched = 0
    for text in samples:
        theirs = encode(text)
        bad = [(name, ids) for name, fn in encoders.items() if (ids := fn(text)) != theirs]
        mismatched += bool(bad)
        failures += [f"{name} ids differ on {text[:40]!r}: {ids[:12]} vs tiktoken {theirs[:12]}"
                     for name, ids in bad]
    for text, ids in GOLDEN.items():
        if encode(text) != ids:
            failures.append(f"tiktoken itself gives {encode(text)} for {text!r}, documented {ids}: "
                            "wrong vocabulary?")
    for content, token_id in SPECIAL_IDS.items():
        if tok.convert_tokens_to_ids(content) != token_id or tok(content)["input_ids"] != [token_id]:
            failures.append(f"special token {content} is not id {token_id}")
    failures += _stop_failures(dst, chat)
    return check(not failures, f"{len(samples) - mismatched}/{len(samples)} samples give tiktoken's ids",
                 samples=len(samples), mismatched_samples=mismatched,
                 special_tokens=len(SPECIAL_IDS),
                 chat_templates=len(chats), tokenizer_class=type(tok).__name__, failures=failures)
