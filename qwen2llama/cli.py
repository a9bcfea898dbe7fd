"""The `qwen2llama` command line: parse, call the library, render progress and reports.

Errors from the library (`Qwen2LlamaError`) print as one short block with the file and the
fix, and exit with their code (2 = bad input, 1 = a verify check failed); `--debug` shows
the traceback instead.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from . import __version__
from .errors import Qwen2LlamaError
from .progress import Progress

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Convert Qwen v1 checkpoints (QWenLMHeadModel) into the LLaMA layout, and prove "
                       "the result computes the same function.")
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)
STATE = {"debug": False}

Src = Annotated[Path, typer.Argument(help="Qwen v1 checkpoint folder (config.json, weights, qwen.tiktoken).")]
Dst = Annotated[Path, typer.Argument(help="Output folder; created atomically, must not exist unless --force.")]
DtypeOpt = Annotated[Optional[str], typer.Option("--dtype", help="bfloat16 | float16 | float32 (default: keep the source's).")]
KindOpt = Annotated[str, typer.Option("--kind", help="auto | chat | base: chat models also stop on <|im_end|>.")]


class TerminalProgress(Progress):
    """A rich bar on a terminal; plain lines every 10% in a log."""

    def __init__(self, console: Console):
        self.console = console
        self.bar = None

    def start(self, label, total, unit="B"):
        self.label, self.total, self.unit = label, max(total, 1), unit
        self.done, self.next_line, self.t0 = 0, 0.1, time.monotonic()
        if self.console.is_terminal:
            from rich.progress import BarColumn, DownloadColumn, MofNCompleteColumn, TimeRemainingColumn
            from rich.progress import Progress as Bar

            count = DownloadColumn() if unit == "B" else MofNCompleteColumn()
            self.bar = Bar("[progress.description]{task.description}", BarColumn(), count, TimeRemainingColumn(),
                           console=self.console, transient=True)
            self.bar.start()
            self.task = self.bar.add_task(label, total=self.total)

    def _amount(self, n):
        return f"{n / 1e9:.2f} GB" if self.unit == "B" else f"{n} {self.unit}"

    def advance(self, n):
        self.done += n
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done)
        elif self.done / self.total >= self.next_line:
            self.console.print(f"{self.label}: {100 * self.done / self.total:.0f}% "
                               f"({self._amount(self.done)} of {self._amount(self.total)})")
            self.next_line = (int(10 * self.done / self.total) + 1) / 10

    def finish(self):
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
        secs = time.monotonic() - self.t0
        rate = f" ({self.done / 1e9 / max(secs, 1e-9):.2f} GB/s)" if self.unit == "B" else ""
        self.console.print(f"{self.label}: {self._amount(self.done)} in {secs:.1f} s{rate}")

    def note(self, message):
        self.console.print(f"{message}...")


def run(fn):
    """Call fn, turning library errors and interrupts into short messages and exit codes."""
    if STATE["debug"]:
        return fn()
    try:
        return fn()
    except Qwen2LlamaError as exc:
        kind = "check failed" if exc.exit_code == 1 else "error"
        err.print(f"[bold red]{kind}:[/] {escape(exc.message)}")
        if exc.path:
            err.print(f"  file: {escape(exc.path)}")
        if exc.fix:
            err.print(f"  fix:  {escape(exc.fix)}")
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: nothing was published; temporary files were removed")
        raise typer.Exit(130) from None
    except OSError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc.strerror or exc))}")
        if exc.filename:
            err.print(f"  file: {escape(str(exc.filename))}")
        err.print("  fix:  check the path, its permissions and the free disk space (--debug shows details)")
        raise typer.Exit(2) from None
    except MemoryError:
        err.print("[bold red]error:[/] out of memory (run with --debug for details)")
        raise typer.Exit(2) from None


def _sigterm(signum, frame):
    raise KeyboardInterrupt


def _print_version(value: bool) -> None:
    if value:
        out.print(f"qwen2llama {__version__}")
        raise typer.Exit(0)


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks instead of short messages.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
):
    STATE["debug"] = debug
    signal.signal(signal.SIGTERM, _sigterm)


def _print_plan(sp) -> None:
    from .dtypes import NAME_OF

    plan = sp.plan
    c = plan.checkpoint.config
    out.print(f"source:  {plan.checkpoint.folder} ({plan.checkpoint.format}, {len(plan.checkpoint.files)} file(s), "
              f"config generation {c.generation})")
    out.print(f"model:   hidden {c.hidden_size}, {c.num_layers} layers, {c.num_heads} heads x {c.head_dim}, "
              f"MLP {c.mlp_width}, vocab rows {c.vocab_rows}, seq_length {c.seq_length}, eps {c.layer_norm_epsilon}, "
              f"rope base {c.rotary_emb_base:g}, dynamic NTK {c.use_dynamic_ntk}, logn {c.use_logn_attn}")
    out.print(f"kind:    {'chat' if sp.chat else 'base'} ({sp.chat_reason})")
    copies = sum(t.is_byte_copy for t in plan.tensors)
    zeros = sum(t.source is None for t in plan.tensors)
    out.print(f"output:  {len(plan.tensors)} tensors ({copies} byte copies, {len(plan.tensors) - copies - zeros} cast "
              f"to {NAME_OF[plan.dtype]}, {zeros} zero o_proj biases), {plan.total_bytes / 1e9:.3f} GB "
              f"in {len(sp.shards)} shard(s)")
    if plan.dropped:
        out.print(f"dropped: {', '.join(plan.dropped)} (buffers, not weights)")


@app.command()
def inspect(src: Src,
            shard_size: Annotated[str, typer.Option(help="Largest shard, e.g. 5GB, 500MB, 2GiB.")] = "5GB",
            dtype: DtypeOpt = None, kind: KindOpt = "auto",
            tensors: Annotated[bool, typer.Option("--tensors", help="List every output tensor and its source.")] = False):
    """Show what was detected and the conversion plan, without writing anything."""
    from .convert import prepare

    def go():
        sp = prepare(src, shard_size=shard_size, dtype=dtype, kind=kind)
        _print_plan(sp)
        if tensors:
            for shard, ts in sp.shards:
                for t in ts:
                    srcdesc = ("zeros" if t.source is None else
                               f"{t.source.name}[{t.row_start}:{t.row_stop}] ({t.source.file.name})")
                    out.print(f"{shard}  {t.name}  {list(t.shape)} {t.dtype}  <- {srcdesc}")
    run(go)


@app.command()
def convert(src: Src, dst: Dst,
            shard_size: Annotated[str, typer.Option(help="Largest shard, e.g. 5GB, 500MB, 2GiB.")] = "5GB",
            dtype: DtypeOpt = None, kind: KindOpt = "auto",
            force: Annotated[bool, typer.Option("--force", help="Replace DST, once the new one is complete.")] = False,
            verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Check the result before publishing it.")] = True,
            checksums: Annotated[bool, typer.Option("--checksums/--no-checksums", help="Record each weight file's sha256 in conversion.json (costs about as much CPU as the copy).")] = True,
            quick: Annotated[bool, typer.Option("--quick", help="Verify with the short prompt set.")] = False,
            report: Annotated[Optional[Path], typer.Option(help="Write the verify report (JSON) here.")] = None,
            dry_run: Annotated[bool, typer.Option("--dry-run", help="Check everything and print the plan; write nothing.")] = False):
    """Convert SRC into a LLaMA checkpoint in DST, then verify it (unless --no-verify).

    Example: qwen2llama convert ./Qwen-7B-Chat ./Qwen-7B-Chat-llama --shard-size 2GB
    """
    from .convert import convert as do_convert
    from .convert import prepare

    def go():
        sp = prepare(src, shard_size=shard_size, dtype=dtype, kind=kind)
        _print_plan(sp)
        if dry_run:
            from .publish import check_target
            from .tokenizer import read_tiktoken

            read_tiktoken(Path(src) / "qwen.tiktoken")
            check_target(Path(os.path.abspath(dst)), force=force, protect=[sp.plan.checkpoint.folder])
            out.print("dry run: the checkpoint, the vocabulary and the output location are usable; nothing written")
            return
        before = None
        if verify:
            def before(staging):
                _verify_and_report(src, staging, report=report, quick=quick, prompts=None, display=dst)
        do_convert(src, dst, shard_size=shard_size, dtype=dtype, kind=kind, force=force, checksums=checksums,
                   progress=TerminalProgress(err), before_publish=before, prepared=sp)
        out.print(f"[green]wrote[/] {dst}")
    run(go)


def _verify_and_report(src, dst, *, report, quick, prompts, long_prompt=None, display=None):
    from .verify import render_summary, verify as do_verify

    result = do_verify(src, dst, quick=quick, prompts=prompts, long_prompt=long_prompt,
                       progress=TerminalProgress(err), display=display)
    render_summary(result, out)
    if report is not None:
        Path(report).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        out.print(f"report: {report}")
    result.raise_if_failed()


@app.command()
def verify(src: Src,
           dst: Annotated[Path, typer.Argument(help="The converted LLaMA folder.")],
           report: Annotated[Optional[Path], typer.Option(help="Write the full JSON report here.")] = None,
           prompts: Annotated[Optional[Path], typer.Option(help="Prompt set (JSON) instead of the bundled one.")] = None,
           quick: Annotated[bool, typer.Option("--quick", help="Short prompt set, no long-context probe.")] = False,
           long_prompt: Annotated[Optional[bool], typer.Option("--long-prompt/--no-long-prompt", help="Include the seq_length-token prompt (default: when it costs minutes, not hours).")] = None):
    """Check that DST computes what SRC computes: tensors, config, tokenizer, logits.

    Exit 0: equivalent. 1: a check failed. 2: bad input.
    """
    run(lambda: _verify_and_report(src, dst, report=report, quick=quick, prompts=prompts, long_prompt=long_prompt,
                                   display=dst))


@app.command()
def tokenizer(src: Annotated[Path, typer.Argument(help="qwen.tiktoken, or a folder holding it.")], dst: Dst,
              kind: Annotated[str, typer.Option("--kind", help="chat | base: which eos the tokenizer declares.")] = "chat",
              model_max_length: Annotated[int, typer.Option(help="Context length to declare.")] = 8192,
              force: Annotated[bool, typer.Option("--force", help="Replace DST once the new one is complete.")] = False):
    """Write only the Hugging Face tokenizer files for a qwen.tiktoken."""
    from .errors import InputError
    from .publish import staged_folder
    from .tokenizer import read_tiktoken, write_tokenizer_files

    def go():
        if kind not in ("chat", "base"):
            raise InputError(f"unknown --kind {kind!r}", fix="use chat or base")
        vocab = src / "qwen.tiktoken" if src.is_dir() else src
        tokens = read_tiktoken(vocab)
        with staged_folder(dst, force=force, protect=[vocab.parent]) as staging:
            stats = write_tokenizer_files(tokens, staging, chat=kind == "chat", model_max_length=model_max_length)
        out.print(f"[green]wrote[/] {dst}: {stats['regular_tokens']} regular + {stats['special_tokens']} special "
                  f"tokens, {stats['merges']} merges")
    run(go)


@app.command()
def synth(dst: Dst,
          preset: Annotated[str, typer.Option(help="Release widths: tiny, qwen-1_8b, qwen-7b, qwen-7b-chat-2023-08, qwen-14b, qwen-72b, ...")] = "tiny",
          layers: Annotated[Optional[int], typer.Option(help="Override the number of layers.")] = None,
          format: Annotated[str, typer.Option("--format", help="safetensors | bin")] = "safetensors",
          shards: Annotated[int, typer.Option(help="Number of weight files.")] = 1,
          dtype: Annotated[str, typer.Option(help="bfloat16 | float16 | float32")] = "bfloat16",
          seed: Annotated[int, typer.Option(help="Random seed.")] = 0):
    """Write a Qwen v1 checkpoint with random weights at a release's widths (for tests and demos)."""
    from .synth import synthesize

    def go():
        path = synthesize(dst, preset, layers=layers, fmt=format, shards=shards, dtype=dtype, seed=seed)
        total = sum(p.stat().st_size for p in path.iterdir())
        out.print(f"[green]wrote[/] {path} ({preset}, {format}, {total / 1e9:.3f} GB)")
    run(go)


def entry() -> None:
    app(prog_name="qwen2llama")


if __name__ == "__main__":
    sys.exit(entry())
