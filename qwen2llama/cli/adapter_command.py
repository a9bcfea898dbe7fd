"""`qwen2llama adapter`: a PEFT LoRA adapter trained on Qwen v1, for the LLaMA layout."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from . import render
from .literal import shown
from .app import CardOpt, JunitOpt, QuickOpt, ReportOpt, command, err, out
from .commands import reports_need_verify, show_verdict

AdapterSrc = Annotated[Path,
                       typer.Argument(help="PEFT adapter folder (adapter_config.json, adapter_model.*).")]


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
                                                help="Replace DST, once the new one is complete.",
                                                metavar="")] = False,
            verify: Annotated[bool, typer.Option(
                "--verify/--no-verify",
                help="Verify before publishing (needs --base and --llama-base).", metavar="")] = True,
            quick: QuickOpt = False, report: ReportOpt = None, junit: JunitOpt = None, card: CardOpt = True):
    """Convert a PEFT LoRA adapter trained on Qwen v1 into one for the converted LLaMA model.

    Example: qwen2llama adapter ./my-qwen-lora ./my-llama-lora --base ./Qwen-7B-Chat \
             --llama-base ./Qwen-7B-Chat-llama
    """
    from ..pipeline import VerifyOptions, convert_adapter

    reports_need_verify(verify, report, junit)
    convert_adapter(src_adapter, dst, base=base, llama_base=llama_base, base_name=base_name, force=force,
                    verify=VerifyOptions(quick=quick, report=report, junit=junit) if verify else None,
                    progress=render.TerminalProgress(err), show=show_verdict,
                    planned=lambda prepared: render.adapter_plan(out, prepared), card=card)
    out.print(f"[green]wrote[/] {shown(dst)}")
