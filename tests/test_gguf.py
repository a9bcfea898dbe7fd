"""Our output goes through llama.cpp's own convert_hf_to_gguf.py unmodified (with the transformers
release its requirements pin), without a warning, and the GGUF says what it should: llama
architecture, qwen2 pre-tokenizer, every merge, typed special tokens, biases, padded vocabulary
rows, rope base, chat template."""
from __future__ import annotations

import json
import os

import pytest

from qwen2llama.convert import convert
from qwen2llama.synth import synthesize
from qwen2llama.tokens import SPECIAL_IDS

import llamacpp_source

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def converter():
    try:
        llamacpp_source.overlay()
        return llamacpp_source.converter_dir()
    except Exception as exc:  # no registry access
        if os.environ.get("CI"):
            raise
        pytest.skip(f"cannot fetch llama-cpp-python {llamacpp_source.VERSION} from PyPI: {exc}")


@pytest.fixture(scope="module")
def gguf(converter, workdir):
    """A 72B-style (rope base 1e6, 152064 rows) chat conversion, through llama.cpp. Its context is
    512 like a real model's few thousand: llama.cpp tokenizes a 181-token probe with our tokenizer,
    and the tiny preset's 64 would make transformers warn about model_max_length."""
    src = synthesize(workdir / "gguf-qwen", "tiny-72b-style", shards=2, seed=5)
    config = json.loads((src / "config.json").read_text())
    config.update(seq_length=512, max_position_embeddings=512)
    (src / "config.json").write_text(json.dumps(config))
    out = workdir / "gguf-src"
    convert(src, out, kind="chat")
    result = llamacpp_source.convert_to_gguf(out, workdir / "model.gguf")
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in (result.stdout + result.stderr).splitlines()
                if line.startswith(("WARNING", "ERROR", "[transformers]")) or "Warning" in line]
    assert warnings == []
    return llamacpp_source.gguf_reader(workdir / "model.gguf")


def field(reader, key):
    return reader.fields[key].contents()


def test_architecture_and_hyperparameters(gguf):
    assert field(gguf, "general.architecture") == "llama"
    assert field(gguf, "llama.block_count") == 2
    assert field(gguf, "llama.embedding_length") == 64
    assert field(gguf, "llama.feed_forward_length") == 128
    assert field(gguf, "llama.attention.head_count_kv") == 4
    assert field(gguf, "llama.rope.freq_base") == 1e6
    assert field(gguf, "llama.vocab_size") == 152064
    assert field(gguf, "llama.context_length") == 512


def test_tokenizer(gguf):
    assert field(gguf, "tokenizer.ggml.model") == "gpt2"
    assert field(gguf, "tokenizer.ggml.pre") == "qwen2"
    assert len(gguf.fields["tokenizer.ggml.merges"].data) == 151387
    tokens, types = field(gguf, "tokenizer.ggml.tokens"), field(gguf, "tokenizer.ggml.token_type")
    assert len(tokens) == 152064  # padded rows get placeholder tokens
    for content, token_id in SPECIAL_IDS.items():
        assert tokens[token_id] == content and types[token_id] == 3  # CONTROL
    assert set(types[151851:]) == {5}  # UNUSED padding rows
    assert set(types[:151643]) == {1}  # NORMAL
    assert field(gguf, "tokenizer.ggml.eos_token_id") == 151645  # chat: <|im_end|>
    assert field(gguf, "tokenizer.ggml.padding_token_id") == 151643
    assert field(gguf, "tokenizer.ggml.add_bos_token") is False
    assert "<|im_start|>system\\nYou are a helpful assistant." in field(gguf, "tokenizer.chat_template")


def test_bias_tensors_present(gguf):
    names = {t.name for t in gguf.tensors}
    for i in range(2):
        for part in ("q", "k", "v", "output"):
            assert f"blk.{i}.attn_{part}.bias" in names
    assert {"token_embd.weight", "output.weight", "output_norm.weight"} <= names
