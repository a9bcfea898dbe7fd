"""The `qwen2llama` command line: parse, call the library, render, map errors to exit codes.

Every command goes through `command`: library errors (`Qwen2LlamaError`) print as one short
block with the file and the fix and exit with their code (2 = bad input, 1 = a verify check
failed); `--debug` shows the traceback instead.
"""
from __future__ import annotations

import functools
import json
import signal
import sys
from inspect import Parameter, signature
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from .. import __version__
from ..errors import Qwen2LlamaError
from . import render

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Convert Qwen v1 checkpoints (QWenLMHeadModel) into the LLaMA layout, and prove "
                       "the result computes the same function.")
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)

# Arguments and options shared by several commands.
Src = Annotated[str, typer.Argument(
    help="Qwen v1 checkpoint: a folder (config.json, weights, qwen.tiktoken) or a hub id owner/name[@revision].")]
Dst = Annotated[Path, typer.Argument(help="Output folder; created atomically, must not exist unless --force.")]
Converted = Annotated[Path, typer.Argument(help="The converted LLaMA folder.")]
DtypeOpt = Annotated[Optional[str], typer.Option(
    "--dtype", help="bfloat16 | float16 | float32 (default: keep the source's).")]
KindOpt = Annotated[str, typer.Option("--kind", help="auto | chat | base: chat models also stop on <|im_end|>.")]
ShardSizeOpt = Annotated[str, typer.Option("--shard-size", help="Largest shard, e.g. 5GB, 500MB, 2GiB.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace DST, once the new one is complete.")]
QuickOpt = Annotated[bool, typer.Option("--quick", help="Short prompt set, no long-context probe.")]
ReportOpt = Annotated[Optional[Path], typer.Option("--report", help="Write the full verify report (JSON) here.")]
PromptsOpt = Annotated[Optional[Path], typer.Option("--prompts", help="Prompt set (JSON) instead of the bundled one.")]
BaseOpt = Annotated[Optional[str], typer.Option(
    "--base", help="Folder or hub id supplying files SRC lacks (qwen.tiktoken, generation_config.json, "
                   "LICENSE), e.g. for a Trainer checkpoint.")]
LongPromptOpt = Annotated[Optional[bool], typer.Option(
    "--long-prompt/--no-long-prompt",
    help="Include the seq_length-token prompt (default: when it costs minutes, not hours).")]


def command(fn):
    """Register `fn` as a command; errors and interrupts become short messages and exit codes.
    The registered function also takes typer's Context, to see the root's --debug."""
    @functools.wraps(fn)
    def run(ctx: typer.Context, *args, **kwargs):
        if ctx.find_root().obj["debug"]:
            return fn(*args, **kwargs)
        try:
            return fn(*args, **kwargs)
        except Qwen2LlamaError as exc:
            render.error(err, "check failed" if exc.exit_code == 1 else "error", exc.message, exc.path, exc.fix)
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
    return app.command()(run)


def _sigterm(signum, frame):
    raise KeyboardInterrupt


def _print_version(value: bool) -> None:
    if value:
        out.print(f"qwen2llama {__version__}")
        raise typer.Exit(0)


@app.callback()
def main(ctx: typer.Context,
         debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks instead of short messages.")] = False,
         version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                               help="Print the version and exit.")] = False):
    ctx.obj = {"debug": debug}
    signal.signal(signal.SIGTERM, _sigterm)


@command
def inspect(src: Src, shard_size: ShardSizeOpt = "5GB", dtype: DtypeOpt = None, kind: KindOpt = "auto",
            base: BaseOpt = None,
            tensors: Annotated[bool, typer.Option(
                "--tensors", help="List every output tensor and its source.")] = False):
    """Show what was detected and the conversion plan, without writing anything."""
    from ..convert import Options, prepare

    prepared = prepare(src, Options(shard_size, dtype, kind, base=base))
    render.plan(out, prepared)
    if tensors:
        render.plan_tensors(out, prepared)


def _verify_and_report(src, dst, *, report, quick, prompts=None, long_prompt=None, display=None, base=None,
                       record=False):
    """Verify, show the summary, write the report; `record` adds the verdict to dst's conversion.json."""
    from ..manifest import record_verification
    from ..verify import verify as run_verify

    result = run_verify(src, dst, quick=quick, prompts=prompts, long_prompt=long_prompt,
                        progress=render.TerminalProgress(err), display=display, base=base)
    render.verify_summary(out, result)
    if report is not None:
        Path(report).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        out.print(f"report: {report}")
    if record:
        record_verification(Path(dst), result)
    result.raise_if_failed()


@command
def convert(src: Src, dst: Dst, shard_size: ShardSizeOpt = "5GB", dtype: DtypeOpt = None, kind: KindOpt = "auto",
            base: BaseOpt = None, force: ForceOpt = False,
            verify: Annotated[bool, typer.Option(
                "--verify/--no-verify", help="Check the result before publishing it.")] = True,
            checksums: Annotated[bool, typer.Option(
                "--checksums/--no-checksums",
                help="Record each weight file's sha256 in conversion.json "
                     "(costs about as much CPU as the copy).")] = True,
            quick: QuickOpt = False, report: ReportOpt = None,
            dry_run: Annotated[bool, typer.Option(
                "--dry-run", help="Check everything and print the plan; write nothing.")] = False):
    """Convert SRC into a LLaMA checkpoint in DST, then verify it (unless --no-verify).

    Example: qwen2llama convert ./Qwen-7B-Chat ./Qwen-7B-Chat-llama --shard-size 2GB
    """
    from ..convert import Options, prepare, write

    prepared = prepare(src, Options(shard_size, dtype, kind, force, checksums, base), dst)
    render.plan(out, prepared)
    if dry_run:
        out.print("dry run: the checkpoint, the vocabulary and the output location are usable; nothing written")
        return
    before = None
    if verify:
        def before(staging):
            _verify_and_report(prepared.plan.checkpoint, staging, report=report, quick=quick, display=dst,
                               record=True)
    write(prepared, progress=render.TerminalProgress(err), before_publish=before)
    out.print(f"[green]wrote[/] {dst}")


@command
def verify(src: Src, dst: Converted, report: ReportOpt = None, prompts: PromptsOpt = None, quick: QuickOpt = False,
           long_prompt: LongPromptOpt = None, base: BaseOpt = None):
    """Check that DST computes what SRC computes: tensors, config, tokenizer, logits.

    Exit 0: equivalent. 1: a check failed. 2: bad input.
    """
    _verify_and_report(src, dst, report=report, quick=quick, prompts=prompts, long_prompt=long_prompt, display=dst,
                       base=base)


@command
def batch(srcs: Annotated[Optional[list[str]], typer.Argument(
              help="Sources: folders, globs (quoted: 'runs/*/checkpoint-*') or hub ids; with --summarize, "
                   "summary files.", show_default=False)] = None,
          jobs_file: Annotated[Optional[Path], typer.Option("--jobs-file", help="TOML jobs file (see README).")] = None,
          out_root: Annotated[Optional[Path], typer.Option(
              "--out-root", help="Folder for the outputs, named by the rule in the README.")] = None,
          shard_size: ShardSizeOpt = "5GB", dtype: DtypeOpt = None, kind: KindOpt = "auto", base: BaseOpt = None,
          workers: Annotated[int, typer.Option("--jobs", help="Jobs converting at once (verify runs one at a time).")] = 1,
          shard: Annotated[Optional[str], typer.Option(
              "--shard", help="I/N: this machine's share of the jobs (default: from Slurm or Kubernetes, else all).")] = None,
          force: Annotated[bool, typer.Option("--force", help="Redo every job, also up-to-date ones.")] = False,
          verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Verify each job before publishing.")] = True,
          quick: QuickOpt = False,
          summary: Annotated[Optional[Path], typer.Option("--summary", help="Write the results as JSON.")] = None,
          junit: Annotated[Optional[Path], typer.Option("--junit", help="Write JUnit XML (a test case per job).")] = None,
          summarize: Annotated[bool, typer.Option(
              "--summarize", help="Merge the given summary files (one per shard) instead of running jobs.")] = False):
    """Convert and verify many checkpoints: up-to-date jobs are skipped, failed ones redone.

    Exit 0: every job passed. 1: a verify failed. 2: an input was bad.

    Example: qwen2llama batch 'runs/*/checkpoint-*' --out-root llama --base Qwen/Qwen-7B-Chat --jobs 2
    """
    from .. import batch as jobs_mod
    from .. import summary as summary_mod
    from ..convert import Options
    from ..errors import InputError

    if summarize:
        results, where = summary_mod.read_summaries([Path(p) for p in srcs or []]), None
    else:
        options = Options(shard_size, dtype, kind, base=base)
        jobs = jobs_mod.jobs_from_args(srcs or [], out_root, options)
        if jobs_file is not None:
            jobs += jobs_mod.jobs_from_file(jobs_file, out_root, options)
        if not jobs:
            raise InputError("no jobs", fix="give SRC arguments or --jobs-file")
        where = jobs_mod.parse_shard(shard) if shard else jobs_mod.shard_from_env()
        if where is not None:
            jobs = jobs_mod.take_shard(jobs, *where)
            out.print(f"shard {where[0]} of {where[1]}: {len(jobs)} job(s)")
        results = jobs_mod.run_jobs(jobs, workers=workers, verify=verify, quick=quick, force=force,
                                    progress_for=lambda job: render.JobLines(err, job.name),
                                    on_done=lambda r: render.job_done(out, r))
    render.batch_table(out, results)
    if summary is not None:
        summary.write_text(json.dumps(summary_mod.to_json(results, where), indent=2, sort_keys=True) + "\n")
    if junit is not None:
        junit.write_text(summary_mod.to_junit(results), encoding="utf-8")
    summary_mod.append_github_summary(summary_mod.to_markdown(results))
    code = jobs_mod.exit_code(results)
    if code:
        raise typer.Exit(code)


@command
def tokenizer(src: Annotated[Path, typer.Argument(help="qwen.tiktoken, or a folder holding it.")], dst: Dst,
              kind: Annotated[str, typer.Option(
                  "--kind", help="chat | base: which eos the tokenizer declares.")] = "chat",
              model_max_length: Annotated[int, typer.Option(help="Context length to declare.")] = 8192,
              force: ForceOpt = False):
    """Write only the Hugging Face tokenizer files for a qwen.tiktoken."""
    from ..errors import InputError
    from ..publish import staged_folder
    from ..tokenizer import read_tiktoken, write_tokenizer_files

    if kind not in ("chat", "base"):
        raise InputError(f"unknown --kind {kind!r}", fix="use chat or base")
    vocab = src / "qwen.tiktoken" if src.is_dir() else src
    tokens = read_tiktoken(vocab)
    with staged_folder(dst, force=force, protect=[vocab.parent]) as staging:
        stats = write_tokenizer_files(tokens, staging, chat=kind == "chat", model_max_length=model_max_length)
    out.print(f"[green]wrote[/] {dst}: {stats['regular_tokens']} regular + {stats['special_tokens']} special "
              f"tokens, {stats['merges']} merges")


@command
def synth(dst: Dst,
          preset: Annotated[str, typer.Option(
              help="Release widths: tiny, qwen-1_8b, qwen-7b, qwen-7b-chat-2023-08, qwen-14b, qwen-72b, ...")] = "tiny",
          layers: Annotated[Optional[int], typer.Option(help="Override the number of layers.")] = None,
          format: Annotated[str, typer.Option("--format", help="safetensors | bin")] = "safetensors",
          shards: Annotated[int, typer.Option(help="Number of weight files.")] = 1,
          dtype: Annotated[str, typer.Option(help="bfloat16 | float16 | float32")] = "bfloat16",
          seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
          trainer: Annotated[bool, typer.Option(
              "--trainer", help="Lay it out as a Trainer checkpoint-N/ folder (optimizer.pt etc., no vocabulary).")] = False):
    """Write a Qwen v1 checkpoint with random weights at a release's widths (for tests and demos)."""
    from ..synth import synthesize

    path = synthesize(dst, preset, layers=layers, fmt=format, shards=shards, dtype=dtype, seed=seed, trainer=trainer)
    total = sum(p.stat().st_size for p in path.iterdir())
    out.print(f"[green]wrote[/] {path} ({preset}, {format}, {total / 1e9:.3f} GB)")


def entry() -> None:
    app(prog_name="qwen2llama")


if __name__ == "__main__":
    sys.exit(entry())
