"""A Qwen v1 checkpoint folder: its normalised config, every tensor's location (metadata only),
the files beside the weights that a conversion reads, and whether it is a chat model."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from ..jsonfile import read_object
from ..storage import TensorRef, find_weights, read_ref
from .config import QwenConfig, parse_config, read_raw_config
from .quantization import GptqSettings, read_quantization


# Files a conversion reads besides the weights and config.json. A Trainer checkpoint often
# lacks them; `sources` can take them from a base model or the bundled vocabulary.
COMPANIONS = ("generation_config.json", "qwen.tiktoken", "LICENSE", "NOTICE")
EXTRA_VOCAB = "extra_vocab_file"  # the companion key of an extra vocabulary (its file has any name)
VALUE_HEAD = "value_head.safetensors"  # a reward model's head on the final hidden states: carried


def extra_vocab_of(folder: Path) -> Path | None:
    """The file that the folder's tokenizer_config.json names as `extra_vocab_file` (Qwen's way to
    extend the vocabulary), None when it names none; it must be a plain file name in the folder."""
    config_path = folder / "tokenizer_config.json"
    if not config_path.is_file():
        return None
    settings = read_object(config_path, fix="restore the fine-tune's tokenizer_config.json")
    name = settings.get("extra_vocab_file")
    if name is None:
        return None
    fix = "put the extra vocabulary file beside tokenizer_config.json and name it there as a plain file name"
    if not isinstance(name, str) or not name or name != os.path.basename(name) or name in (".", ".."):
        raise InputError(f"tokenizer_config.json: extra_vocab_file {str(name)[:80]!r} is not a file name in "
                         "the folder", path=config_path, fix=fix)
    path = folder / name
    if not path.is_file() or os.path.dirname(os.path.realpath(path)) != os.path.realpath(folder):
        raise InputError(f"tokenizer_config.json names extra_vocab_file {name!r}, which is not a file in the "
                         "folder (for a hub id: not fetched)", path=path, fix=fix)
    return path


@dataclass
class Checkpoint:
    folder: Path
    config: QwenConfig
    format: str  # "safetensors" or "bin"
    files: list[Path]
    tensors: dict[str, TensorRef]
    companions: dict[str, Path] = field(default_factory=dict)  # name -> where it was found
    notes: list[str] = field(default_factory=list)  # what was taken from elsewhere, and why
    quantization: GptqSettings | None = None  # a GPTQ release's settings; None: dense weights

    @property
    def vocab(self) -> Path | None:
        return self.companions.get("qwen.tiktoken")

    @property
    def extra_vocab(self) -> Path | None:
        """A fine-tune's extra vocabulary (tokenizer_config.json `extra_vocab_file`), if any."""
        return self.companions.get(EXTRA_VOCAB)

    def read_tensor(self, name: str):
        """One whole tensor as a torch tensor (the reference forward reads a layer at a time)."""
        return read_ref(self.tensors[name])

    def generation_config(self) -> dict | None:
        """The source's generation_config.json, None when absent; unusable is bad input."""
        path = self.companions.get("generation_config.json")
        if path is None:
            return None
        return read_object(path, fix="restore it from the checkpoint, or delete it")


def detect_chat(ckpt: Checkpoint, kind: str = "auto") -> tuple[bool, str]:
    """(chat, why): chat models stop on <|im_end|>. Qwen's generation_config says which kind it is."""
    if kind in ("chat", "base"):
        return kind == "chat", f"--kind {kind}"
    if kind != "auto":
        raise InputError(f"unknown --kind {kind!r}", fix="use auto, chat or base")
    fmt = (ckpt.generation_config() or {}).get("chat_format")
    if fmt == "chatml":
        return True, "generation_config.json chat_format=chatml"
    if fmt == "raw":
        return False, "generation_config.json chat_format=raw"
    return True, "no chat_format in the source; assumed chat so generation also stops at <|im_end|>"


def open_checkpoint(folder: str | Path) -> Checkpoint:
    """Index a Qwen checkpoint folder: config plus every tensor's location, no tensor data read."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("the source is not a folder", path=folder,
                         fix="give the folder that holds config.json and the weight files")
    if not os.access(folder, os.R_OK | os.X_OK):
        raise InputError("the source folder is not readable", path=folder, fix="check its permissions")
    raw = read_raw_config(folder)
    config = parse_config(raw, folder / "config.json")
    quantization = read_quantization(folder, raw)
    weights = find_weights(folder)
    if weights is None:
        present = sorted(p.name for p in folder.iterdir())[:12]
        raise InputError(
            "no weights found (looked for model.safetensors[.index.json] and "
            "pytorch_model.bin[.index.json]; "
            f"the folder holds: {', '.join(present) or 'nothing'})",
            path=folder, fix="download the weight files into this folder")
    companions = {name: folder / name for name in COMPANIONS if (folder / name).is_file()}
    if (extra := extra_vocab_of(folder)) is not None:  # only then: other fingerprints stay as they were
        companions[EXTRA_VOCAB] = extra
    if (folder / VALUE_HEAD).is_file():  # the fine-tune's own, never taken from --base
        companions[VALUE_HEAD] = folder / VALUE_HEAD
    return Checkpoint(folder, config, weights.format, weights.files, weights.tensors, companions,
                      quantization=quantization)
