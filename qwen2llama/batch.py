"""Batch jobs: many checkpoints converted and verified in one command, resumable and shardable.

A job is (source, output folder, options). A job whose output holds a conversion.json with the
same fingerprint (see `manifest.fingerprint`) and a passed verify is up to date and skipped; any
other job is (re)done into a staging folder and published only when complete and verified, so a
failing or interrupted rerun never loses what an earlier run published. Jobs run in threads
(`jobs`), one verify at a time; one job's failure never stops the others.
"""
from __future__ import annotations

import glob
import os
import threading
import time
import tomllib
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path

from . import manifest, pipeline
from .paths import check_output, reads_of
from .convert import Options
from .errors import InputError, OutputError, Qwen2LlamaError, VerificationFailed
from .progress import NullProgress, Progress
from .resume import output_state
from .schemas import JobFields, JobsFile, validated
from .sharding import parse_shard, shard_from_env, take_shard  # noqa: F401  (part of this API)
from .sources import HUB_ID, open_source
from .verify.report import VerifyOptions

JOB_KEYS = {"src", "out"} | {f.name for f in fields(Options)} - {"force"}  # = schemas.JobFields (tested)


@dataclass
class Job:
    name: str
    src: str
    out: Path
    options: Options = Options()

    @property
    def report(self) -> Path:
        """The job's verify report, beside its output folder (kept also when verify fails)."""
        return self.out.parent / f"{self.out.name}.verify.json"


@dataclass
class JobResult:
    name: str
    src: str
    out: str
    status: str  # passed | converted (--no-verify) | up to date | failed | bad input | error
    seconds: float = 0.0
    gigabytes: float = 0.0
    max_abs_logit_diff: float | None = None
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return {"passed": 0, "converted": 0, "up to date": 0, "failed": 1}.get(self.status, 2)


def output_name(spec: str) -> str:
    """The naming rule under --out-root: a folder keeps its name, a Trainer `checkpoint-N` folder gets
    its run folder's name in front (`run1--checkpoint-500`), a hub id becomes `owner--name[@rev]`."""
    path = Path(spec)
    if not path.exists() and HUB_ID.match(spec):
        repo, _, rev = spec.partition("@")
        return repo.replace("/", "--") + (f"@{rev.replace('/', '-')}" if rev else "")
    path = path.resolve()
    return f"{path.parent.name}--{path.name}" if path.name.startswith("checkpoint-") else path.name


def expand(specs: list[str]) -> list[str]:
    """SRC arguments with globs expanded (sorted); a glob that matches nothing is bad input."""
    out = []
    for spec in specs:
        if any(c in spec for c in "*?["):
            found = sorted(glob.glob(spec))
            if not found:
                raise InputError(f"{spec} matches nothing",
                                 fix="check the pattern (quote it so the shell leaves it)")
            out += found
        else:
            out.append(spec)
    return out


def _options(fields_: JobFields, defaults: Options) -> Options:
    values = fields_.model_dump(exclude_none=True, exclude={"src", "out"})
    return Options(**{**{f.name: getattr(defaults, f.name) for f in fields(Options)}, **values})


def jobs_from_file(path: Path, out_root: Path | None, defaults: Options) -> list[Job]:
    """A TOML jobs file: optional `out_root` and `[defaults]`, then `[[jobs]]` with `src` and optional
    `out`, `dtype`, `kind`, `shard_size`, `base`, `checksums`, `hash` (schemas.JobsFile)."""
    fix = "fix the jobs file (examples/jobs.toml shows every key)"
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError) as exc:
        raise InputError(f"cannot read the jobs file ({type(exc).__name__}: {exc})"[:300], path=path,
                         fix=fix) from None
    if not data.get("jobs"):
        raise InputError("the jobs file lists no [[jobs]]", path=path,
                         fix='add [[jobs]] tables with src = "..."')
    spec = validated(JobsFile, data, path, fix)
    root = out_root or (Path(spec.out_root) if spec.out_root else None)
    defaults = _options(spec.defaults, defaults)
    jobs = []
    for k, table in enumerate(spec.jobs):
        if table.src is None:
            raise InputError(f"jobs.{k} has no src", path=path, fix='each [[jobs]] needs src = "..."')
        jobs.append(_job(table.src, table.out, root, _options(table, defaults)))
    return jobs


def _job(src: str, out: str | None, out_root: Path | None, options: Options) -> Job:
    if out is None and out_root is None:
        raise InputError(f"no output folder for {src}",
                         fix="pass --out-root, or give out = ... in the jobs file")
    target = Path(out) if out is not None else out_root / output_name(src)
    return Job(target.name, src, target, options)


def jobs_from_args(specs: list[str], out_root: Path | None, options: Options) -> list[Job]:
    return [_job(spec, None, out_root, options) for spec in expand(specs)]


def collect(specs: list[str], jobs_file: Path | None, out_root: Path | None, options: Options) -> list[Job]:
    """The jobs of SRC arguments, then of a jobs file; none at all is bad input."""
    jobs = jobs_from_args(specs, out_root, options)
    if jobs_file is not None:
        jobs += jobs_from_file(jobs_file, out_root, options)
    if not jobs:
        raise InputError("no jobs", fix="give SRC arguments or --jobs-file")
    return jobs


def check_unique(jobs: list[Job]) -> None:
    seen: dict[Path, str] = {}
    for job in jobs:
        key = Path(os.path.abspath(job.out))
        if key in seen:
            raise InputError(f"{seen[key]} and {job.src} would both be written to {job.out}",
                             fix="give each job its own out in a jobs file")
        seen[key] = job.src


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
        run = pipeline.aim(run, job.out, force=state != "absent")
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


def sources_of(jobs: list[Job]) -> list[Path]:
    """The local sources and bases of jobs, resolved (hub ids are resolved when a job opens them)."""
    return reads_of(*(p for job in jobs for p in (job.src, job.options.base)))


def exit_code(results: list[JobResult]) -> int:
    """0 when every job passed (or was up to date), 1 when a verify failed, 2 when an input was bad."""
    codes = {r.exit_code for r in results}
    return 2 if 2 in codes else 1 if 1 in codes else 0
