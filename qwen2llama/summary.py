"""Batch results for people and for CI: a JSON summary (mergeable across shards), JUnit XML (one
test case per job, failures carrying the failed checks) and a Markdown table for
$GITHUB_STEP_SUMMARY."""
from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import __version__
from .jobs import JobResult, exit_code
from .errors import InputError
from .schemas import Summary, validated

FORMAT = 1


def to_json(results: list[JobResult], shard: tuple[int, int] | None = None) -> dict:
    return {"tool": {"name": "qwen2llama", "version": __version__}, "format": FORMAT,
            "shard": list(shard) if shard else None, "exit_code": exit_code(results),
            "jobs": [asdict(r) for r in results]}


def read_summaries(paths: list[Path]) -> list[JobResult]:
    """The job results of several summaries (one per shard), each job once."""
    fix = "pass the files that `batch --summary` wrote"
    if not paths:
        raise InputError("--summarize needs the summary files",
                         fix="qwen2llama batch --summarize summaries/*.json")
    results: dict[str, JobResult] = {}
    for path in paths:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            raise InputError(f"not a batch summary ({type(exc).__name__}: {exc})"[:300], path=path,
                             fix=fix) from None
        jobs = [JobResult(**job.model_dump()) for job in validated(Summary, data, path, fix).jobs]
        for job in jobs:
            if job.out in results:
                raise InputError(f"job {job.name} ({job.out}) appears in two summaries", path=path,
                                 fix="merge the summaries of distinct shards")
            results[job.out] = job
    return sorted(results.values(), key=lambda r: r.out)


def _logit(r: JobResult) -> str:
    return "" if r.max_abs_logit_diff is None else f"{r.max_abs_logit_diff:.2e}"


@dataclass
class Case:
    """One JUnit test case: outcome passed, failed (a check found a difference), error (bad input)
    or skipped."""

    name: str
    classname: str
    seconds: float
    outcome: str
    lines: list[str] = field(default_factory=list)
    properties: dict[str, str] = field(default_factory=dict)


# Characters XML 1.0 cannot hold (control characters, in a job name from a jobs file say): written
# as U+FFFD, so the file stays well-formed.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _x(text) -> str:
    return _NOT_XML.sub("\ufffd", str(text))


def junit(suite: str, cases: list[Case]) -> str:
    count = {o: sum(c.outcome == o for c in cases) for o in ("failed", "error", "skipped")}
    total = f"{sum(c.seconds for c in cases):.2f}"
    attrs = dict(tests=str(len(cases)), failures=str(count["failed"]), errors=str(count["error"]), time=total)
    root = ET.Element("testsuites", name="qwen2llama", **attrs)
    ts = ET.SubElement(root, "testsuite", name=_x(suite), skipped=str(count["skipped"]), **attrs)
    for c in cases:
        case = ET.SubElement(ts, "testcase", classname=_x(c.classname), name=_x(c.name),
                             time=f"{c.seconds:.2f}")
        if c.properties:
            props = ET.SubElement(case, "properties")
            for key, value in c.properties.items():
                ET.SubElement(props, "property", name=_x(key), value=_x(value))
        if c.outcome != "passed":
            tag = {"failed": "failure", "error": "error", "skipped": "skipped"}[c.outcome]
            node = ET.SubElement(case, tag, message=_x((c.lines or [c.outcome])[0][:300]))
            if tag != "skipped":
                node.set("type", c.outcome)
                node.text = _x("\n".join(c.lines))
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def to_junit(results: list[JobResult]) -> str:
    """A test case per batch job; a failed verify is a failure, bad input an error."""
    outcome = {0: "passed", 1: "failed", 2: "error"}
    return junit("qwen2llama batch", [
        Case(r.name, "qwen2llama.batch", r.seconds, outcome[r.exit_code],
             [f"{r.status}: {line}" for line in r.failures],
             {"source": r.src, "output": r.out, "status": r.status, "max_abs_logit_diff": _logit(r),
              "gigabytes": r.gigabytes}) for r in results])


def verify_junit(result: dict) -> str:
    """A test case per check, and per prompt for the logits; failure text = the report's lines."""
    cases = []
    outcome = {True: "passed", False: "failed", None: "skipped"}
    for name, c in result["checks"].items():
        lines = c.get("failures") or ([c["note"]] if c.get("note") else [])
        cases.append(Case(name, "qwen2llama.verify", 0.0, outcome[c["passed"]], lines,
                          {"against": c["against"]} if c.get("against") else {}))
    for row in result["checks"]["logits"].get("prompts", []):
        mine = [f for f in result["checks"]["logits"]["failures"] if f.startswith(f"{row['prompt']!r}:")]
        cases.append(Case(f"logits: {row['prompt']}", "qwen2llama.verify.logits", 0.0,
                          "failed" if mine else "passed", mine,
                          {"tokens": row["tokens"],
                           "max_abs_logit_diff": f"{row['max_abs_logit_diff']:.3g}"}))
    return junit(f"qwen2llama verify {result['output']}", cases)


def verify_markdown(result: dict) -> str:
    """Verdict per check, max |Δlogit|, KL, top-1, and where the models part."""
    logits = result["checks"]["logits"]
    mark = {True: "pass", False: "**FAIL**", None: "skipped"}
    lines = [f"### qwen2llama verify `{result['output']}`: "
             f"{'equivalent' if result['passed'] else '**NOT equivalent**'}", "",
             "| check | verdict | detail |", "|---|---|---|"]
    for name, c in result["checks"].items():
        detail = "; ".join(c.get("failures", [])[:3]) or c.get("note", "") or c.get("against", "")
        lines.append(f"| {name} | {mark[c['passed']]} | {detail} |")
    kl = logits.get("kl_max")
    parting = next((f for f in logits.get("failures", []) if f.startswith("the models part")), "none")
    lines += ["", f"max \\|Δlogit\\| {logits.get('max_abs_logit_diff', float('nan')):.3g}, "
              f"KL max {'n/a (golden file)' if kl is None else f'{kl:.3g}'}, "
              f"top-1 {logits.get('top1_agreement', float('nan')):.4f}; first diverging layer: {parting}"]
    return "\n".join(lines) + "\n"


def to_markdown(results: list[JobResult], title: str = "qwen2llama batch") -> str:
    ok = sum(not r.exit_code for r in results)
    lines = [f"### {title}: {ok}/{len(results)} jobs passed", "",
             "| job | source | verdict | max \\|Δlogit\\| | seconds | GB |", "|---|---|---|---|---|---|"]
    for r in results:
        verdict = r.status if not r.exit_code else f"**{r.status}**"
        lines.append(f"| {r.name} | `{r.src}` | {verdict} | {_logit(r)} | {r.seconds:.1f} | "
                     f"{r.gigabytes:.2f} |")
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
