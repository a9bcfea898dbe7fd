"""Write the Hugging Face tokenizer files: tokenizer.json, vocab.json + merges.txt, the configs.

The regular tokens keep their tiktoken ranks as ids; the 208 special tokens follow at
151643..151850. Byte-level BPE spells bytes with GPT-2's printable-character alphabet.
"""
from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path

from ..tokens import (DEFAULT_SYSTEM, ENDOFTEXT, IM_END, IM_START, N_REGULAR, PATTERN, SPECIAL_IDS,
                      SPECIAL_TOKENS)
from .merges import recover_merges

# Qwen v1's chat helper (make_context): a system turn always, default text with its full stop.
CHAT_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' -}}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM + "<|im_end|>\\n' -}}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                   "special_tokens_map.json")


@cache
def byte_alphabet() -> list[str]:
    """GPT-2's bytes->unicode table: printable bytes stand for themselves, the rest are shifted
    past U+0100 so that every byte is a visible character."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


@cache
def _translation() -> dict[int, str]:
    return dict(enumerate(byte_alphabet()))


def spell(token: bytes) -> str:
    """A token's bytes in GPT-2's byte-level alphabet (latin-1 maps byte b to code point b)."""
    return token.decode("latin-1").translate(_translation())


Spelled = tuple[dict[str, int], list[tuple[str, str]]]


def _spelled(tokens: list[bytes]) -> Spelled:
    """The vocabulary {spelling: id} and the spelled merges, each token spelled once. With an
    extension (`tokens.extra`), the special tokens sit in the vocabulary at their ids too: the
    extra tokens come after them, and an added token not in the vocabulary would take the next
    free id, not its own."""
    extra = getattr(tokens, "extra", {})
    ids = [*enumerate(tokens), *((SPECIAL_IDS[t], t.encode()) for t in SPECIAL_TOKENS if extra),
           *sorted(extra.items())]
    spelling = {tok: spell(tok) for _, tok in ids}
    merges, _ = recover_merges(tokens, extra)
    return {spelling[tok]: i for i, tok in ids}, [(spelling[a], spelling[b]) for a, b in merges]


def build_tokenizer(tokens: list[bytes]):
    """A `tokenizers.Tokenizer` equivalent to Qwen's tiktoken encoder (NFC first, specials parsed),
    and the spelled vocabulary and merges it was built from."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    vocab, merges = _spelled(tokens)
    # ignore_merges: a pre-token that is itself a vocabulary entry maps straight to it, as in tiktoken.
    model = BPE(vocab=vocab, merges=merges, ignore_merges=True,
                fuse_unk=False, byte_fallback=False)
    tok = Tokenizer(model)
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tok, (vocab, merges)


def _added_token(content: str) -> dict:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": True}


def _dump(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_tokenizer_files(tokens: list[bytes], out: Path, *, chat: bool, model_max_length: int) -> dict:
    """Write every tokenizer file into `out`; returns figures for the manifest."""
    tok, (vocab, merges) = build_tokenizer(tokens)
    (out / "tokenizer.json").write_text(tok.to_str(pretty=False), encoding="utf-8")
    # id order, one line, as Hugging Face writes it
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, separators=(",", ":")),
                                    encoding="utf-8")
    with open(out / "merges.txt", "w", encoding="utf-8") as fh:
        fh.write("#version: 0.2\n")
        fh.writelines(f"{a} {b}\n" for a, b in merges)
    eos = IM_END if chat else ENDOFTEXT
    _dump(out / "tokenizer_config.json", {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": {str(SPECIAL_IDS[t]): _added_token(t) for t in SPECIAL_TOKENS},
        "additional_special_tokens": [IM_START, IM_END],
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "bos_token": None,
        "eos_token": eos,
        "pad_token": ENDOFTEXT,
        "unk_token": None,
        "errors": "replace",
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "model_max_length": model_max_length,
        "chat_template": CHAT_TEMPLATE,
    })
    _dump(out / "special_tokens_map.json", {
        "additional_special_tokens": [IM_START, IM_END],
        "eos_token": eos,
        "pad_token": ENDOFTEXT,
    })
    stats = {"regular_tokens": len(tokens), "special_tokens": len(SPECIAL_TOKENS), "merges": len(merges)}
    if getattr(tokens, "extra", None) or getattr(tokens, "skipped", None):  # only then: older records stay
        stats |= {"extra_tokens": len(tokens.extra), "extra_skipped": tokens.skipped}
    return stats


def vocab_digest(tokens: list[bytes]) -> str:
    """sha256 of the regular tokens' bytes in id order, each length-prefixed: the same for a
    qwen.tiktoken and for the vocab.json written from it (golden files use it)."""
    h = hashlib.sha256()
    for token in tokens:
        h.update(len(token).to_bytes(4, "little"))
        h.update(token)
    return h.hexdigest()


def tokens_from_vocab_json(path: Path) -> list[bytes] | None:
    """The regular tokens of a byte-level vocab.json in id order, or None when it is not one."""
    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))
        inverse = {ch: b for b, ch in enumerate(byte_alphabet())}
        by_id = {i: bytes(inverse[ch] for ch in spelled) for spelled, i in vocab.items() if i < N_REGULAR}
        return [by_id[i] for i in range(len(by_id))]
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None
