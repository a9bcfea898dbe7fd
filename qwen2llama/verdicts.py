"""Verify and golden recording as library calls, and where a verdict goes: `check` (the `verify`
command), `report` (the report, JUnit, the GitHub summary, the screen), `record_golden` and
`write_golden` (the `golden` command). The pipeline's run uses `report` and `record_golden` too."""
from __future__ import annotations

from pathlib import Path

from . import manifest
from .errors import InputError, OutputError
from .paths import check_file_output, output_path, reads_of
from .progress import Progress
from .publish import write_file
from .verify.report import VerifyOptions, VerifyResult


def reports(options: VerifyOptions | None) -> list[tuple]:
    """(path, what, may replace) of the verdict's files: rewritten each run, as CI does."""
    if options is None:
        return []
    return [(options.report, "the report", True), (options.junit, "the JUnit file", True)]


def check_output_files(files: list[tuple], reads: list[Path], inside: list[Path]) -> None:
    """Every single-file output given (paths.check_file_output), and no two of them one file
    (after the OS's resolution), before anything is written."""
    given = [(output_path(path), what) for path, what, _ in files if path is not None]
    for k, (path, what) in enumerate(given):
        twin = next((w for p, w in given[:k] if p == path), None)
        if twin is not None:
            raise OutputError(f"{twin} and {what} are the same file", path=path, fix="give each its own path")
    for path, what, replace_ok in files:
        if path is not None:
            check_file_output(path, reads, force=replace_ok, what=what, inside=inside)


def report(result: VerifyResult, options: VerifyOptions, show=None) -> None:
    """Write the verdict where the options say (report, JUnit, GitHub step summary), show it,
    and raise VerificationFailed if it failed."""
    from . import summary

    if options.report is not None:
        result.write(options.report)
    if options.junit is not None:
        Path(options.junit).write_text(summary.verify_junit(result), encoding="utf-8")
    if options.github_summary:
        summary.append_github_summary(summary.verify_markdown(result))
    if show is not None:
        show(result, options)
    result.raise_if_failed()


def check(src, dst, options: VerifyOptions = VerifyOptions(), *, golden: Path | None = None, base=None,
          adapter: Path | None = None, llama_adapter: Path | None = None, progress: Progress | None = None,
          show=None) -> VerifyResult:
    """`verify` as a library call: DST against SRC (or against a golden file, or a converted
    adapter on DST against the Qwen adapter), with the verdict written as the options say."""
    if golden is not None and src is not None:
        raise InputError("with --golden, give only the converted folder",
                         fix="qwen2llama verify DST --golden FILE")
    if golden is None and src is None:
        raise InputError("verify needs SRC and DST, or DST and --golden FILE",
                         fix="qwen2llama verify SRC DST, or qwen2llama verify DST --golden FILE")
    # never into a folder being verified
    check_output_files(reports(options), reads_of(src, dst, golden, base, adapter, llama_adapter), inside=[])
    if llama_adapter is not None:
        if adapter is None or golden is not None:
            raise InputError("--llama-adapter needs SRC, DST and --adapter (the Qwen adapter it came from)",
                             fix="qwen2llama verify SRC DST --adapter QWEN_ADAPTER --llama-adapter "
                                 "LLAMA_ADAPTER")
        from .lora.verify import verify_adapter

        result = verify_adapter(src, dst, adapter, llama_adapter, quick=options.quick)
    elif golden is not None:
        from .verify import verify_golden

        result = verify_golden(dst, golden, progress=progress, display=dst, device=options.device)
    else:
        from .verify import verify

        result = verify(src, dst, options, progress=progress, display=dst, base=base, adapter=adapter)
    report(result, options, show)
    return result


def record_golden(ckpt, path: Path, *, plan=None, staging: Path | None = None, quick: bool = False,
                  prompts: Path | None = None, long_prompt: bool | None = None,
                  progress: Progress | None = None, context=None, device: str = "auto") -> dict:
    """Record a golden file for `ckpt` at `path` (whole or not at all); `staging`: the folder the
    same run wrote, whose file digests it keeps; `context` (context.Context): a --context output's,
    whose reference keeps T's NTK alpha; `device`: where the reference computes (verify/device.py).
    Returns its header."""
    from .verify import golden as golden_mod
    from .verify.device import compute_device

    files = None
    if staging is not None:
        written = manifest.read(staging)
        files = {"hash": written["hash"], "files": written["files"]}
    tensors, meta = golden_mod.record(ckpt, prompts=prompts, quick=quick, long_prompt=long_prompt,
                                      progress=progress, files=files, plan=plan, context=context,
                                      device=compute_device(device))
    write_file(path, lambda tmp: golden_mod.write(tmp, tensors, meta))
    return meta


def write_golden(src, path: Path, *, base=None, dtype: str | None = None, dequantize: str | None = None,
                 target: str | None = None, context: int | None = None, force: bool = False,
                 **recording) -> dict:
    """`golden SRC FILE` as a library call: the digests describe the conversion with `dtype` /
    `dequantize` into the layout `target`; `path` obeys the path rule and is replaced only with `force`."""
    from .plan import build_plan
    from .sources import open_source

    from .verify.device import compute_device

    compute_device(recording.get("device"))  # a bad --device before any work
    ckpt = open_source(src, base)
    check_file_output(path, reads_of(ckpt), force=force, what="the golden file")
    plan = build_plan(ckpt, dtype, dequantize, target=target)
    from .context import context_for

    return record_golden(ckpt, Path(path), plan=plan, context=context_for(ckpt.config, context, path),
                         **recording)
