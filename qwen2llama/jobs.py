"""The job list of a batch: what to convert, from where, to where, with which options — from SRC
arguments (globs), a TOML jobs file (schemas.JobsFile) and --out-root's naming rule — and the
record of each job's outcome, which batch.py writes and summary.py reads."""
from __future__ import annotations

import glob
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import InputError
from .options import ConvertOptions, job_options
from .paths import output_path, reads_of
from .smallfile import read_small_text
from .schemas import JobFields, JobsFile, validated
from .sources import HUB_ID

JOB_KEYS = {"src", "out"} | {f.name for f in job_options()}  # = schemas.JobFields (tested)


@dataclass
class Job:
    name: str
    src: str
    out: Path
    options: ConvertOptions = ConvertOptions()

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


def _options(fields_: JobFields, defaults: ConvertOptions) -> ConvertOptions:
    values = fields_.model_dump(exclude_none=True, exclude={"src", "out"})
    return replace(defaults, **values)


def jobs_from_file(path: Path, out_root: Path | None, defaults: ConvertOptions) -> list[Job]:
    """A TOML jobs file: optional `out_root` and `[defaults]`, then `[[jobs]]` with `src` and optional
    `out`, `dtype`, `kind`, `shard_size`, `base`, `checksums`, `hash` (schemas.JobsFile)."""
    fix = "fix the jobs file (examples/jobs.toml shows every key)"
    try:
        data = tomllib.loads(read_small_text(path, "jobs", fix=fix))
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


def _job(src: str, out: str | None, out_root: Path | None, options: ConvertOptions) -> Job:
    if out is None and out_root is None:
        raise InputError(f"no output folder for {src}",
                         fix="pass --out-root, or give out = ... in the jobs file")
    target = Path(out) if out is not None else out_root / output_name(src)
    return Job(target.name, src, target, options)


def jobs_from_args(specs: list[str], out_root: Path | None, options: ConvertOptions) -> list[Job]:
    return [_job(spec, None, out_root, options) for spec in expand(specs)]


def collect(specs: list[str], jobs_file: Path | None, out_root: Path | None,
            options: ConvertOptions) -> list[Job]:
    """The jobs of SRC arguments, then of a jobs file; none at all is bad input."""
    jobs = jobs_from_args(specs, out_root, options)
    if jobs_file is not None:
        jobs += jobs_from_file(jobs_file, out_root, options)
    if not jobs:
        raise InputError("no jobs", fix="give SRC arguments or --jobs-file")
    return jobs


def check_unique(jobs: list[Job]) -> None:
    """No two jobs write one folder, nor one inside another's, after the OS's resolution (a link
    in one job's path makes two spellings one folder)."""
    seen: dict[Path, Job] = {}
    for job in jobs:
        key = output_path(job.out)
        if key in seen:
            raise InputError(f"{seen[key].src} and {job.src} would both be written to {key}",
                             fix="give each job its own out in a jobs file")
        seen[key] = job
    for key, job in seen.items():
        holder = next((seen[p] for p in key.parents if p in seen), None)
        if holder is not None:
            raise InputError(f"the output of {job.src} ({key}) lies inside the output of {holder.src} "
                             f"({output_path(holder.out)}), which that job replaces",
                             fix="give each job an output folder outside every other job's")


def sources_of(jobs: list[Job]) -> list[Path]:
    """The local sources and bases of jobs, resolved (hub ids are resolved when a job opens them)."""
    return reads_of(*(p for job in jobs for p in (job.src, job.options.base)))


def exit_code(results: list[JobResult]) -> int:
    """0 when every job passed (or was up to date), 1 when a verify failed, 2 when an input was bad."""
    codes = {r.exit_code for r in results}
    return 2 if 2 in codes else 1 if 1 in codes else 0
