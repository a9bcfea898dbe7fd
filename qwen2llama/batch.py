"""Batch jobs: many checkpoints converted and verified in one command, resumable and shardable.

A job is (source, output folder, options): jobs.py builds the list. A job whose output holds a
conversion.json with the same fingerprint (see `manifest.fingerprint`) and a passed verify is up to
date and skipped; any other job is (re)done into a staging folder and published only when complete
and verified, so a failing or interrupted rerun never loses what an earlier run published. Jobs run
in threads (`jobs`), one verify at a time; one job's failure never stops the others.
"""
from __future__ import annotations

import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import manifest, pipeline
from .errors import OutputError, Qwen2LlamaError, VerificationFailed
# the job list (jobs.py) is part of this module's API
from .jobs import (JOB_KEYS, Job, JobResult, check_unique, collect, exit_code, expand,  # noqa: F401
                   jobs_from_args, jobs_from_file, output_name, sources_of)
from .paths import check_output
from .progress import NullProgress, Progress
from .resume import output_state
from .sharding import parse_shard, shard_from_env, take_shard  # noqa: F401  (part of this API)
from .sources import open_source
from .verify.report import VerifyOptions


class JobCancelled(KeyboardInterrupt):
    """Raised inside a job once the batch was interrupted: unwinds it like Ctrl-C (staging removed)."""


class BatchInterrupted(KeyboardInterrupt):
    """The batch was stopped by a signal; `results` are the jobs that had ended before it."""

    def __init__(self, results: list[JobResult], pending: list[Job]):
        super().__init__()
        self.results, self.pending = results, pending


class _Cancellable(Progress):
    """A job's progress reporter that stops the job once the batch is cancelled: the writer reports
    every megabyte and verify every layer, so a signal takes effect within a block."""

    def __init__(self, inner: Progress, cancel: threading.Event):
        self.inner, self.cancel = inner, cancel

    def _check(self) -> None:
        if self.cancel.is_set():
            raise JobCancelled

    def start(self, label, total, unit="B"):
        self._check()
        self.inner.start(label, total, unit)

    def advance(self, n):
        self._check()
        self.inner.advance(n)

    def finish(self):
        self.inner.finish()

    def note(self, message):
        self._check()
        self.inner.note(message)

    def detail(self, where):
        self._check()
        self.inner.detail(where)


def run_job(job: Job, *, verify: bool, quick: bool, force: bool, verify_lock: threading.Lock, progress,
            protect: list[Path] = ()) -> JobResult:
    """Convert and verify one job; every outcome becomes a JobResult, nothing is raised. `protect`:
    what other jobs read (their sources), which this job's output must keep clear of."""
    t0 = time.perf_counter()
    result = JobResult(job.name, job.src, str(job.out), "bad input")
    outcome = None
    try:
        ckpt = open_source(job.src, job.options.base)
        result.notes = list(ckpt.notes)
        checks = VerifyOptions(quick=quick, report=job.report, github_summary=False) if verify else None
        run = pipeline.plan(ckpt, None, job.options, checks)
        result.gigabytes = round(run.prepared.plan.total_bytes / 1e9, 3)
        check_output(job.out, [*run.reads, *protect], "the job's output folder")
        state, record = output_state(job.out, manifest.fingerprint(run.prepared), verify)
        if state == "up to date" and not force:
            result.status = "up to date"
            result.max_abs_logit_diff = (record.get("verify") or {}).get("max_abs_logit_diff")
            return result
        if state == "foreign" and not force:
            raise OutputError("the output folder exists and was not written by qwen2llama", path=job.out,
                              fix="choose another output folder, or pass --force to replace it")
        _make_parent(job.out)
        run = pipeline.bind_output(run, job.out, force=state != "absent")
        outcome = pipeline.execute(run, progress=progress, verify_lock=verify_lock).verified
        result.status = "passed" if verify else "converted"
    except VerificationFailed as exc:
        outcome = exc.result
        result.status = "failed"
        result.failures = [f"{name}: {line}" for name, c in outcome["checks"].items()
                           for line in c.get("failures", [])]
    except Qwen2LlamaError as exc:
        result.failures = str(exc).splitlines()
    except Exception as exc:  # a bug, not bad input: keep the other jobs going, say what happened
        result.status = "error"
        result.failures = [f"{type(exc).__name__}: {exc}", *traceback.format_exc(limit=-4).splitlines()[-8:]]
    finally:
        result.seconds = round(time.perf_counter() - t0, 2)
    if outcome is not None:
        result.max_abs_logit_diff = outcome["checks"]["logits"].get("max_abs_logit_diff")
    return result


def _make_parent(out: Path) -> None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output's folder ({exc.strerror})", path=out.parent,
                          fix="choose a --out-root you can write to") from None


def run_jobs(jobs: list[Job], *, workers: int = 1, verify: bool = True, quick: bool = False,
             force: bool = False,
             progress_for=None, on_done=None, all_jobs: list[Job] | None = None) -> list[JobResult]:
    """Run every job, `workers` at a time; results in job order. `progress_for(job)` gives a job
    its progress reporter; `on_done(result)` is called as each job ends. `all_jobs`: the whole
    list when `jobs` is one shard of it (no output may touch any job's source). A signal stops
    the running jobs at their next block and raises BatchInterrupted (nothing published after it)."""
    check_unique(jobs)
    lock = threading.Lock()
    protect = sources_of(all_jobs or jobs)
    cancel = threading.Event()

    def one(job: Job) -> JobResult | None:
        if cancel.is_set():
            return None
        try:
            progress = _Cancellable(progress_for(job) if progress_for else NullProgress(), cancel)
            result = run_job(job, verify=verify, quick=quick, force=force, verify_lock=lock,
                             progress=progress, protect=protect)
        except JobCancelled:
            return None
        if on_done is not None:
            on_done(result)
        return result

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="job") as pool:
        futures = [pool.submit(one, job) for job in jobs]
        try:
            return [f.result() for f in futures]
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM, in this (the main) thread
            cancel.set()
            for f in futures:
                f.cancel()
            outcomes = [None if f.cancelled() else _ended(f) for f in futures]
            raise BatchInterrupted([r for r in outcomes if r is not None],
                                   [j for j, r in zip(jobs, outcomes) if r is None]) from None


def _ended(future) -> JobResult | None:
    """The result of a job that ran to its end (waiting for one still unwinding), else None."""
    try:
        return future.result()
    except BaseException:
        return None


