"""Extended vocabularies, exactly: a fine-tune's new tokens, by Qwen's own mechanism (an
`extra_vocab_file` named in tokenizer_config.json) or as Qwen's `save_vocabulary` writes them (into
qwen.tiktoken from id 151851 up), convert to tokenizer files that give the ids of tiktoken set up
as Qwen's tokenizer sets it up; verify reads the extension apart from the converter, so a dropped
token fails it."""
from __future__ import annotations

import base64
import json
import os
import shutil
import unicodedata
from pathlib import Path

import pytest

from qwen2llama.synth import synthesize
from qwen2llama.tokens import PATTERN, SPECIAL_IDS, VOCAB_SIZE

from defects import edit_json
from helpers import bad, cli

EXTRA = "qwen_extra.tiktoken"


def _base_ranks(vocab: Path) -> dict[bytes, int]:
    return {base64.b64decode(t): int(r) for t, r in (line.split() for line in vocab.read_text().splitlines())}


def new_tokens(base: dict[bytes, int], count: int, buildable: bool = True) -> list[bytes]:
    """New tokens as Qwen's example builds them: each a join of two tokens the vocabulary has that
    BPE merges into two parts (words, Chinese phrases, code); `buildable=False`: joins it cannot."""
    from qwen2llama.tokenizer.merges import _bpe_parts

    words = [" quantum", " llama", " Qwen", "大模型", " tensor", "转换", " verify", "_proj", " shard", "微调",
             " golden", " bias", " rope", "词表", " merge", " layout", " converter", "数据", " model", " run"]
    out = []
    for a in words:
        for b in words:
            token = (a + b.strip()).encode()
            if token in base or token in out or len(out) >= count:
                continue
            ranks = {**base, **{t: len(base) + k for k, t in enumerate(out)}}
            if (len(_bpe_parts(token, ranks, 10**9)) == 2) == buildable:
                out.append(token)
    return out


def qwen_encoder(vocab: Path, extra: Path | None):
    """tiktoken as Qwen's QWenTokenizer builds it (written here for the test): the base ranks, each
    extra line unless its token exists or its id is taken, specials at 151643.., NFC first."""
    import tiktoken

    ranks = _base_ranks(vocab)
    if extra is not None:
        used = set(ranks.values()) | set(SPECIAL_IDS.values())
        for token, rank in ((base64.b64decode(t), int(r)) for t, r in
                            (line.split() for line in extra.read_text().splitlines())):
            if token not in ranks and rank not in used:
                ranks[token] = rank
    enc = tiktoken.Encoding("qwen-test", pat_str=PATTERN, mergeable_ranks=ranks, special_tokens=SPECIAL_IDS)
    return lambda text: enc.encode(unicodedata.normalize("NFC", text), allowed_special="all")


def lines(pairs) -> str:
    return "".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in pairs)


@pytest.fixture(scope="module")
def extended(tmp_path_factory):
    """(base checkpoint, Form A folder, Form B folder, the new tokens)."""
    root = tmp_path_factory.mktemp("vocab")
    src = synthesize(root / "base", "tiny", layers=1, dtype="float32", seed=5)
    base = _base_ranks(src / "qwen.tiktoken")
    tokens = new_tokens(base, 60)
    kept = [(t, VOCAB_SIZE + k) for k, t in enumerate(tokens)]
    existing = next(t for t in base if len(t) > 3)
    form_a = shutil.copytree(src, root / "form-a")
    # Qwen skips a token it has and an id a special token uses, wherever they stand in the file
    (form_a / EXTRA).write_text(lines(kept[:30] + [(existing, 200000), (b"skipped-id", 151700)] + kept[30:]))
    edit_json(form_a, "tokenizer_config.json", lambda c: c.__setitem__("extra_vocab_file", EXTRA))
    form_b = shutil.copytree(src, root / "form-b")
    with open(form_b / "qwen.tiktoken", "a") as fh:
        fh.write(lines(kept))
    return src, form_a, form_b, tokens


def texts_using(tokens: list[bytes]) -> list[str]:
    words = [t.decode() for t in tokens]
    return (list(words) + [f"The{w} and{words[k - 1]} meet." for k, w in enumerate(words)]
            + ["".join(words[:6]), "x" + words[7] + "y", words[3] + "\n" + words[4]])


@pytest.mark.slow
@pytest.mark.parametrize("form", ["extra_vocab_file", "saved into qwen.tiktoken"])
def test_an_extended_vocabulary_converts_to_qwens_ids(extended, tmp_path, form):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    src, form_a, form_b, tokens = extended
    folder = form_a if form == "extra_vocab_file" else form_b
    out = tmp_path / "out"
    result = cli("convert", folder, out, "--quick")
    assert result.exit_code == 0, result.output
    record = json.loads((out / "conversion.json").read_text())
    assert record["tokenizer"]["extra_tokens"] == len(tokens)
    assert len(record["tokenizer"]["extra_skipped"]) == (2 if form == "extra_vocab_file" else 0)
    want = qwen_encoder(folder / "qwen.tiktoken", folder / EXTRA if form == "extra_vocab_file" else None)
    auto = AutoTokenizer.from_pretrained(out)
    raw = Tokenizer.from_file(str(out / "tokenizer.json"))
    texts = texts_using(tokens)
    assert len(texts) >= 50
    used = set()
    for text in texts:
        ids = want(text)
        used |= {i for i in ids if i >= VOCAB_SIZE}
        assert auto(text)["input_ids"] == ids, text
        assert raw.encode(text).ids == ids, text
        assert auto.decode(ids) == text
    # the texts exercise the extension: Qwen's own encoding of them uses most new tokens (a join
    # that BPE forms can still lose, in a longer word, to a merge that ranks lower)
    assert len(used) >= 40 and used <= set(range(VOCAB_SIZE, VOCAB_SIZE + len(tokens)))
    assert all(auto.convert_tokens_to_ids(t) == i for t, i in SPECIAL_IDS.items())  # specials stay
    merges = (out / "merges.txt").read_text().splitlines()
    assert len(merges) - 1 == record["tokenizer"]["merges"]


@pytest.mark.slow
def test_verify_reads_the_extension_itself_and_fails_a_dropped_token(extended, tmp_path):
    from defects import rehash

    _, form_a, _, tokens = extended
    out = tmp_path / "out"
    assert cli("convert", form_a, out, "--quick", "--no-verify").exit_code == 0
    from qwen2llama.tokenizer.files import spell

    dropped, spelled = tokens[17].decode(), spell(tokens[17])

    def drop(tok):
        del tok["model"]["vocab"][spelled]
        tok["model"]["merges"] = [m for m in tok["model"]["merges"]
                                  if "".join(m if isinstance(m, list) else m.split(" ")) != spelled]

    edit_json(out, "tokenizer.json", drop)
    edit_json(out, "vocab.json", lambda v: v.pop(spelled))
    (out / "merges.txt").write_text("\n".join(line for line in (out / "merges.txt").read_text().splitlines()
                                              if line.replace(" ", "") != spelled) + "\n")
    rehash(out)
    result = cli("verify", form_a, out, "--quick")
    assert result.exit_code == 1 and "tokenizer" in result.output and "FAIL" in result.output, result.output
    assert dropped.strip()[:10] in result.output or "ids differ" in result.output


def test_extensions_that_qwen_could_not_load_or_the_embedding_cannot_hold_are_refused(extended, tmp_path):
    src, _, _, tokens = extended
    gap = shutil.copytree(src, tmp_path / "gap")
    (gap / EXTRA).write_text(lines([(tokens[0], VOCAB_SIZE), (tokens[1], VOCAB_SIZE + 2)]))
    edit_json(gap, "tokenizer_config.json", lambda c: c.__setitem__("extra_vocab_file", EXTRA))
    bad("convert", gap, tmp_path / "o1", needle="without one")
    wide = shutil.copytree(src, tmp_path / "wide")  # tiny's embedding has 151936 rows: 85 extra ids
    many = [(f"tok{k}zz".encode(), VOCAB_SIZE + k) for k in range(90)]
    (wide / EXTRA).write_text(lines(many))
    edit_json(wide, "tokenizer_config.json", lambda c: c.__setitem__("extra_vocab_file", EXTRA))
    bad("convert", wide, tmp_path / "o2", needle="the embedding has 151936 rows")
    whole = shutil.copytree(src, tmp_path / "whole")  # tokens only a whole-word match gives
    unbuildable = new_tokens(_base_ranks(src / "qwen.tiktoken"), 3, buildable=False)
    (whole / EXTRA).write_text(lines([(t, VOCAB_SIZE + k) for k, t in enumerate(unbuildable)]))
    edit_json(whole, "tokenizer_config.json", lambda c: c.__setitem__("extra_vocab_file", EXTRA))
    bad("convert", whole, tmp_path / "o3", needle="3 extra tokens no BPE merge forms")
    assert not any((tmp_path / f"o{k}").exists() for k in (1, 2, 3))


@pytest.mark.parametrize("where", ["missing", "outside the folder", "a path", "a FIFO", "a number",
                                   "a link outside"])
def test_extra_vocab_file_must_be_a_file_in_the_folder(extended, tmp_path, where):
    src, _, _, tokens = extended
    folder = shutil.copytree(src, tmp_path / "src")
    outside = tmp_path / "outside.tiktoken"
    outside.write_text(lines([(tokens[0], VOCAB_SIZE)]))
    name = {"missing": "nope.tiktoken", "outside the folder": "../outside.tiktoken", "a path": str(outside),
            "a FIFO": "fifo.tiktoken", "a number": 5, "a link outside": "link.tiktoken"}[where]
    if where == "a FIFO":
        os.mkfifo(folder / "fifo.tiktoken")
    if where == "a link outside":
        os.symlink(outside, folder / "link.tiktoken")
    edit_json(folder, "tokenizer_config.json", lambda c: c.__setitem__("extra_vocab_file", name))
    bad("convert", folder, tmp_path / "out", needle="extra_vocab_file")
    bad("inspect", folder, needle="extra_vocab_file")
    assert not (tmp_path / "out").exists()


def test_golden_files_refuse_an_extended_vocabulary_rather_than_drop_it(extended, tmp_path):
    _, form_a, form_b, _ = extended
    bad("golden", form_a, tmp_path / "g1", needle="extended vocabulary")
    bad("golden", form_b, tmp_path / "g2", needle="extended vocabulary")
