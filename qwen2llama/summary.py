"""Batch results for people and for CI: a JSON summary (mergeable across shards), JUnit XML (one
test case per job, failures carrying the failed checks) and a Markdown table for
$GITHUB_STEP_SUMMARY."""
from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from dataclasses import asdict, fields
from pathlib import Path

from . import __version__
from .batch import JobResult, exit_code
from .errors import InputError

FORMAT = 1


def to_json(results: list[JobResult], shard: tuple[int, int] | None = None) -> dict:
    return {"tool": {"name": "qwen2llama", "version": __version__}, "format": FORMAT,
            "shard": list(shard) if shard else None, "exit_code": exit_code(results),
            "jobs": [asdict(r) for r in results]}


def read_summaries(paths: list[Path]) -> list[JobResult]:
    """The job results of several summaries (one per shard), each job once."""
    names = {f.name for f in fields(JobResult)}
    results: dict[str, JobResult] = {}
    for path in paths:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            jobs = [JobResult(**{k: v for k, v in job.items() if k in names}) for job in data["jobs"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"not a batch summary ({type(exc).__name__}: {exc})"[:300], path=path,
                             fix="pass the files that `batch --summary` wrote") from None
        for job in jobs:
            if job.out in results:
                raise InputError(f"job {job.name} ({job.out}) appears in two summaries", path=path,
                                 fix="merge the summaries of distinct shards")
            results[job.out] = job
    return sorted(results.values(), key=lambda r: r.out)


def _logit(r: JobResult) -> str:
    return "" if r.max_abs_logit_diff is None else f"{r.max_abs_logit_diff:.2e}"


def to_junit(results: list[JobResult], suite: str = "qwen2llama batch") -> str:
    failures = sum(r.exit_code == 1 for r in results)
    errors = sum(r.exit_code == 2 for r in results)
    total = f"{sum(r.seconds for r in results):.2f}"
    root = ET.Element("testsuites", name="qwen2llama", tests=str(len(results)), failures=str(failures),
                      errors=str(errors), time=total)
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(results)), failures=str(failures),
                       errors=str(errors), skipped="0", time=total)
    for r in results:
        case = ET.SubElement(ts, "testcase", classname="qwen2llama.batch", name=r.name, time=f"{r.seconds:.2f}")
        props = ET.SubElement(case, "properties")
        for key, value in (("source", r.src), ("output", r.out), ("status", r.status),
                           ("max_abs_logit_diff", _logit(r)), ("gigabytes", str(r.gigabytes))):
            ET.SubElement(props, "property", name=key, value=value)
        if r.exit_code:
            tag = "failure" if r.exit_code == 1 else "error"
            node = ET.SubElement(case, tag, message=f"{r.status}: {(r.failures or [''])[0]}"[:300], type=r.status)
            node.text = "\n".join(r.failures)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def to_markdown(results: list[JobResult], title: str = "qwen2llama batch") -> str:
    ok = sum(not r.exit_code for r in results)
    lines = [f"### {title}: {ok}/{len(results)} jobs passed", "",
             "| job | source | verdict | max \\|Δlogit\\| | seconds | GB |", "|---|---|---|---|---|---|"]
    for r in results:
        verdict = r.status if not r.exit_code else f"**{r.status}**"
        lines.append(f"| {r.name} | `{r.src}` | {verdict} | {_logit(r)} | {r.seconds:.1f} | {r.gigabytes:.2f} |")
    failing = [r for r in results if r.exit_code]
    for r in failing:
        lines += ["", f"**{r.name}** ({r.status}):", *[f"- {line}" for line in r.failures[:10]]]
    return "\n".join(lines) + "\n"


def append_github_summary(markdown: str) -> Path | None:
    """Append to $GITHUB_STEP_SUMMARY when it is set (GitHub Actions); None otherwise."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return None
    with open(target, "a", encoding="utf-8") as fh:
        fh.write(markdown + "\n")
    return Path(target)
