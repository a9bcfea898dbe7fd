"""Golden files: what a later `verify OUT --golden FILE` needs from the Qwen reference, so that a
CI job can check a converted folder without the source checkpoint.

Recorded from the reference forward on the source (in Qwen's terms, never through layout.py or
formats/): per prompt and position the logsumexp, the top-k ids and values and the values at a
fixed, seeded sample of vocabulary ids; greedy continuations; tiktoken's ids for every tokenizer
sample, Qwen's chat renderings; the normalised Qwen config; and, when `convert --golden` records
it, the digest of every converted file. Stored as safetensors (the numbers) with a JSON header in
its metadata. The same inputs give the same bytes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import __version__
from ..errors import InputError
from ..progress import NullProgress
from ..qwen.config import QwenConfig
from ..reference import QwenReference
from ..tokenizer import read_tiktoken
from ..tokenizer.files import vocab_digest
from ..tokens import SPECIAL_IDS
from .lockstep import continue_greedily, forward, reference_layers
from .logits import GREEDY_MAX_BYTES, _prompt_set
from .prompts import GOLDEN, PROBES, load_prompts, qwen_chat_text, tiktoken_encoder
from .stats import reference_head_blocks, side_stats

FORMAT = 1
META_KEY = "qwen2llama_golden"
TOP_K = 16  # top logits kept per position
SAMPLE_SIZE = 2048  # vocabulary ids whose logits are kept at every position
SAMPLE_SEED = 20230803  # Qwen-7B's first release date: fixed, so every golden file samples the same ids
FIX = "record it again with `qwen2llama golden SRC FILE` (or `convert --golden FILE`)"


def sample_ids(vocab_rows: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(SAMPLE_SEED)
    return torch.randperm(vocab_rows, generator=generator)[:SAMPLE_SIZE].sort().values


def tokenizer_samples(texts: list[str], chats: list) -> list[str]:
    """Exactly the strings the tokenizer check encodes."""
    return list(texts) + [qwen_chat_text(m) for m in chats] + PROBES + list(GOLDEN)


def record(ckpt, *, prompts: Path | None = None, quick: bool = False, long_prompt: bool | None = None,
           greedy_tokens: int | None = None, progress=None, files: dict | None = None,
           lossy: bool = False) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, header) of a golden file for the checkpoint. `files` = {"hash": name, "files": {...}}
    when convert records the digests of what it wrote; `lossy` when it narrowed the dtype."""
    progress = progress or NullProgress()
    cfg = ckpt.config
    texts, chats = load_prompts(prompts, quick)
    encode = tiktoken_encoder(ckpt.vocab)
    named, long_note, _ = _prompt_set(cfg, encode, texts, chats, quick, long_prompt)
    ref = QwenReference(ckpt)
    seqs = [ids for _, ids in named]
    lens = [len(s) for s in seqs]
    progress.start("golden: reference layers", cfg.num_layers, "layers")
    h = forward(ref.embed([x for s in seqs for x in s]), reference_layers(ref), lens, progress)
    progress.finish()
    gather = sample_ids(cfg.vocab_rows)
    stats = side_stats(reference_head_blocks(ref), ref.final_norm(h), TOP_K, gather)
    model_bytes = sum(r.nbytes for r in ckpt.tensors.values())
    n_greedy = greedy_tokens if greedy_tokens is not None else (
        (4 if quick else 8) if model_bytes <= GREEDY_MAX_BYTES else 0)
    greedy_seqs = seqs[: min(3, len(seqs))]
    if n_greedy:
        progress.start(f"golden: greedy ({n_greedy} tokens)", n_greedy * cfg.num_layers, "layers")
        greedy_seqs = continue_greedily(ref.embed, lambda: reference_layers(ref), ref.final_norm,
                                        lambda: reference_head_blocks(ref), greedy_seqs, n_greedy, progress)
        progress.finish()
    tensors = {"sample_ids": gather.to(torch.int32)}
    columns = {"lse": stats.lse().float(), "topk_ids": stats.top_ids.to(torch.int32),
               "topk_values": stats.top_values, "sample_values": stats.gathered}
    for k, (ids, part) in enumerate(zip(seqs, zip(*(v.split(lens) for v in columns.values())))):
        tensors[f"prompt.{k}.ids"] = torch.tensor(ids, dtype=torch.int32)
        tensors.update({f"prompt.{k}.{name}": v.contiguous() for name, v in zip(columns, part)})
    for k, (prompt, full) in enumerate(zip(seqs, greedy_seqs)):
        tensors[f"greedy.{k}"] = torch.tensor(full[len(prompt):], dtype=torch.int32)
    meta = {
        "format": FORMAT, "tool": {"name": "qwen2llama", "version": __version__},
        "qwen_config": cfg.to_dict(), "vocab_digest": vocab_digest(read_tiktoken(ckpt.vocab)),
        "chat": _chat(ckpt), "prompt_set": {"texts": texts, "chats": chats, "quick": quick},
        "prompts": [name for name, _ in named], "long_prompt": long_note, "greedy_tokens": n_greedy,
        "top_k": TOP_K, "sample": {"size": SAMPLE_SIZE, "seed": SAMPLE_SEED}, "lossy_cast": lossy,
        "tokenizer": {"ids": {t: encode(t) for t in tokenizer_samples(texts, chats)}, "special_ids": SPECIAL_IDS},
        "files": files,
        "quantization": ckpt.quantization.output_config() if ckpt.quantization else None,
    }
    return tensors, meta


def _chat(ckpt) -> bool:
    from ..qwen.checkpoint import detect_chat

    return detect_chat(ckpt)[0]


def write(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={META_KEY: json.dumps(meta, sort_keys=True, ensure_ascii=False)})


@dataclass
class Golden:
    path: Path
    meta: dict
    tensors: dict[str, torch.Tensor]

    @property
    def config(self) -> QwenConfig:
        return QwenConfig(**self.meta["qwen_config"])

    def prompt(self, k: int, name: str) -> torch.Tensor:
        return self.tensors[f"prompt.{k}.{name}"]

    def encode(self, text: str) -> list[int]:
        """tiktoken's ids as recorded ([] for a string the file does not hold: a mismatch)."""
        return self.meta["tokenizer"]["ids"].get(text, [])


def read(path: str | Path) -> Golden:
    """A golden file, checked: readable, of a format this version knows, complete."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {})[META_KEY])
            tensors = {name: fh.get_tensor(name) for name in fh.keys()}
    except FileNotFoundError:
        raise InputError("the golden file does not exist", path=path, fix=FIX) from None
    except KeyError:
        raise InputError("not a qwen2llama golden file (no golden header)", path=path, fix=FIX) from None
    except Exception as exc:  # truncated or corrupt: safetensors says so in its own words
        raise InputError(f"the golden file is unreadable ({type(exc).__name__}: {exc})"[:300], path=path,
                         fix=FIX) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        version = meta.get("tool", {}).get("version") if isinstance(meta, dict) else None
        raise InputError(f"golden file format {meta.get('format') if isinstance(meta, dict) else meta!r} "
                         f"(written by qwen2llama {version}); this version reads format {FORMAT}", path=path,
                         fix="verify with the qwen2llama version that wrote it, or record it again")
    missing = [f"prompt.{k}.{n}" for k in range(len(meta["prompts"]))
               for n in ("ids", "lse", "topk_ids", "topk_values", "sample_values")
               if f"prompt.{k}.{n}" not in tensors]
    if missing or "sample_ids" not in tensors:
        raise InputError(f"the golden file is incomplete (missing {', '.join(missing[:3]) or 'sample_ids'})",
                         path=path, fix=FIX)
    return Golden(path, meta, tensors)
