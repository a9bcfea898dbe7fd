"""`qwen2llama adapter`: a PEFT LoRA adapter trained on Qwen v1, for the LLaMA layout; and the
adapter step of `convert --adapter` and `verify --llama-adapter`."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from . import render
from .app import QuickOpt, ReportOpt, command, err, out

AdapterSrc = Annotated[Path,
                       typer.Argument(help="PEFT adapter folder (adapter_config.json, adapter_model.*).")]


def verify_and_report_adapter(src, llama_base: Path, qwen_adapter: Path, llama_adapter: Path, *, quick: bool,
                              report: Path | None, display: Path | None = None) -> None:
    """Verify a converted adapter, show the summary, write the report; raise if it failed."""
    from ..verify.adapter import verify_adapter

    err.print("verify: Qwen reference + adapter vs LLaMA base + PEFT adapter (float32)")
    result = verify_adapter(src, llama_base, qwen_adapter, llama_adapter, quick=quick)
    if display is not None:
        result["output"] = str(display)
    render.verify_summary(out, result)
    if report is not None:
        result.write(report)
        out.print(f"report: {report}")
    result.raise_if_failed()


def convert_adapter_step(src, qwen_adapter: Path, adapter_out: Path, llama_base: Path | None, *, force: bool,
                         verify: bool, quick: bool, report: Path | None, hash: str = "blake3",
                         base_name: str | None = None) -> None:
    """Convert an adapter; with its Qwen base `src` and that base converted into `llama_base`,
    verify it against both before publishing. `base_name` defaults to `llama_base`."""
    from ..adapters import prepare_adapter, write_adapter

    if base_name is None and llama_base is not None:
        base_name = str(Path(llama_base).resolve())
    prepared = prepare_adapter(qwen_adapter, adapter_out, base=src, base_name=base_name, force=force,
                               hash=hash, protect=[llama_base] if llama_base is not None else [])
    render.adapter_plan(out, prepared)
    checkable = prepared.base is not None and llama_base is not None
    if verify and not checkable:
        err.print("[yellow]note[/]: not verified; give --base (the Qwen model) and --llama-base "
                  "(its conversion)")

    def before(staging):
        if verify and checkable:
            verify_and_report_adapter(prepared.base, llama_base, qwen_adapter, staging, quick=quick,
                                      report=report,
                                      display=adapter_out)

    write_adapter(prepared, progress=render.TerminalProgress(err), before_publish=before)
    out.print(f"[green]wrote[/] {adapter_out}")


@command
def adapter(src_adapter: AdapterSrc,
            dst: Annotated[Path, typer.Argument(help="Output folder for the LLaMA-layout adapter.")],
            base: Annotated[Optional[str], typer.Option(
                "--base", help="The Qwen v1 model the adapter was trained on (folder or hub id): checks the "
                               "shapes, and with --llama-base verifies the result.")] = None,
            llama_base: Annotated[Optional[Path], typer.Option(
                "--llama-base", help="That model converted by qwen2llama: written as "
                                     "base_model_name_or_path, "
                                     "and loaded with PEFT to verify.")] = None,
            base_name: Annotated[Optional[str], typer.Option(
                "--base-name", help="base_model_name_or_path to write (default: --llama-base, else "
                                    "the source's).")]
            = None,
            force: Annotated[bool, typer.Option("--force",
                                                help="Replace DST, once the new one is complete.")] = False,
            verify: Annotated[bool, typer.Option(
                "--verify/--no-verify",
                help="Verify before publishing (needs --base and --llama-base).")] = True,
            quick: QuickOpt = False, report: ReportOpt = None):
    """Convert a PEFT LoRA adapter trained on Qwen v1 into one for the converted LLaMA model.

    Example: qwen2llama adapter ./my-qwen-lora ./my-llama-lora --base ./Qwen-7B-Chat \
             --llama-base ./Qwen-7B-Chat-llama
    """
    if report is not None:
        from ..paths import check_file_output, reads_of

        check_file_output(report, reads_of(src_adapter, base, llama_base), force=True, what="the report",
                          inside=[dst])
    convert_adapter_step(base, src_adapter, dst, llama_base, force=force, verify=verify, quick=quick,
                         report=report,
                         base_name=base_name)
