"""Real multilingual text from packages installed with the test extras (Faker's locale word
lists, the emoji table) and the Python standard library's own source and docs."""
from __future__ import annotations

import inspect
import json
import unicodedata

LOCALES = ["en_US", "zh_CN", "zh_TW", "ru_RU", "uk_UA", "ja_JP", "ko_KR", "ar_AA", "he_IL", "el_GR", "th_TH",
           "vi_VN", "fr_FR", "de_DE", "pl_PL", "hy_AM", "fa_IR", "bn_BD", "cs_CZ", "es_ES"]


def faker_chunks(per_locale: int = 25) -> list[str]:
    from faker import Faker

    out = []
    for k, loc in enumerate(LOCALES):
        fake = Faker(loc)
        fake.seed_instance(k)
        for _ in range(per_locale):
            out.append(fake.text(max_nb_chars=300))
            out.append(f"{fake.name()}, {fake.address()}, tel. {fake.phone_number()}, {fake.date()} "
                       f"{fake.iban()}")
    return out


def emoji_chunks(size: int = 40) -> list[str]:
    import emoji

    symbols = sorted(emoji.EMOJI_DATA)
    return [" ".join(symbols[i:i + size]) for i in range(0, len(symbols), size)]


def code_chunks(limit: int = 120) -> list[str]:
    import argparse
    import collections
    import dataclasses

    out = []
    for mod in (json, argparse, collections, dataclasses, inspect):
        src = inspect.getsource(mod)
        out += [src[i:i + 1500] for i in range(0, len(src), 1500)]
    return out[:limit]


def tricky_chunks() -> list[str]:
    return [
        "e\u0301 vs é, A\u030a vs Å, \u1100\u1161 (Hangul jamo), ﬁ ligature, ＡＢＣ full-width",
        "  \t \n\n\r\n   \u3000\u00a0 mixed whitespace   ",
        "0123456789 ١٢٣٤٥ ０１２ １０２０ ²³ ⅷ 3.14159e-10 1,000,000",
        "<|endoftext|><|im_start|>system\n<|im_end|><|extra_0|><|extra_204|> <|extra_205|> <|im_sta",
        "don't I'LL we'Re THEY'VE it's",
        "\ufeffBOM and \u200bzero width\u200d joiner 👩\u200d👩\u200d👧",
        "a" * 300 + " " + "=" * 200 + "\n" * 50,
    ]


def corpus() -> list[str]:
    return faker_chunks() + emoji_chunks() + code_chunks() + tricky_chunks()


def nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)
