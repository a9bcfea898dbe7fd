"""`make bench`, batch part: 4 checkpoints at Qwen-7B widths (2 layers each, 3.3 GB; 13.2 GB in all)
converted by one `batch` (--jobs 1 and 2), by 4 sequential `convert` runs, and copied by 4 `cp -r`.
All without verify (its cost is per model and the same in every contender; see run.py). Runs are
alternated; medians of BENCH_BATCH_REPEATS (default 2). Writes bench-out/batch.json and prints a
Markdown table: wall seconds, CPU seconds, CPU seconds per GB, peak RSS.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import OUT, PY, ROOT, folder_bytes, measured  # noqa: E402

REPEATS = int(os.environ.get("BENCH_BATCH_REPEATS", "2"))
COUNT = 4


def sources() -> list[Path]:
    sys.path.insert(0, str(ROOT))
    from qwen2llama.synth import synthesize

    out = []
    for k in range(COUNT):
        src = OUT / "batch-src" / f"run{k}" / "checkpoint-100"
        if not (src / "config.json").exists():
            shutil.rmtree(src, ignore_errors=True)
            print(f"synthesizing {src} ...", flush=True)
            synthesize(src, "qwen-7b", layers=2, shards=2, seed=100 + k, trainer=True)
        out.append(src)
    return out


def command(name: str, srcs: list[Path], dst: Path) -> list[str]:
    if name == "4 x cp -r":
        return ["bash", "-c", " && ".join(f"cp -r {s} {dst}/{k}" for k, s in enumerate(srcs))]
    if name == "4 x convert":
        return ["bash", "-c", " && ".join(f"{PY} -m qwen2llama convert {s} {dst}/{k} --no-verify"
                                          for k, s in enumerate(srcs))]
    workers = name.rsplit(" ", 1)[-1]
    return [PY, "-m", "qwen2llama", "batch", *map(str, srcs), "--out-root", str(dst), "--no-verify", "--jobs",
            workers]


def main() -> None:
    os.environ["QWEN2LLAMA_TOKENIZER_CACHE"] = str(OUT / "tokenizer-cache")
    srcs = sources()
    gb = sum(folder_bytes(s) for s in srcs) / 1e9
    names = ["4 x cp -r", "4 x convert", "batch --jobs 1", "batch --jobs 2"]
    runs: dict[str, list] = {n: [] for n in names}
    for rep in range(REPEATS):
        for name in names[rep % len(names):] + names[: rep % len(names)]:
            dst = OUT / "batch-dst"
            shutil.rmtree(dst, ignore_errors=True)
            dst.mkdir()
            os.sync()
            subprocess.run(["bash", "-c",
                            "cat " + " ".join(f"{s}/*.safetensors" for s in srcs) + " > /dev/null"],
                           check=True)
            runs[name].append(measured(command(name, srcs, dst)))
            shutil.rmtree(dst, ignore_errors=True)
            os.sync()
    rows = {n: {"seconds": round(statistics.median(r[0] for r in v), 2),
                "cpu_seconds": round(statistics.median(r[2] for r in v), 2),
                "cpu_seconds_per_gb": round(statistics.median(r[2] for r in v) / gb, 2),
                "peak_rss_mib": round(statistics.median(r[1] for r in v), 1),
                "runs": [{"seconds": round(w, 2), "peak_rss_mib": m, "cpu_seconds": c} for w, m, c in v]}
            for n, v in runs.items()}
    (OUT / "batch.json").write_text(json.dumps({"gigabytes": gb, "repeats": REPEATS, "rows": rows},
                                               indent=2) + "\n")
    print(f"\n{COUNT} checkpoints at Qwen-7B widths, 2 layers each, {gb:.2f} GB in all; "
          f"{REPEATS} runs each\n")
    print("| what | seconds (median) | CPU s | CPU s per GB | peak RSS MiB |\n|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['seconds']} | {row['cpu_seconds']} | {row['cpu_seconds_per_gb']} | "
              f"{row['peak_rss_mib']} |")


if __name__ == "__main__":
    main()
