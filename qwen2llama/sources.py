"""Where a SRC comes from: a folder, a hub id (`owner/name[@revision]`) through huggingface_hub's
cache, or a Trainer checkpoint whose missing files come from `--base` or the bundled vocabulary.

Only the files a conversion reads are fetched from the hub (never the `*.py` remote code), and
nothing but those files is ever opened.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import InputError
from .qwen.checkpoint import COMPANIONS, Checkpoint, open_checkpoint
from .tokens import VOCAB_SIZE

WEIGHT_PATTERNS = ["*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin",
                   "pytorch_model.bin.index.json"]
# tokenizer_config.json and *.tiktoken: a fine-tune's extra_vocab_file; value_head.safetensors: a
# reward model's head (both carried or converted, never left behind)
COMPANION_PATTERNS = ["config.json", "generation_config.json", "qwen.tiktoken", "LICENSE*", "NOTICE*",
                      "tokenizer_config.json", "*.tiktoken", "value_head.safetensors"]
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
# A revision is a commit hash or a ref name: components of word characters, dots and dashes, none
# of them "." or ".." (a revision is looked up as a file under the cache's refs/ when offline).
REVISION = re.compile(r"^(?!.*(^|/)\.{1,2}(/|$))[\w.-]+(/[\w.-]+)*$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")


def bundled_vocab() -> Path:
    from importlib import resources

    return Path(str(resources.files("qwen2llama") / "assets" / "qwen" / "qwen.tiktoken"))


def locate(spec: str | Path, *, weights: bool = True) -> Path:
    """The local folder for a SRC: the folder itself, or the hub snapshot (downloaded if needed)."""
    path = Path(spec)
    if path.exists() or not HUB_ID.match(str(spec)):
        if not path.exists():
            raise InputError(f"{spec!s} is not a folder, nor a hub id (owner/name[@revision])", path=path,
                             fix="give the checkpoint folder, or a Hugging Face model id such as "
                                 "Qwen/Qwen-7B-Chat")
        return path
    repo, _, revision = str(spec).partition("@")
    if revision and not REVISION.match(revision):
        raise InputError(f"revision {revision!r} is not a commit hash or a ref name", path=path,
                         fix="give a branch, tag or commit: owner/name@main, owner/name@<40-hex commit>")
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(repo, revision=revision or None,
                                   allow_patterns=COMPANION_PATTERNS + (WEIGHT_PATTERNS if weights else []))
    except Exception as exc:  # offline without a cached copy, unknown repo or revision, no access
        raise InputError(f"{spec} is not a folder here, and the Hugging Face hub could not provide it "
                         f"({type(exc).__name__}: {exc})"[:500], path=path,
                         fix="check the id and revision, log in (huggingface-cli login) for gated models, "
                             "or unset HF_HUB_OFFLINE to download") from None
    check_snapshot(Path(folder))
    return Path(folder)


def check_snapshot(snapshot: Path) -> None:
    """The one containment rule for a hub snapshot: the folder is `<repo>/snapshots/<commit>`
    itself, not a link, and resolves inside its repository's cache folder (a `refs/main` whose
    content climbs out, or a snapshot linked elsewhere, fails here); every link in it resolves into
    the repository's `blobs/`."""
    repo = Path(os.path.realpath(snapshot.parent.parent))
    where = Path(os.path.realpath(snapshot))
    if snapshot.parent.name != "snapshots" or not COMMIT.match(snapshot.name) or snapshot.is_symlink() \
            or where.parent != repo / "snapshots":
        raise InputError(f"the hub cache's snapshot {snapshot} is not a commit folder inside the cache "
                         f"(it resolves to {where})", path=snapshot,
                         fix="delete the repository's folder from the hub cache and download it again")
    check_snapshot_links(snapshot)


def check_snapshot_links(snapshot: Path) -> None:
    """A hub snapshot holds links into its repository's `blobs/`; a link that resolves anywhere
    else (planted in the cache) would make us read, and copy into the output, a file outside it."""
    blobs = Path(os.path.realpath(snapshot.parent.parent / "blobs"))
    for entry in snapshot.rglob("*"):
        if entry.is_symlink() and blobs not in Path(os.path.realpath(entry)).parents:
            raise InputError(f"{entry.name} in the hub cache links outside the cache's blobs "
                             f"({os.path.realpath(entry)})", path=entry,
                             fix="delete the snapshot folder from the hub cache and download it again")


def open_source(spec: str | Path, base: str | Path | None = None) -> Checkpoint:
    """The checkpoint at SRC, with every file a conversion reads: its own, else `base`'s, else (for
    the vocabulary, when it is safe) the bundled Qwen v1 one. Each substitution is noted."""
    ckpt = open_checkpoint(locate(spec))
    missing = [name for name in COMPANIONS if name not in ckpt.companions]
    if base is not None and missing:
        base_folder = locate(base, weights=False)
        for name in missing:
            if (base_folder / name).is_file():
                ckpt.companions[name] = base_folder / name
                ckpt.notes.append(f"{name} taken from --base {base}")
    if ckpt.vocab is None:
        if ckpt.config.vocab_rows < VOCAB_SIZE:
            raise InputError(f"no qwen.tiktoken, and the embedding has {ckpt.config.vocab_rows} "
                             "rows, fewer than "
                             f"Qwen v1's {VOCAB_SIZE} tokens: the bundled vocabulary cannot be assumed",
                             path=ckpt.folder / "qwen.tiktoken",
                             fix="copy the model's qwen.tiktoken into the folder, or pass --base "
                                 "with its release")
        ckpt.companions["qwen.tiktoken"] = bundled_vocab()
        ckpt.notes.append("no qwen.tiktoken: used the bundled Qwen v1 vocabulary (every Qwen v1 "
                          "release ships "
                          "the same file)")
    if "generation_config.json" not in ckpt.companions:
        ckpt.notes.append("no generation_config.json: Qwen's stop tokens are written; chat or base as stated "
                          "(--kind overrides)")
    return ckpt
