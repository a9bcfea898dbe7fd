"""The main job as a library: one `run` that checks everything, writes into a staging folder,
verifies there, records a golden file, publishes, then converts the adapter; the CLI and `batch`
call it and only parse and render.

`plan(...)` does every check before a byte is written — the source, the options, and every path
the run reads and writes (paths.py: the record is `Run.reads` and `Run.writes`); `execute(run)`
does the work. A failed verify raises `VerificationFailed` (its `result` attribute holds the
verdict) after the report, the JUnit file and the GitHub summary are written, and nothing is
published.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import convert, manifest
from .convert import Prepared, prepare, write
from .options import ConvertOptions
from .errors import OutputError
from .lora.convert import PreparedAdapter, prepare_adapter, write_adapter
from .paths import real
from .progress import NullProgress, Progress
from .verdicts import check, check_output_files, record_golden, report, reports, write_golden  # noqa: F401 (API)
from .verify.report import VerifyOptions, VerifyResult

Options = ConvertOptions  # the name this module's API had

__all__ = ["AdapterStep", "ConvertOptions", "Options", "Run", "RunResult", "VerifyOptions", "check",
           "convert_adapter", "execute", "plan", "record_golden", "run", "write_golden"]


@dataclass(frozen=True)
class AdapterStep:
    """A PEFT LoRA adapter trained on the source: converted beside the model (`out`, default
    DST-adapter), or folded into the weights (`merge`)."""

    src: Path
    out: Path | None = None
    merge: bool = False


@dataclass
class Run:
    """A checked run, before anything is written."""

    prepared: Prepared
    verify: VerifyOptions | None  # None: published without verifying
    golden: Path | None = None
    adapter: PreparedAdapter | None = None  # the adapter converted beside the model, once aimed
    adapter_step: AdapterStep | None = None

    @property
    def reads(self) -> list[Path]:
        """Every path the run reads (convert.prepare built the list; paths.py: never written)."""
        return self.prepared.reads

    @property
    def writes(self) -> list[Path]:
        """Every path the run writes: the output folder, the golden, report and JUnit files, the
        adapter's output folder (bind_output checks them against the reads and each other)."""
        v = self.verify or VerifyOptions()
        paths = [self.prepared.out, self.golden, v.report, v.junit, self.adapter and self.adapter.out]
        return [p for p in paths if p is not None]


@dataclass
class RunResult:
    out: Path
    record: dict  # the published conversion.json
    verified: VerifyResult | None = None
    golden: dict | None = None  # the golden file's header
    adapter_out: Path | None = None
    adapter_verified: VerifyResult | None = None
    notes: list[str] = field(default_factory=list)


def plan(src, out, options: ConvertOptions = ConvertOptions(),
         verify: VerifyOptions | None = VerifyOptions(), *,
         golden: Path | None = None, adapter: AdapterStep | None = None) -> Run:
    """Every check of a run: the source and options (convert.prepare), then with `out` every
    output (see bind_output); `out` None plans only (batch binds one once it knows the folder's state)."""
    if adapter is not None and adapter.merge:
        options = replace(options, merge_adapter=str(adapter.src))
    if verify is not None or golden is not None:  # an accelerator that is not there: before any work
        from .verify.device import compute_device

        compute_device((verify or VerifyOptions()).device)
    run = Run(prepare(src, options), verify, golden, adapter_step=adapter)
    return run if out is None else bind_output(run, out, force=options.force)


def bind_output(run: Run, out, *, force: bool = False) -> Run:
    """The run, to be written to `out`: the output folder, the golden, report and JUnit files and
    the adapter with its output folder, checked against everything the run reads and each other."""
    prepared = convert.bind_output(run.prepared, out, force=force)
    step, adapter_out = run.adapter_step, None
    if step is not None and not step.merge:
        adapter_out = Path(step.out or prepared.out.parent / f"{prepared.out.name}-adapter")
    # the golden file is replaced only with --force
    check_output_files([(run.golden, "the golden file", force), *reports(run.verify)], prepared.reads,
                       inside=[p for p in (prepared.out, adapter_out) if p is not None])
    converted = None
    if adapter_out is not None:
        converted = prepare_adapter(step.src, adapter_out, base=prepared.plan.checkpoint,
                                    base_name=str(prepared.out.resolve()), force=force,
                                    hash=prepared.options.hash, protect=[*prepared.reads, prepared.out])
    aimed = replace(run, prepared=prepared, adapter=converted)
    writes = [real(path) for path in aimed.writes]
    if len(set(writes)) < len(writes):
        raise OutputError("two outputs of this run are the same path (--golden, --report, --junit, "
                          "--adapter-out)",
                          path=next(p for p in writes if writes.count(p) > 1), fix="give each its own path")
    return aimed


def execute(run: Run, *, progress: Progress | None = None, show=None, verify_lock=None) -> RunResult:
    """Write, verify in staging, record the golden file, publish; then the adapter the same way.
    `show(result, options)` sees each verdict as it is made (the CLI prints it); `verify_lock` keeps
    concurrent runs (batch) to one verify at a time."""
    progress = progress or NullProgress()
    prepared = run.prepared
    result = RunResult(prepared.out, {})

    def before_publish(staging: Path) -> None:
        if run.verify is not None:
            from .verify import verify

            with verify_lock or nullcontext():
                verdict = verify(prepared.plan.checkpoint, staging, run.verify, progress=progress,
                                 display=prepared.out, adapter=prepared.adapter)
            result.verified = verdict
            manifest.record_verification(staging, verdict)
            report(verdict, run.verify, show)
        if run.golden is not None:
            checks = run.verify or VerifyOptions()
            result.golden = record_golden(prepared.plan.checkpoint, run.golden, plan=prepared.plan,
                                          context=prepared.context, staging=staging, quick=checks.quick,
                                          progress=progress, device=checks.device)
        if prepared.options.card:
            from . import card

            card.write(staging, prepared.out.name, result.verified, prepared.plan.target.architecture)
        progress.note("publishing")  # the last point a signal stops the run (batch)

    result.record = write(prepared, progress=progress, before_publish=before_publish)
    if run.adapter is not None:
        result.adapter_out = run.adapter.out
        result.adapter_verified = _adapter(run, progress, show)
    return result


def _adapter(run: Run, progress: Progress, show) -> VerifyResult | None:
    """The adapter step: written, verified against the model just published, published."""
    checks = run.verify and replace(run.verify, report=None, junit=None)  # those are the model's
    return _write_verified_adapter(run.adapter, run.prepared.out, checks, progress, show,
                                   card=run.prepared.options.card)


def _write_verified_adapter(prepared: PreparedAdapter, llama_base: Path | None, checks: VerifyOptions | None,
                            progress: Progress, show, card: bool = True) -> VerifyResult | None:
    verdict = None

    def before_publish(staging: Path) -> None:
        nonlocal verdict
        if checks is not None and prepared.base is not None and llama_base is not None:
            from .lora.verify import verify_adapter

            verdict = verify_adapter(prepared.base, llama_base, prepared.adapter, staging, quick=checks.quick,
                                     display=prepared.out)
            report(verdict, checks, show)
        if card:
            from . import card as cards

            cards.write_adapter(staging, prepared.out.name, verdict)

    write_adapter(prepared, progress=progress, before_publish=before_publish)
    return verdict


def convert_adapter(src, out, *, base=None, llama_base: Path | None = None, base_name: str | None = None,
                    force: bool = False, hash: str = "blake3", verify: VerifyOptions | None = VerifyOptions(),
                    progress: Progress | None = None, show=None, planned=None,
                    card: bool = True) -> VerifyResult | None:
    """`adapter SRC OUT` as a library call: convert a PEFT adapter, verified before publishing
    when both its Qwen `base` and that base converted (`llama_base`) are given; `planned(prepared)`
    sees the checked plan. Returns the verdict (None: not verified)."""
    if base_name is None and llama_base is not None:
        base_name = str(Path(llama_base).resolve())
    prepared = prepare_adapter(src, out, base=base, base_name=base_name, force=force, hash=hash,
                               protect=[llama_base] if llama_base is not None else [])
    check_output_files(reports(verify), prepared.reads, inside=[prepared.out])
    if planned is not None:
        planned(prepared)
    checkable = prepared.base is not None and llama_base is not None
    if verify is not None and not checkable:
        (progress or NullProgress()).note("not verified: give --base (the Qwen model) and --llama-base "
                                          "(its conversion)")
    return _write_verified_adapter(prepared, llama_base, verify, progress or NullProgress(), show, card)


def run(src, out, options: ConvertOptions = ConvertOptions(),
        verify: VerifyOptions | None = VerifyOptions(), *,
        golden: Path | None = None, adapter: AdapterStep | None = None, progress: Progress | None = None,
        show=None) -> RunResult:
    """Convert `src` into `out` and verify it before publishing (`verify=None`: without); see plan."""
    run_ = plan(src, out, options, verify, golden=golden, adapter=adapter)
    return execute(run_, progress=progress, show=show)
