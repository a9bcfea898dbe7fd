"""Golden files: what a later `verify OUT --golden FILE` needs from the Qwen reference, so that a
CI job can check a converted folder without the source checkpoint.

Recorded from the reference forward on the source (in Qwen's terms, never through layout.py or
formats/): per prompt and position the logsumexp, the top-k ids and values and the values at a
sample of vocabulary ids (a fixed, seeded random sample plus, always, every special token id —
151643..151850, the stop tokens among them — and every prompt token id); greedy continuations;
tiktoken's ids for every tokenizer sample, Qwen's chat renderings; the normalised Qwen config.
Beside them (format 2), a digest of every output tensor's values as the conversion defines them
(`digests.py`: these come from the mapping and prove integrity, not correctness), and, when
`convert --golden` records it, the digest of every converted file. Stored as safetensors (the
numbers) with a JSON header in its metadata. The same inputs give the same bytes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..targets import DEFAULT as DEFAULT_TARGET
from ..targets import TARGETS
from .. import __version__
from ..errors import InputError
from ..progress import NullProgress
from ..qwen.config import QwenConfig
from ..reference import QwenCache, QwenReference, has_mlp_bias
from ..tokenizer import read_tiktoken
from ..tokenizer.files import vocab_digest
from ..tokens import SPECIAL_IDS
from . import digests
from .heap import reused_heap
from .lockstep import continue_reference, forward, reference_layers
from .prompts import (GOLDEN, MAX_GREEDY, MAX_PROMPTS, PROBES, greedy_count,
                      load_prompts, prompt_set, qwen_chat_text, tiktoken_encoder)
from .stats import reference_head_blocks, side_stats

FORMAT = 2
READS = (1, 2)  # format 1: no tensor digests, a random sample only (see OLDER)
OLDER = ("a format 1 golden file holds no tensor digests and samples no fixed ids: a changed weight that no "
         "recorded number covers (an embedding row of a token no prompt uses, an lm_head row outside the "
         "sample, <|im_end|>'s among them) goes unnoticed; record it again with this version")
MAX_TOP_K = 1024  # bounds on counts read from a file (MAX_PROMPTS, MAX_GREEDY: prompts.py)
META_KEY = "qwen2llama_golden"
TOP_K = 16  # top logits kept per position
SAMPLE_SIZE = 2048  # vocabulary ids whose logits are kept at every position
SAMPLE_SEED = 20230803  # Qwen-7B's first release date: fixed, so every golden file samples the same ids
FIX = "record it again with `qwen2llama golden SRC FILE` (or `convert --golden FILE`)"


def sample_ids(vocab_rows: int, always=()) -> torch.Tensor:
    """The fixed random sample, every special token id and the ids in `always`, sorted, unique."""
    generator = torch.Generator().manual_seed(SAMPLE_SEED)
    fixed = [i for i in [*SPECIAL_IDS.values(), *always] if 0 <= i < vocab_rows]
    random = torch.randperm(vocab_rows, generator=generator)[:SAMPLE_SIZE]
    return torch.unique(torch.cat([random, torch.tensor(fixed, dtype=torch.long)]))


def tokenizer_samples(texts: list[str], chats: list) -> list[str]:
    """Exactly the strings the tokenizer check encodes."""
    return list(texts) + [qwen_chat_text(m) for m in chats] + PROBES + list(GOLDEN)


def record(ckpt, *, prompts: Path | None = None, quick: bool = False, long_prompt: bool | None = None,
           greedy_tokens: int | None = None, progress=None, files: dict | None = None,
           plan=None, context=None, device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, header) of a golden file for the checkpoint. `plan`: the conversion whose tensors
    the digests describe (default: `build_plan(ckpt)`, the source's dtype); `files` = {"hash": name,
    "files": {...}} when convert records the digests of what it wrote."""
    from ..plan import build_plan

    progress = progress or NullProgress()
    plan = plan if plan is not None else build_plan(ckpt)
    cfg = ckpt.config
    texts, chats = load_prompts(prompts, quick)
    encode = _encoder(ckpt)
    named, long_note, _ = prompt_set(cfg, encode, texts, chats, quick, long_prompt)
    # --context: T's alpha, frozen
    ref = QwenReference(ckpt, alpha=context.alpha if context else None, device=device)
    seqs = [ids for _, ids in named]
    lens = [len(s) for s in seqs]
    n_greedy = greedy_count(sum(r.nbytes for r in ckpt.tensors.values()), quick, greedy_tokens)
    gather = sample_ids(cfg.vocab_rows, {i for seq in seqs for i in seq})
    with reused_heap():  # the layer-streamed part only (heap.py)
        stats, continuations = _reference(ref, seqs, gather, n_greedy, progress)
    tensors = {"sample_ids": gather.to(torch.int32)}
    columns = {"lse": stats.lse().float(), "topk_ids": stats.top_ids.to(torch.int32),
               "topk_values": stats.top_values, "sample_values": stats.gathered}
    for k, (ids, part) in enumerate(zip(seqs, zip(*(v.split(lens) for v in columns.values())))):
        tensors[f"prompt.{k}.ids"] = torch.tensor(ids, dtype=torch.int32)
        tensors.update({f"prompt.{k}.{name}": v.contiguous() for name, v in zip(columns, part)})
    for k, tokens in enumerate(continuations):
        tensors[f"greedy.{k}"] = torch.tensor(tokens, dtype=torch.int32)
    meta = {
        "format": FORMAT, "tool": {"name": "qwen2llama", "version": __version__},
        "qwen_config": cfg.to_dict(), "vocab_digest": vocab_digest(read_tiktoken(ckpt.vocab)),
        "chat": _chat(ckpt), "prompt_set": {"texts": texts, "chats": chats, "quick": quick},
        "prompts": [name for name, _ in named], "long_prompt": long_note, "greedy_tokens": n_greedy,
        "top_k": TOP_K, "lossy_cast": plan.lossy,
        "sample": {"size": SAMPLE_SIZE, "seed": SAMPLE_SEED,
                   "always": "every special token id and prompt token id"},
        "tokenizer": {"ids": {t: encode(t) for t in tokenizer_samples(texts, chats)},
                      "special_ids": SPECIAL_IDS},
        "files": files,
        "quantization": ckpt.quantization.output_config() if ckpt.quantization else None,
        "tensor_digests": digests.record(plan, progress),
        "mlp_bias": has_mlp_bias(ckpt),
        **_layout(plan, context),
    }
    return tensors, meta


def _reference(ref, seqs, gather, n_greedy: int, progress):
    """The reference's statistics over the prompts, and its greedy continuations of the first."""
    lens = [len(s) for s in seqs]
    caches = [QwenCache() for _ in seqs[: min(3, len(seqs))]] if n_greedy else []
    progress.start("golden: reference layers", ref.cfg.num_layers, "layers")
    h = ref.final_norm(forward(ref.embed([x for s in seqs for x in s]), reference_layers(ref), lens, progress,
                               caches))
    progress.finish()
    stats = side_stats(reference_head_blocks(ref), h, TOP_K, gather)
    return stats, (_greedy(ref, caches, h, lens, n_greedy, progress) if n_greedy else [[] for _ in seqs[:3]])


def _greedy(ref, caches, h, lens: list[int], n: int, progress) -> list[list[int]]:
    """The reference's greedy continuations of the first prompts, from their caches."""
    progress.start(f"golden: greedy ({n} tokens)", (n - 1) * ref.cfg.num_layers, "layers")
    ends = (torch.tensor(lens).cumsum(0) - 1)[: len(caches)].to(h.device)
    continuations, _ = continue_reference(ref, caches, h[ends], n, progress)
    progress.finish()
    return continuations


def _layout(plan, context) -> dict:
    """The output's layout and --context where not the default (older golden files stay as they were)."""
    return {**({"target": plan.target.name} if plan.target.name != DEFAULT_TARGET else {}),
            **({"context": context.record()} if context else {})}


def _encoder(ckpt):
    """Qwen's tokenizer for the source; an extended vocabulary is refused (not recorded yet)."""
    if ckpt.extra_vocab is not None or read_tiktoken(ckpt.vocab).extra:
        raise InputError("golden files do not record an extended vocabulary yet",
                         path=ckpt.extra_vocab or ckpt.vocab,
                         fix="verify this conversion against its source (qwen2llama verify SRC DST)")
    return tiktoken_encoder(ckpt.vocab)


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
    except (Exception, RecursionError) as exc:  # truncated or corrupt, or nested too deep
        raise InputError(f"the golden file is unreadable ({type(exc).__name__}: {exc})"[:300], path=path,
                         fix=FIX) from None
    if not isinstance(meta, dict) or meta.get("format") not in READS:
        version = meta.get("tool", {}).get("version") if isinstance(meta, dict) else None
        raise InputError(f"golden file format {meta.get('format') if isinstance(meta, dict) else meta!r} "
                         f"(written by qwen2llama {version}); this version reads formats "
                         f"{', '.join(map(str, READS))}", path=path,
                         fix="verify with the qwen2llama version that wrote it, or record it again")
    cfg = _check_header(meta, path)
    _check_numbers(meta, tensors, path, cfg.vocab_rows)
    return Golden(path, meta, tensors)


def _bad(path: Path, field: str, want: str) -> InputError:
    return InputError(f"the golden file's {field} is not {want}", path=path, fix=FIX)


def _is_int(v, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _token_lists(tokenizer) -> bool:
    ids = tokenizer.get("ids") if isinstance(tokenizer, dict) else None
    return isinstance(ids, dict) and all(isinstance(v, list) and all(_is_int(i, 0, 1 << 31) for i in v)
                                         for v in ids.values())


HEADER_FIELDS = (  # (field, its test on the header, what it must be), in the order checked
    ("prompts", lambda m: isinstance(p := m.get("prompts"), list) and 1 <= len(p) <= MAX_PROMPTS
     and all(isinstance(x, str) for x in p), f"a list of 1 to {MAX_PROMPTS} names"),
    ("greedy_tokens", lambda m: _is_int(m.get("greedy_tokens"), 0, MAX_GREEDY),
     f"a count from 0 to {MAX_GREEDY}"),
    ("top_k", lambda m: _is_int(m.get("top_k"), 2, MAX_TOP_K), f"a count from 2 to {MAX_TOP_K}"),
    ("mlp_bias", lambda m: isinstance(m.get("mlp_bias", False), bool), "true or false"),
    ("chat", lambda m: isinstance(m.get("chat"), bool), "true or false"),
    ("target", lambda m: m.get("target", DEFAULT_TARGET) in TARGETS, " or ".join(TARGETS)),
    ("context", lambda m: m.get("context") is None or (isinstance(m["context"], dict) and _is_int(
        m["context"].get("context_tokens"), 1, 1 << 20)), "absent, or a context of 1 to 2^20 tokens"),
    ("vocab_digest", lambda m: isinstance(m.get("vocab_digest"), str), "a digest"),
    ("prompt_set", lambda m: isinstance(s := m.get("prompt_set"), dict) and isinstance(s.get("texts"), list)
     and isinstance(s.get("chats"), list) and isinstance(s.get("quick"), bool),
     "an object with texts, chats and quick"),
    ("tokenizer.ids", lambda m: _token_lists(m.get("tokenizer")), "an object of token id lists"),
)


def _check_header(meta: dict, path: Path) -> QwenConfig:
    """Every header field verify reads, of its type and within bounds; returns the Qwen config."""
    for field, ok, want in HEADER_FIELDS:
        if not ok(meta):
            raise _bad(path, field, want)
    try:
        cfg = QwenConfig(**meta["qwen_config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise _bad(path, "qwen_config", f"a Qwen config ({exc})"[:200]) from None
    if meta["format"] >= 2:
        digests.validate(meta.get("tensor_digests"), path)
    return cfg


def _check_numbers(meta: dict, tensors: dict[str, torch.Tensor], path: Path, rows: int) -> None:
    """Every recorded tensor present, of its shape and kind, ids below `rows` (the vocabulary),
    values finite: a NaN would make every comparison with it pass."""
    k = meta["top_k"]

    def need(name: str, shape: tuple, floating: bool) -> torch.Tensor:
        t = tensors.get(name)
        if t is None:
            raise InputError(f"the golden file is incomplete (missing {name})", path=path, fix=FIX)
        if tuple(t.shape) != shape or t.is_floating_point() != floating:
            raise _bad(path, f"tensor {name}", f"{'float' if floating else 'int'} of shape {list(shape)} "
                       f"(it is {str(t.dtype).removeprefix('torch.')} {list(t.shape)})")
        if floating and not torch.isfinite(t).all():
            raise _bad(path, f"tensor {name}", "finite (it holds NaN or Inf)")
        if not floating and t.numel() and (int(t.min()) < 0 or int(t.max()) >= rows):
            raise _bad(path, f"tensor {name}", f"token ids below {rows}")
        return t

    sample = tensors.get("sample_ids")
    n_sample = sample.shape[0] if sample is not None and sample.dim() == 1 else -1
    need("sample_ids", (max(n_sample, 1),), False)
    for p in range(len(meta["prompts"])):
        ids = tensors.get(f"prompt.{p}.ids")
        n = ids.shape[0] if ids is not None and ids.dim() == 1 and ids.shape[0] > 0 else 1
        need(f"prompt.{p}.ids", (n,), False)
        need(f"prompt.{p}.lse", (n,), True)
        need(f"prompt.{p}.topk_ids", (n, k), False)
        need(f"prompt.{p}.topk_values", (n, k), True)
        need(f"prompt.{p}.sample_values", (n, n_sample), True)
    if meta["greedy_tokens"]:
        for p in range(min(3, len(meta["prompts"]))):
            need(f"greedy.{p}", (meta["greedy_tokens"],), False)
