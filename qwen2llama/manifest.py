"""`conversion.json`: what was converted, from what and how, and a digest of every output file.

`convert` writes it last, so its presence marks a complete folder; `verify` reads it back for
the integrity check and the chat/base decision. Every JSON file of the output is written by
`write_json` (sorted keys, fixed layout): the same input gives the same bytes.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from . import __version__
from .dtypes import NAME_OF
from .options import fingerprinted
from .targets import DEFAULT as DEFAULT_TARGET
from .storage.digest import HASHES, hash_file, new_hash, sha256_file  # noqa: F401  (this module's API too)

NAME = "conversion.json"


class ManifestUnreadable(Exception):
    """conversion.json exists but does not follow the schema; the message says how."""


def write_json(path: Path, obj) -> None:
    """Sorted keys, fixed layout; every number finite (NaN and Infinity are not JSON: a ValueError,
    never a file that only Python reads back); a name that is not UTF-8 (a folder's bytes, kept by
    Python as surrogates) written as its JSON escape, which reads back to the same string."""
    text = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"
    path.write_text(text, encoding="utf-8", errors="backslashreplace")


def _long_context(cfg, context=None) -> dict:
    if context is not None:  # --context T (context.py)
        return {"use_dynamic_ntk": cfg.use_dynamic_ntk, "use_logn_attn": cfg.use_logn_attn,
                "max_position_embeddings": context.tokens, **context.record(),
                "reason": f"rope_theta is Qwen's base for a {context.tokens}-token prompt (NTK alpha "
                          f"{context.alpha}), fixed: prompts of {context.band[0]}..{context.band[1]} tokens "
                          "get Qwen's RoPE exactly, and their generation up to the context; shorter prompts "
                          "get another alpha in Qwen; logn attention is not carried"}
    return {
        "use_dynamic_ntk": cfg.use_dynamic_ntk,
        "use_logn_attn": cfg.use_logn_attn,
        "exact_up_to_tokens": cfg.seq_length,
        "max_position_embeddings": cfg.seq_length,
        "reason": ("max_position_embeddings is Qwen's seq_length: up to it Qwen's dynamic NTK and logn "
                   "attention are the identity and the LLaMA model computes the same function; beyond it "
                   "Qwen rescales RoPE and queries, which the LLaMA layout cannot express"
                   if cfg.use_dynamic_ntk or cfg.use_logn_attn else
                   "max_position_embeddings is Qwen's seq_length, the context the model was trained on"),
    }


def build(prepared, tokenizer: dict, digests: dict[str, str | None], sizes: dict[str, int]) -> dict:
    """The manifest of a conversion: `prepared` is convert's plan, `digests` and `sizes` every
    output file's digest and byte count (what `batch` checks before calling a folder up to date)."""
    plan = prepared.plan
    ckpt, cfg = plan.checkpoint, plan.checkpoint.config
    source = {
        "folder": str(ckpt.folder.resolve()),
        "format": ckpt.format,
        "files": {p.name: p.stat().st_size for p in ckpt.files},
        "config_generation": cfg.generation,
        "config": cfg.to_dict(),
        "companions": {name: str(path) for name, path in sorted(ckpt.companions.items())},
        "notes": list(ckpt.notes),
        "quantization": ckpt.quantization.raw if ckpt.quantization else None,
    }
    target = {"dtype": NAME_OF[plan.dtype], "chat": prepared.chat, "chat_reason": prepared.chat_reason,
              "shards": len(prepared.shards), "total_bytes": plan.total_bytes, "format": plan.fmt.name,
              "quantized": plan.quantized}
    if plan.target.name != DEFAULT_TARGET:  # recorded where it is not the default: older records stay
        target["layout"] = plan.target.architecture
    return record(
        source, target, hash=prepared.options.hash, digests=digests, sizes=sizes,
                  fingerprint=fingerprint(prepared),
        long_context=_long_context(cfg, prepared.context),
        merged_adapter=str(prepared.adapter.folder.resolve()) if prepared.adapter is not None else None,
        dropped_tensors=plan.dropped,
        **({"dropped_zero_tensors": sorted(r.name for r in plan.zero_dropped)} if plan.zero_dropped else {}),
        **({"mlp_bias": "the source's MLP biases are not all zero: written, mlp_bias true"}
           if plan.mlp_bias else {}),
        inventory=prepared.inventory.record() if prepared.inventory is not None else None,
        tokenizer=tokenizer)


def record(source: dict, target: dict, *, hash: str, digests: dict[str, str | None], sizes: dict[str, int],
           fingerprint: str, **sections) -> dict:
    """The one layout of conversion.json, for a model (build) and an adapter: what it was made
    from, what it is, the fingerprint of both, and every file's digest and size."""
    return {"tool": {"name": "qwen2llama", "version": __version__}, "source": source, "target": target,
            **sections, "fingerprint": fingerprint, "hash": hash, "files": dict(sorted(digests.items())),
            "sizes": dict(sorted(sizes.items()))}


def _fingerprint_of(what: dict) -> str:
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def adapter_fingerprint(prepared) -> str:
    """What an adapter conversion was made from and how (as `fingerprint` for a model): the tool
    version, the digest algorithm, the adapter's files by size and modification time, its
    adapter_config.json by sha256, and the converted config it writes (base_model_name_or_path)."""
    a = prepared.adapter
    return _fingerprint_of({"tool": __version__, "kind": "adapter", "hash": prepared.hash,
                            "weights": {p.name: [(st := p.stat()).st_size, st.st_mtime_ns] for p in a.files},
                            "adapter_config.json": sha256_file(a.folder / "adapter_config.json"),
                            "config": prepared.config})


def fingerprint(prepared) -> str:
    """What a conversion was made from and how: the tool version, the options (options.py says how
    each enters: its value, or what the plan resolved from it), and every source file by name,
    size and modification time (the weights) or sha256 (the small files). Equal
    fingerprints mean a rerun would write the same files; batch skips such jobs."""
    ckpt, plan = prepared.plan.checkpoint, prepared.plan
    small = {name: sha256_file(path) for name, path in ckpt.companions.items()}
    for name in ("config.json", "quantize_config.json"):
        if (ckpt.folder / name).is_file():
            small[name] = sha256_file(ckpt.folder / name)
    weights = {p.name: [(st := p.stat()).st_size, st.st_mtime_ns] for p in ckpt.files}
    what = {"tool": __version__, "dtype": plan.dtype, "chat": prepared.chat,
            **fingerprinted(prepared.options),
            "shards": [[name, len(tensors)] for name, tensors in prepared.shards], "weights": weights,
            "files": small}
    if plan.fmt.fingerprint is not None:  # keys only where they apply: other fingerprints stay as they were
        what["format"] = plan.fmt.fingerprint
    if prepared.adapter is not None:
        what["adapter"] = {str(p): [(st := p.stat()).st_size, st.st_mtime_ns] for p in prepared.adapter.files}
        what["adapter"]["adapter_config.json"] = sha256_file(prepared.adapter.folder / "adapter_config.json")
    return _fingerprint_of(what)


def record_verification(folder: Path, result) -> None:
    """Add verify's verdict to a folder's conversion.json (not itself hashed), so that a later
    batch run knows the folder was verified."""
    record = read(folder)
    checks = result["checks"]
    record["verify"] = {"passed": result["passed"], "quick": result["quick"],
                        "checks": {name: c["passed"] for name, c in checks.items()},
                        "max_abs_logit_diff": checks["logits"].get("max_abs_logit_diff")}
    write_json(folder / NAME, record)


def read(folder: Path) -> dict | None:
    """The manifest of a converted folder; None when there is none."""
    path = folder / NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise ManifestUnreadable(f"{NAME} is not valid JSON ({exc})"[:200]) from None
    if not isinstance(data, dict):
        raise ManifestUnreadable(f"{NAME} is not a JSON object")
    return data


def recorded_files(manifest: dict) -> tuple[str, dict[str, str | None]]:
    """(hash algorithm, file name -> digest (None when converted with --no-checksums))."""
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(isinstance(d, (str, type(None))) for d in files.values()):
        raise ManifestUnreadable(f"{NAME}: 'files' is not an object of file name -> digest")
    algorithm = manifest.get("hash", "sha256")
    if algorithm not in HASHES:
        raise ManifestUnreadable(f"{NAME}: unknown hash {algorithm!r} (known: {', '.join(HASHES)})")
    return algorithm, files


def recorded_chat(manifest: dict | None) -> bool | None:
    """Whether convert judged the model a chat model; None when not recorded."""
    target = (manifest or {}).get("target")
    chat = target.get("chat") if isinstance(target, dict) else None
    return chat if isinstance(chat, bool) else None
