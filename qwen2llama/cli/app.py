"""The typer app, the one error wrapper every command goes through, and the shared arguments.

Library errors (`Qwen2LlamaError`) print as one short block with the file and the fix and exit
with their code (2 = bad input, 1 = a verify check failed); `--debug` shows the traceback instead.
"""
from __future__ import annotations

import functools
import os
from inspect import Parameter, signature
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperCommand

from .. import __version__
from ..errors import Qwen2LlamaError
from ..interrupts import release
from ..targets import TARGETS
from . import render
from .literal import LiteralConsole

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Convert Qwen v1 checkpoints (QWenLMHeadModel) into the LLaMA layout, and prove "
                       "the result computes the same function.")
# every command prints through these: outside strings go through literal.shown
err = LiteralConsole(stderr=True, highlight=False, soft_wrap=True)
out = LiteralConsole(highlight=False, soft_wrap=True)

# Arguments and options shared by several commands.
Src = Annotated[str, typer.Argument(
    metavar="SRC", help="Qwen v1 checkpoint: a folder (config.json, weights, qwen.tiktoken) or a hub id "
         "owner/name[@revision].")]
Dst = Annotated[Path,
                typer.Argument(metavar="DST",
                               help="Output folder; created atomically, must not exist unless --force.")]
DtypeOpt = Annotated[Optional[str], typer.Option(
    "--dtype", help="bfloat16 | float16 | float32 (default: keep the source's).")]
DequantizeOpt = Annotated[Optional[str], typer.Option(
    "--dequantize", help="GPTQ source: write dense bfloat16 | float16 | float32 weights instead of a LLaMA "
                         "GPTQ folder.")]
KindOpt = Annotated[str, typer.Option("--kind",
                                      help="auto | chat | base: chat models also stop on <|im_end|>.")]
ShardSizeOpt = Annotated[str, typer.Option("--shard-size", help="Largest shard, e.g. 5GB, 500MB, 2GiB.")]
TargetOpt = Annotated[str, typer.Option(
    "--target", help="The output layout: "
                     + ", ".join(f"{t.name} ({t.architecture})" for t in TARGETS.values())
                     + " (docs/targets.md: which runtime loads which best).")]
IgnoreOpt = Annotated[Optional[list[str]], typer.Option(
    "--ignore", help="Leave out source files matching this glob on purpose (repeatable; recorded in "
                     "conversion.json); files that hold weights are never left out silently.")]
ContextOpt = Annotated[Optional[int], typer.Option(
    "--context", help="Tokens of context past seq_length: rope_theta set to Qwen's own for a prompt this "
                      "long (exact for prompts of its band; see docs/long-context.md).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace DST, once the new one is complete.",
                                        metavar="")]
QuickOpt = Annotated[bool, typer.Option("--quick", help="Short prompt set, no long-context probe.",
                                        metavar="")]
ReportOpt = Annotated[Optional[Path], typer.Option("--report",
                                                   help="Write the full verify report (JSON) here.")]
PromptsOpt = Annotated[Optional[Path], typer.Option("--prompts",
                                                    help="Prompt set (JSON) instead of the bundled one.")]
BaseOpt = Annotated[Optional[str], typer.Option(
    "--base", help="Folder or hub id supplying files SRC lacks (qwen.tiktoken, generation_config.json, "
                   "LICENSE), e.g. for a Trainer checkpoint.")]
GoldenOpt = Annotated[Optional[Path], typer.Option(
    "--golden", help="Golden file: verify against it instead of the source (see `golden`).")]
JunitOpt = Annotated[Optional[Path], typer.Option("--junit", help="Write JUnit XML: a test case per check.")]
GreedyOpt = Annotated[Optional[int], typer.Option(
    "--greedy-tokens", help="Greedy tokens to continue each of 3 prompts with (default: 8, 4 with --quick, "
                            "0 above 4 GB, where each token re-reads the model).")]
CardOpt = Annotated[bool, typer.Option(
    "--card/--no-card", help="Write README.md, a model card stating what was converted and how it "
                             "verified (docs/conversion.md).", metavar="")]
DeviceOpt = Annotated[str, typer.Option(
    "--device", help="auto | cpu | cuda | mps: where verify's float32 forward runs (auto: an accelerator "
                     "when torch sees one).")]
LongPromptOpt = Annotated[Optional[bool], typer.Option(
    "--long-prompt/--no-long-prompt",
    help="Include the seq_length-token prompt (default: when it costs minutes, not hours).", metavar="")]


def command(fn):
    """Register `fn` as a command; errors and interrupts become short messages and exit codes.
    The registered function also takes typer's Context, to see the root's --debug."""
    @functools.wraps(fn)
    def run(ctx: typer.Context, *args, **kwargs):
        if ctx.find_root().obj["debug"]:
            release()
            return fn(*args, **kwargs)
        try:
            release()  # a signal held since the start is raised here, inside the wrapper
            return fn(*args, **kwargs)
        except Qwen2LlamaError as exc:
            render.error(err, "check failed" if exc.exit_code == 1 else "error", exc.message,
                         exc.path, exc.fix)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]: nothing was published; temporary files were removed")
            raise typer.Exit(130) from None
        except OSError as exc:
            render.error(err, "error", str(exc.strerror or exc), exc.filename,
                         "check the path, its permissions and the free disk space (--debug shows details)")
            raise typer.Exit(2) from None
        except MemoryError:
            render.error(err, "error", "out of memory (run with --debug for details)")
            raise typer.Exit(2) from None

    params = signature(fn, eval_str=True)
    ctx_param = Parameter("ctx", Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
    run.__signature__ = params.replace(parameters=[ctx_param, *params.parameters.values()])
    return app.command(cls=UsageCommand)(run)


class UsageCommand(TyperCommand):
    """The usage line as familiar CLIs write it: `convert [OPTIONS] SRC DST`, arguments in capitals
    (typer writes a required argument as {src}, and an argument with an empty metavar as [])."""

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [p.removeprefix("{").removesuffix("}").upper() for p in super().collect_usage_pieces(ctx)]
        return [p for p in pieces if p != "[]"]


def _print_version(value: bool) -> None:
    if value:
        out.print(f"qwen2llama {__version__}")
        raise typer.Exit(0)


@app.callback()
def main(ctx: typer.Context,
         debug: Annotated[bool, typer.Option("--debug",
                                             help="Show tracebacks instead of short messages.",
                                             metavar="")] = False,
         version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                               help="Print the version and exit.", metavar="")] = False):
    ctx.obj = {"debug": debug}


def entry() -> None:
    # Huge pages for torch's large CPU tensors (read before its first large allocation): verify
    # casts every layer into fresh float32 buffers, and with 4 KiB pages the kernel's page faults
    # cost more than the cast (measured with verify/heap.py: peak RSS 1.85 -> 1.59 GiB, the same
    # speed, at Qwen-7B widths). A value the user set is kept.
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    app(prog_name="qwen2llama")

