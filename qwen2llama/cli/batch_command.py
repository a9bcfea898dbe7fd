"""`qwen2llama batch`: many checkpoints, resumable, shardable, with summaries for CI."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import render
from .literal import shown
from ..paths import reads_of
from ..verdicts import check_output_files
from .app import (BaseOpt, CardOpt, ContextOpt, DtypeOpt, IgnoreOpt, KindOpt, QuickOpt, ShardSizeOpt,
                  TargetOpt, command, err, out)


@command
def batch(srcs: Annotated[Optional[list[str]], typer.Argument(
              help="Sources: folders, globs (quoted: 'runs/*/checkpoint-*') or hub ids; with --summarize, "
                   "summary files.", show_default=False)] = None,
          jobs_file: Annotated[Optional[Path], typer.Option("--jobs-file",
                                                            help="TOML jobs file (docs/batch.md).")] = None,
          out_root: Annotated[Optional[Path], typer.Option(
              "--out-root", help="Folder for the outputs, named by the rule in docs/batch.md.")] = None,
          shard_size: ShardSizeOpt = "5GB", dtype: DtypeOpt = None, kind: KindOpt = "auto",
          base: BaseOpt = None, target: TargetOpt = "llama", ignore: IgnoreOpt = None,
          context: ContextOpt = None, card: CardOpt = True,
          workers: Annotated[int, typer.Option(
              "--jobs", help="Jobs converting at once (verify runs one at a time).")] = 1,
          shard: Annotated[Optional[str], typer.Option(
              "--shard", help="I/N: this machine's share of the jobs (default: from Slurm or "
                              "Kubernetes, else all).")] = None,
          force: Annotated[bool, typer.Option("--force",
                                              help="Redo every job, also up-to-date ones.",
                                              metavar="")] = False,
          verify: Annotated[bool, typer.Option("--verify/--no-verify",
                                               help="Verify each job before publishing.", metavar="")] = True,
          quick: QuickOpt = False,
          summary: Annotated[Optional[Path], typer.Option("--summary",
                                                          help="Write the results as JSON.")] = None,
          junit: Annotated[Optional[Path], typer.Option(
              "--junit", help="Write JUnit XML (a test case per job).")] = None,
          summarize: Annotated[bool, typer.Option(
              "--summarize",
              help="Merge the given summary files (one per shard) instead of running jobs.",
                                                  metavar="")] = False):
    """Convert and verify many checkpoints: up-to-date jobs are skipped, failed ones redone.

    Exit 0: every job passed. 1: a verify failed. 2: an input was bad.

    Example: qwen2llama batch 'runs/*/checkpoint-*' --out-root llama --base Qwen/Qwen-7B-Chat --jobs 2
    """
    from .. import batch as jobs_mod
    from .. import summary as summary_mod
    from ..options import ConvertOptions

    def check_reports(reads: list[Path], outputs: list[Path]) -> None:
        """--summary and --junit: under the path rule, distinct, never inside a job's output folder."""
        check_output_files([(summary, "the summary", True), (junit, "the JUnit file", True)], reads,
                           inside=outputs)

    if summarize:
        check_reports(reads_of(*(srcs or [])), [])
        results, where = summary_mod.read_summaries([Path(p) for p in srcs or []]), None
    else:
        jobs = jobs_mod.collect(srcs or [], jobs_file, out_root, ConvertOptions.pick(locals()))
        check_reports(jobs_mod.sources_of(jobs) + reads_of(jobs_file), [j.out for j in jobs])
        where = jobs_mod.parse_shard(shard) if shard else jobs_mod.shard_from_env()
        results = _run(jobs, where, workers=workers, verify=verify, quick=quick, force=force)
    render.batch_table(out, results)
    if summary is not None:
        summary.write_text(json.dumps(summary_mod.to_json(results, where), indent=2, sort_keys=True) + "\n")
    if junit is not None:
        junit.write_text(summary_mod.to_junit(results), encoding="utf-8")
    summary_mod.append_github_summary(summary_mod.to_markdown(results))
    code = jobs_mod.exit_code(results)
    if code:
        raise typer.Exit(code)


def _run(all_jobs, where, **settings):
    """This shard's jobs, with a line per job as it ends; a signal ends the command with 130 after
    saying what was published."""
    from .. import batch as jobs_mod

    jobs = all_jobs
    if where is not None:
        jobs = jobs_mod.take_shard(all_jobs, *where)
        out.print(f"shard {where[0]} of {where[1]}: {len(jobs)} job(s)")
    try:
        return jobs_mod.run_jobs(jobs, progress_for=lambda job: render.JobLines(err, job.name),
                                 on_done=lambda r: render.job_done(out, r), all_jobs=all_jobs, **settings)
    except jobs_mod.BatchInterrupted as stop:
        published = [r.name for r in stop.results if r.exit_code == 0]
        missing = [r.name for r in stop.results if r.exit_code != 0] + [j.name for j in stop.pending]
        err.print("[yellow]interrupted[/]: published before the signal: "
                  f"{shown(', '.join(published) or 'none')}; "
                  f"not published: {shown(', '.join(missing) or 'none')} "
                  "(their temporary files were removed)")
        raise typer.Exit(130) from None
