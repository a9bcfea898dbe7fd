"""The two entry points that run every check: `verify` (against the source) and `verify_golden`
(against a golden file). They import torch and transformers; `qwen2llama.verify` imports this module
only when one of them is first used."""
from __future__ import annotations

import resource
import time
from dataclasses import replace
from pathlib import Path

from .. import manifest
from ..errors import InputError
from ..jsonfile import read_object
from ..llama.reader import LlamaSide, read_output_tensors
from ..plan import map_source
from ..reference import has_mlp_bias
from ..progress import NullProgress, Progress
from ..lora.read import QwenAdapter, open_adapter
from ..qwen.checkpoint import Checkpoint, detect_chat
from ..sources import open_source
from .config import check_config
from .integrity import check_integrity
from .logits import check_logits
from .prompts import load_prompts, tiktoken_encoder
from .report import VerifyOptions, VerifyResult, check, with_fixes
from .tensors import check_tensors
from .tokenizer import check_tokenizer

def _read_config(dst: Path) -> dict:
    if not dst.is_dir():
        raise InputError("the converted folder does not exist", path=dst, fix="give the folder convert wrote")
    return read_object(dst / "config.json", what="is missing or not a JSON object", fix="convert again")


def _result(checks: dict, source: str, output, quick: bool, t0: float) -> VerifyResult:
    with_fixes(checks)
    return VerifyResult(
        passed=all(c["passed"] is not False for c in checks.values()), source=source, output=str(output),
        quick=quick, seconds=round(time.perf_counter() - t0, 2),
        peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), checks=checks)


def _same_model(ckpt: Checkpoint, dst_tensors: dict, dst: Path) -> None:
    want = ckpt.tensors["transformer.wte.weight"].shape
    emb = dst_tensors.get("model.embed_tokens.weight")
    if emb is None or emb.shape != want:
        raise InputError(f"SRC and DST are different models: embedding {list(emb.shape) if emb else None} vs "
                         f"{list(want)}", path=dst,
                         fix="verify a folder against the checkpoint it was converted from")


def _is_chat(dst: Path, ckpt: Checkpoint) -> bool:
    """As convert decided (conversion.json), else as the source says."""
    try:
        chat = manifest.recorded_chat(manifest.read(dst))
    except manifest.ManifestUnreadable:
        chat = None  # the integrity check reports it
    return detect_chat(ckpt)[0] if chat is None else chat


def verify(src: str | Path | Checkpoint, dst: str | Path, options: VerifyOptions | None = None, *,
           base: str | Path | None = None, adapter=None, progress: Progress | None = None,
           display: Path | None = None, **settings) -> VerifyResult:
    """Run every check of `dst` against `src` (a folder, a hub id, or an opened checkpoint); never
    raises for a failed check (see raise_if_failed). `options` (or its fields as keywords, e.g.
    quick=True) say which prompts; `adapter` (a folder or QwenAdapter): `dst` was written with this
    LoRA adapter merged in (`convert --adapter --merge`)."""
    options = replace(options or VerifyOptions(), **settings)
    quick = options.quick
    progress = progress or NullProgress()
    t0 = time.perf_counter()
    ckpt = src if isinstance(src, Checkpoint) else open_source(src, base)
    dst = Path(dst)
    if adapter is not None and not isinstance(adapter, QwenAdapter):
        adapter = open_adapter(adapter)
    map_source(ckpt)  # a complete Qwen v1 model, or bad input
    ckpt.generation_config()  # readable, or bad input
    raw = _read_config(dst)
    dst_tensors = read_output_tensors(dst)
    _same_model(ckpt, dst_tensors, dst)
    texts, chats = load_prompts(options.prompts, quick)
    encode = tiktoken_encoder(ckpt.vocab)
    checks: dict[str, dict] = {}
    progress.note("checking file hashes")
    checks["integrity"] = check_integrity(dst)
    progress.note("comparing tensors")
    checks["tensors"] = check_tensors(ckpt, dst_tensors, quantized="quantization_config" in raw,
                                      adapter=adapter)
    side = LlamaSide(dst)
    checks["config"] = check_config(ckpt.config, side.config, raw,
                                    ckpt.quantization.output_config() if ckpt.quantization else None,
                                    mlp_bias=has_mlp_bias(ckpt))
    progress.note("comparing tokenizers")
    checks["tokenizer"] = check_tokenizer(dst, encode, texts, chats, _is_chat(dst, ckpt))
    checks["logits"] = check_logits(ckpt, side, encode, texts, chats, quick=quick,
                                    lossy=bool(checks["tensors"].get("lossy_cast")),
                                    greedy_tokens=options.greedy_tokens, progress=progress,
                                    long_prompt=options.long_prompt, adapter=adapter)
    return _result(checks, str(ckpt.folder), display or dst, quick, t0)


def verify_golden(dst: str | Path, golden_file: str | Path, *, progress: Progress | None = None,
                  display: Path | None = None) -> VerifyResult:
    """Every check that needs no source, against a golden file (see verify/golden.py)."""
    from . import golden as golden_mod
    from .digests import check_tensors_golden
    from .replay import check_integrity_golden, check_logits_golden, check_same_model

    progress = progress or NullProgress()
    t0 = time.perf_counter()
    dst = Path(dst)
    golden = golden_mod.read(golden_file)
    raw = _read_config(dst)
    dst_tensors = read_output_tensors(dst)
    check_same_model(golden, dst_tensors, dst)
    against = {"against": str(golden.path)}
    checks: dict[str, dict] = {}
    progress.note("checking file hashes")
    checks["integrity"] = check_integrity_golden(golden, dst) or {**check_integrity(dst), **against}
    if golden.meta.get("tensor_digests"):
        checks["tensors"] = check_tensors_golden(golden.meta["tensor_digests"], dst_tensors, str(golden.path),
                                                 progress)
    else:
        note = f"against a golden file: {golden_mod.OLDER}"
        checks["tensors"] = check(None, note, note=note, **against)
    side = LlamaSide(dst)
    checks["config"] = {**check_config(golden.config, side.config, raw, golden.meta.get("quantization"),
                                       mlp_bias=golden.meta.get("mlp_bias", False)), **against}
    progress.note("comparing tokenizers")
    prompt_set = golden.meta["prompt_set"]
    checks["tokenizer"] = {**check_tokenizer(dst, golden.encode, prompt_set["texts"], prompt_set["chats"],
                                             golden.meta["chat"]), **against}
    checks["logits"] = check_logits_golden(golden, side, progress)
    return _result(checks, f"golden file {golden.path}", display or dst, bool(prompt_set["quick"]), t0)
