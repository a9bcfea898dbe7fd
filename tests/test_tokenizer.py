"""The converted tokenizer gives tiktoken's ids (configured as Qwen's own tokenizer)."""
from __future__ import annotations

import json
import shutil

import pytest
import tiktoken
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from qwen2llama.errors import InputError
from qwen2llama.synth import vocab_path
from qwen2llama.tokenizer import read_tiktoken, recover_merges
from qwen2llama.tokenizer.files import write_tokenizer_files
from qwen2llama.tokens import PATTERN, SPECIAL_IDS

from corpus import corpus, nfc

GOLDEN = [('print("<|endoftext|>")', [1350, 445, 151643, 899]), ("Hello world", [9707, 1879]),
          (" Hello world", [21927, 1879])]


@pytest.fixture(scope="module")
def tokens():
    return read_tiktoken(vocab_path())


@pytest.fixture(scope="module")
def qwen(tokens):
    """tiktoken set up as Qwen's tokenizer: NFC first, special-token text parsed."""
    enc = tiktoken.Encoding("qwen", pat_str=PATTERN, mergeable_ranks={t: r for r, t in enumerate(tokens)},
                            special_tokens=SPECIAL_IDS)
    return lambda text: enc.encode(nfc(text), allowed_special="all")


@pytest.fixture(scope="module")
def folder(tokens, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    write_tokenizer_files(tokens, out, chat=True, model_max_length=8192)
    return out


@pytest.fixture(scope="module")
def auto(folder):
    return AutoTokenizer.from_pretrained(folder)


def test_vocabulary_facts(tokens):
    assert len(tokens) == 151643
    assert vocab_path().stat().st_size == 2561218
    merges, unbuildable = recover_merges(tokens)
    assert len(merges) == 151387 and unbuildable == []
    # merge i builds the token of rank 256 + i
    for i in (0, 1000, 151386):
        assert merges[i][0] + merges[i][1] == tokens[256 + i]


def test_unbuildable_token_still_encodes_like_tiktoken():
    """A token no merge sequence can build ("xyz" with neither "xy" nor "yz" in the vocabulary)
    maps straight to its id when it is a whole pre-token, as tiktoken's shortcut does."""
    from qwen2llama.tokenizer.files import build_tokenizer

    tokens = [bytes([b]) for b in range(256)] + [b"ab", b"xyz", b" x"]
    merges, unbuildable = recover_merges(tokens)
    assert merges == [(b"a", b"b"), (b" ", b"x")] and unbuildable == [257]
    enc = tiktoken.Encoding("mini", pat_str=PATTERN, mergeable_ranks={t: r for r, t in enumerate(tokens)},
                            special_tokens={})
    tok, _ = build_tokenizer(tokens)
    for text in ("xyz", "abxyz", "xyz ab", " xyz", "xyzxyz"):
        assert tok.encode(text).ids == enc.encode(text), text
    assert tok.encode("xyz").ids == [257]


def test_golden_vectors(auto, qwen):
    for text, ids in GOLDEN:
        assert qwen(text) == ids
        assert auto(text)["input_ids"] == ids
    assert auto('print("<|endoftext|>")', split_special_tokens=True)["input_ids"] == [
        1350, 9639, 91, 8691, 723, 427, 91, 82598]


def test_corpus_matches_tiktoken(auto, folder, qwen):
    raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
    chunks = corpus()
    assert len(chunks) > 1000
    mismatches = [c[:60] for c in chunks if auto(c)["input_ids"] != qwen(c) or raw.encode(c).ids != qwen(c)]
    assert mismatches == []
    for chunk in chunks:
        assert auto.decode(auto(chunk)["input_ids"]) == nfc(chunk)


def test_vocab_and_merges_alone_give_same_ids(folder, qwen, tmp_path):
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(folder / name, tmp_path / name)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert type(tok).__name__.startswith("Qwen2Tokenizer")
    for chunk in corpus()[::7]:
        assert tok(chunk)["input_ids"] == qwen(chunk)


def test_special_tokens(auto, folder):
    assert len(SPECIAL_IDS) == 208
    for content, token_id in SPECIAL_IDS.items():
        assert auto.convert_tokens_to_ids(content) == token_id
        assert auto(content)["input_ids"] == [token_id]
    assert auto.decode([151643, 9707], skip_special_tokens=True) == "Hello"
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["eos_token"] == "<|im_end|>" and config["pad_token"] == "<|endoftext|>"


def qwen_make_context(query, history=(), system="You are a helpful assistant."):
    """Qwen v1's chat helper, from its published logic."""
    im_start, im_end = "<|im_start|>", "<|im_end|>"
    raw = f"{im_start}system\n{system}{im_end}"
    for q, r in history:
        raw += f"\n{im_start}user\n{q}{im_end}\n{im_start}assistant\n{r}{im_end}"
    return raw + f"\n{im_start}user\n{query}{im_end}\n{im_start}assistant\n"


@pytest.mark.parametrize("system", [None, "You are a pirate."])
@pytest.mark.parametrize("history", [[], [("Hi", "Hello! How can I help?")], [("1+1?", "2"), ("2+2?", "4")]])
def test_chat_template_is_qwen_chatml(auto, system, history):
    messages = [{"role": "system", "content": system}] if system else []
    for q, r in history:
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": r}]
    messages.append({"role": "user", "content": "你好，世界 123"})
    want = qwen_make_context("你好，世界 123", history, system or "You are a helpful assistant.")
    assert auto.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == want


FRAGMENTS = st.sampled_from(["<|", "|>", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|extra_7|>", "im_",
                             "'s",
                             "'LL", "\r\n", "\n\n", "  ", "\t", "123", "0", "٣", "é", "e\u0301", "中文", "🤖",
                             "\u200d"])
TEXT = st.lists(st.one_of(st.text(max_size=12), st.from_regex(r"[0-9 \n\t]{1,12}", fullmatch=True),
                          FRAGMENTS),
                max_size=12).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(TEXT)
def test_random_text_matches_tiktoken(auto, qwen, text):
    assert auto(text)["input_ids"] == qwen(text)
    assert auto.decode(auto(text)["input_ids"]) == nfc(text).encode("utf-8",
                                                                    "replace").decode("utf-8", "replace")


@pytest.mark.parametrize("content,error", [
    (b"!!!! 0\n", "bad base64"),
    (b"YQ== 0\nYQ== 1\n", "already has rank"),
    (b"YQ== 0\nYg== 0\n", "rank 0 appears twice"),
    (b"YQ== 0\nYg== 2\n", "rank 1 is missing"),
    (b"YQ== 0\n", "single-byte tokens missing"),
    (b"YQ==\n", "expected 'base64 rank'"),
])
def test_broken_vocabulary_is_named(tmp_path, content, error):
    path = tmp_path / "qwen.tiktoken"
    path.write_bytes(content)
    with pytest.raises(InputError, match=error) as info:
        read_tiktoken(path)
    assert str(path) in str(info.value)


def test_tokenizer_command_writes_files(tmp_path):
    from typer.testing import CliRunner

    from qwen2llama.cli import app

    result = CliRunner().invoke(app, ["tokenizer", str(vocab_path()), str(tmp_path / "tok"), "--kind",
                                      "base"])
    assert result.exit_code == 0, result.output
    assert "151387 merges" in result.output
    config = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
    assert config["eos_token"] == "<|endoftext|>"


@pytest.mark.slow
def test_tokenizer_cache_gives_the_same_files(tmp_path, monkeypatch):
    """A warm cache skips the build and writes the same bytes; a damaged entry is rebuilt; `off`
    builds every time."""
    import qwen2llama.convert as convert_mod
    from qwen2llama.synth import synthesize
    from qwen2llama.tokenizer import cache

    src = synthesize(tmp_path / "s", "tiny")
    monkeypatch.setenv(cache.ENV, str(tmp_path / "cache"))
    convert_mod.convert(src, tmp_path / "cold")
    (entry,) = (tmp_path / "cache").iterdir()
    real_job = convert_mod.TokenizerJob

    class NoBuild:
        def __init__(self, *args):
            raise AssertionError("the tokenizer was built although the cache holds it")

    monkeypatch.setattr(convert_mod, "TokenizerJob", NoBuild)
    convert_mod.convert(src, tmp_path / "warm")
    monkeypatch.setattr(convert_mod, "TokenizerJob", real_job)
    (entry / "merges.txt").write_text("#version: 0.2\n")
    convert_mod.convert(src, tmp_path / "damaged")
    monkeypatch.setenv(cache.ENV, "off")
    convert_mod.convert(src, tmp_path / "off")
    for name in sorted(p.name for p in (tmp_path / "cold").iterdir()):
        data = (tmp_path / "cold" / name).read_bytes()
        assert all((tmp_path / other / name).read_bytes() == data
                   for other in ("warm", "damaged", "off")), name
    assert (entry / "merges.txt").read_bytes() == (tmp_path / "cold" / "merges.txt").read_bytes()
