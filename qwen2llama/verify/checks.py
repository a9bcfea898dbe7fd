"""The two entry points that run every check: `verify` (against the source) and `verify_golden`
(against a golden file). They import torch and transformers; `qwen2llama.verify` imports this module
only when one of them is first used."""
from __future__ import annotations

import resource
import time
from dataclasses import dataclass, replace
from pathlib import Path

from .. import manifest
from ..errors import FolderCheckFailed, InputError
from ..jsonfile import read_object
from ..llama.reader import OutputSide, read_output_tensors
from ..plan import map_source
from ..reference import has_mlp_bias
from ..progress import NullProgress, Progress
from ..lora.read import QwenAdapter, open_adapter
from ..qwen.checkpoint import VALUE_HEAD, Checkpoint, detect_chat
from ..sources import open_source
from ..targets import DEFAULT as DEFAULT_TARGET
from ..targets import for_config
from .config import check_config
from .device import compute_device
from .heap import reused_heap
from .integrity import check_integrity
from .logits import check_logits
from .prompts import extension_samples, load_prompts, qwen_ranks, tiktoken_encoder
from .report import CHECKS, VerifyOptions, VerifyResult, check, with_fixes
from .tensors import carried_failures, check_tensors
from .tokenizer import check_tokenizer


def _read_config(dst: Path) -> dict:
    """The folder's config.json; a folder that is not there is bad input, a broken one a failed check."""
    if not dst.is_dir():
        raise InputError("the converted folder does not exist", path=dst, fix="give the folder convert wrote")
    try:
        return read_object(dst / "config.json", what="is missing or not a JSON object", fix="convert again")
    except InputError as exc:
        raise FolderCheckFailed(exc.message, path=exc.path, fix=exc.fix) from None


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


# The one declaration of the checks: their order, and what progress says as each starts. Both ways
# of verifying (against the source, against a golden file) run exactly these, in this order.
STEPS = (("integrity", "checking file hashes"), ("tensors", "comparing tensors"), ("config", None),
         ("tokenizer", "comparing tokenizers"), ("logits", None))
assert tuple(name for name, _ in STEPS) == CHECKS


def _run(subject, progress: Progress) -> dict[str, dict]:
    """Every check of STEPS, by the subject's method of that name (which sees the verdicts so far)."""
    checks: dict[str, dict] = {}
    for name, note in STEPS:
        if note is not None:
            progress.note(note)
        t0 = time.perf_counter()
        checks[name] = getattr(subject, name)(checks)
        checks[name].setdefault("seconds", round(time.perf_counter() - t0, 2))
    return checks


@dataclass
class _AgainstSource:
    """The checks of a converted folder against its Qwen checkpoint."""

    ckpt: Checkpoint
    dst: Path
    raw: dict
    dst_tensors: dict
    options: VerifyOptions
    adapter: QwenAdapter | None
    progress: Progress

    def __post_init__(self):
        self.target = for_config(self.raw)
        self.device = compute_device(self.options.device)
        self.texts, self.chats = load_prompts(self.options.prompts, self.options.quick)
        self.encode = tiktoken_encoder(self.ckpt.vocab, self.ckpt.extra_vocab)

    def integrity(self, checks):
        return check_integrity(self.dst)

    def tensors(self, checks):
        found = check_tensors(self.ckpt, self.dst_tensors, quantized="quantization_config" in self.raw,
                              adapter=self.adapter, target=self.target)
        if VALUE_HEAD not in self.ckpt.companions:
            return found
        carried = carried_failures(self.ckpt, self.dst)  # the value head: the source's, byte for byte
        return {**found, "passed": found["passed"] and not carried, "failures": found["failures"] + carried,
                "value_head": "carried, identical" if not carried else "differs"}

    def config(self, checks):
        self.side = OutputSide(self.dst, self.target, self.device)
        q = self.ckpt.quantization
        return check_config(self.ckpt.config, self.side.config, self.raw, self.target,
                            q.output_config() if q else None, mlp_bias=has_mlp_bias(self.ckpt))

    def tokenizer(self, checks):
        """Qwen's ids on the prompt texts and, for an extended vocabulary, on texts that use the
        extension's tokens (read as Qwen reads them, apart from the converter)."""
        extended = extension_samples(qwen_ranks(self.ckpt.vocab, self.ckpt.extra_vocab))
        return check_tokenizer(self.dst, self.encode, [*self.texts, *extended], self.chats,
                               _is_chat(self.dst, self.ckpt))

    @reused_heap()
    def logits(self, checks):
        o = self.options
        return check_logits(self.ckpt, self.side, self.encode, self.texts, self.chats, quick=o.quick,
                            lossy=bool(checks["tensors"].get("lossy_cast")), greedy_tokens=o.greedy_tokens,
                            progress=self.progress, long_prompt=o.long_prompt, adapter=self.adapter)


def verify(src: str | Path | Checkpoint, dst: str | Path, options: VerifyOptions | None = None, *,
           base: str | Path | None = None, adapter=None, progress: Progress | None = None,
           display: Path | None = None, **settings) -> VerifyResult:
    """Run every check of `dst` against `src` (a folder, a hub id, or an opened checkpoint); never
    raises for a failed check (see raise_if_failed). `options` (or its fields as keywords, e.g.
    quick=True) say which prompts; `adapter` (a folder or QwenAdapter): `dst` was written with this
    LoRA adapter merged in (`convert --adapter --merge`). The folder's config.json says its layout
    (targets/); transformers' classes of that layout are the consumer checked."""
    options = replace(options or VerifyOptions(), **settings)
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
    checks = _run(_AgainstSource(ckpt, dst, raw, dst_tensors, options, adapter, progress), progress)
    return _result(checks, str(ckpt.folder), display or dst, options.quick, t0)


@dataclass
class _AgainstGolden:
    """The checks of a converted folder against a golden file: everything that needs no source."""

    golden: object  # verify/golden.Golden
    dst: Path
    raw: dict
    dst_tensors: dict
    progress: Progress
    device: object  # torch.device

    def __post_init__(self):
        self.target = for_config(self.raw)
        self.against = {"against": str(self.golden.path)}

    def integrity(self, checks):
        from .replay import check_integrity_golden

        return check_integrity_golden(self.golden, self.dst) or {**check_integrity(self.dst), **self.against}

    def tensors(self, checks):
        from . import golden as golden_mod
        from .digests import check_tensors_golden

        if self.golden.meta.get("tensor_digests"):
            return check_tensors_golden(self.golden.meta["tensor_digests"], self.dst_tensors,
                                        str(self.golden.path), self.progress)
        note = f"against a golden file: {golden_mod.OLDER}"
        return check(None, note, note=note, **self.against)

    def config(self, checks):
        self.side = OutputSide(self.dst, self.target, self.device)
        meta = self.golden.meta
        return {**check_config(self.golden.config, self.side.config, self.raw, self.target,
                               meta.get("quantization"), mlp_bias=meta.get("mlp_bias", False),
                               recorded_target=meta.get("target", DEFAULT_TARGET),
                               recorded_positions=(meta.get("context") or {}).get("context_tokens")),
                **self.against}

    def tokenizer(self, checks):
        meta = self.golden.meta
        texts, chats = meta["prompt_set"]["texts"], meta["prompt_set"]["chats"]
        return {**check_tokenizer(self.dst, self.golden.encode, texts, chats, meta["chat"]), **self.against}

    @reused_heap()
    def logits(self, checks):
        from .replay import check_logits_golden

        return check_logits_golden(self.golden, self.side, self.progress)


def verify_golden(dst: str | Path, golden_file: str | Path, *, progress: Progress | None = None,
                  display: Path | None = None, device: str = "auto") -> VerifyResult:
    """Every check that needs no source, against a golden file (see verify/golden.py); `device`:
    where the logits check computes (verify/device.py)."""
    from . import golden as golden_mod
    from .replay import check_same_model

    device = compute_device(device)
    progress = progress or NullProgress()
    t0 = time.perf_counter()
    dst = Path(dst)
    golden = golden_mod.read(golden_file)
    raw = _read_config(dst)
    dst_tensors = read_output_tensors(dst)
    check_same_model(golden, dst_tensors, dst)
    checks = _run(_AgainstGolden(golden, dst, raw, dst_tensors, progress, device), progress)
    quick = bool(golden.meta["prompt_set"]["quick"])
    return _result(checks, f"golden file {golden.path}", display or dst, quick, t0)
