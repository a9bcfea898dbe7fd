"""Full `verify` (not --quick) at real widths, and the golden path CI takes: time, peak RSS, and
where the time goes (the report's per-check seconds; in the logits check, weights read, both
models' layers, the greedy continuations, the probe past seq_length).

BENCH_WIDTHS (default qwen-1_8b,qwen-7b,qwen-14b) at BENCH_LAYERS layers (default 2; 32 with
qwen-7b is the real Qwen-7B, 15.4 GB: `make bench-7b`). Each width's source and output are made,
measured and removed (BENCH_KEEP=1 keeps them). Results in bench-out/verify.json, a Markdown
table on stdout.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import OUT, PY, folder_bytes, measured  # noqa: E402

WIDTHS = os.environ.get("BENCH_WIDTHS", "qwen-1_8b,qwen-7b,qwen-14b").split(",")
LAYERS = int(os.environ.get("BENCH_LAYERS", "2"))
KEEP = os.environ.get("BENCH_KEEP") == "1"


def _cli(*args) -> None:
    subprocess.run([PY, "-m", "qwen2llama", *map(str, args)], check=True, capture_output=True)


def _phases(report: dict) -> dict:
    checks = report["checks"]
    logits = checks["logits"]
    layers = logits.get("layers", [])
    reading = sum(r.get("seconds_reading", 0) for r in layers)
    both = sum(r["seconds_reference"] + r["seconds_llama"] for r in layers)
    return {**{f"{name}_s": c.get("seconds") for name, c in checks.items()},
            "weights_read_s": round(reading, 1), "layers_compute_s": round(both - reading, 1),
            "greedy_s": logits.get("seconds_greedy"), "greedy": logits.get("summary", "").split(", ")[-1],
            "max_abs_logit_diff": logits.get("max_abs_logit_diff")}


def bench_width(preset: str) -> dict:
    src, dst = OUT / f"{preset}-{LAYERS}l", OUT / f"{preset}-{LAYERS}l-llama"
    if not (src / "config.json").exists():
        shutil.rmtree(src, ignore_errors=True)
        _cli("synth", src, "--preset", preset, "--layers", LAYERS, "--shards", 2 if LAYERS <= 8 else 8)
    shutil.rmtree(dst, ignore_errors=True)
    _cli("convert", src, dst, "--no-verify")
    report, golden = OUT / "verify-full.json", OUT / "golden-full.safetensors"
    wall, rss, _ = measured([PY, "-m", "qwen2llama", "verify", str(src), str(dst), "--no-long-prompt",
                             "--report", str(report)])
    row = {"model": preset, "layers": LAYERS, "gb": round(folder_bytes(src) / 1e9, 2),
           "seconds": round(wall, 1), "peak_rss_mib": rss, **_phases(json.loads(report.read_text()))}
    rec_wall, rec_rss, _ = measured([PY, "-m", "qwen2llama", "golden", str(src), str(golden), "--force",
                                     "--no-long-prompt"])
    rep_wall, rep_rss, _ = measured([PY, "-m", "qwen2llama", "verify", str(dst), "--golden", str(golden),
                                     "--report", str(report)])
    replay = json.loads(report.read_text())
    row |= {"golden_record_s": round(rec_wall, 1), "golden_record_rss_mib": rec_rss,
            "golden_verify_s": round(rep_wall, 1), "golden_verify_rss_mib": rep_rss,
            "golden_passed": replay["passed"], "golden_phases": _phases(replay)}
    if not KEEP:
        shutil.rmtree(src), shutil.rmtree(dst)
    return row


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rows = [bench_width(p) for p in WIDTHS]
    (OUT / f"verify-{LAYERS}l.json").write_text(json.dumps(rows, indent=2))
    print("| model | layers | GB | verify s | peak RSS MiB | integrity s | tensors s | logits s "
          "(read / compute / greedy) | golden record s | verify --golden s (RSS MiB) |")
    print("|---" * 10 + "|")
    for r in rows:
        print(f"| {r['model']} | {r['layers']} | {r['gb']} | {r['seconds']} | {r['peak_rss_mib']:.0f} | "
              f"{r['integrity_s']} | {r['tensors_s']} | {r['logits_s']} ({r['weights_read_s']} / "
              f"{r['layers_compute_s']} / {r['greedy_s']}) | {r['golden_record_s']} | "
              f"{r['golden_verify_s']} ({r['golden_verify_rss_mib']:.0f}) |")


if __name__ == "__main__":
    main()
