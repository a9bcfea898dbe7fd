"""`make bench`: conversion cost against `cp`, the load-everything baseline, the tokenizer
against transformers' generic tiktoken converter, and verify's time and memory per layer.

Runs are alternated and repeated; medians are reported. Writes bench-out/results.json and
prints a Markdown table (the README shows the latest one). Sizes: BENCH_LAYERS (default 2)
layers at Qwen-7B widths, bf16, about 3.3 GB; BENCH_REPEATS (default 3).
"""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(os.environ.get("BENCH_DIR", ROOT / "bench-out"))
LAYERS = int(os.environ.get("BENCH_LAYERS", "2"))
REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
PY = sys.executable


def measured(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of cmd, run as the only child of a fresh wrapper process."""
    t0 = time.perf_counter()
    result = subprocess.run([PY, str(ROOT / "tests" / "peak_rss.py"), *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if result.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{result.stdout}\n{result.stderr}")
    return wall, float(re.search(r"peak_rss_mib=([\d.]+)", result.stdout).group(1))


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bench_copy(src: Path) -> dict:
    runs: dict[str, list] = {"cp -r": [], "cp -r + sync": [], "qwen2llama convert --no-verify": [],
                             "qwen2llama convert --no-verify --no-checksums": [], "load-all baseline": []}
    names = list(runs)
    for rep in range(REPEATS):
        # alternate the contenders, and rotate their order so that none always runs first
        for name in names[rep % len(names):] + names[: rep % len(names)]:
            dst = OUT / f"dst-{rep}"
            shutil.rmtree(dst, ignore_errors=True)
            if name.startswith("cp"):
                cmd = ["bash", "-c", f"cp -r {src} {dst}" + (f" && sync {dst}/*" if "sync" in name else "")]
            elif name.startswith("qwen2llama"):
                cmd = [PY, "-m", "qwen2llama", "convert", str(src), str(dst), *name.split()[2:]]
            else:
                cmd = [PY, str(ROOT / "benchmarks" / "baseline_load_all.py"), str(src), str(dst)]
            os.sync()  # start each run with no dirty pages from the last one, the source in the page cache
            subprocess.run(["cat", *map(str, src.glob("*.safetensors"))], stdout=subprocess.DEVNULL, check=True)
            time.sleep(1)
            runs[name].append(measured(cmd))
            shutil.rmtree(dst, ignore_errors=True)
            os.sync()
    size = folder_bytes(src)
    rows = {}
    for name, values in runs.items():
        wall = statistics.median(v[0] for v in values)
        rows[name] = {"seconds": round(wall, 2), "gb_per_s": round(size / 1e9 / wall, 2),
                      "peak_rss_mib": round(statistics.median(v[1] for v in values), 1),
                      "runs": [[round(w, 2), r] for w, r in values]}
    cp = rows["cp -r"]["seconds"]
    return {"source_bytes": size, "rows": rows,
            "ratio_convert_to_cp": round(rows["qwen2llama convert --no-verify"]["seconds"] / cp, 2),
            "ratio_convert_no_checksums_to_cp": round(
                rows["qwen2llama convert --no-verify --no-checksums"]["seconds"] / cp, 2),
            "ratio_convert_to_cp_sync": round(rows["qwen2llama convert --no-verify"]["seconds"]
                                              / rows["cp -r + sync"]["seconds"], 2)}


def bench_bin(src_st: Path) -> dict:
    """The same weights as one zip-format .bin: read through the restricted unpickler, copied
    as byte ranges like safetensors."""
    from qwen2llama.synth import synthesize

    src = OUT / f"qwen-7b-{LAYERS}l-bin"
    if not (src / "config.json").exists():
        shutil.rmtree(src, ignore_errors=True)
        synthesize(src, "qwen-7b", layers=LAYERS, fmt="bin")
    dst = OUT / "dst-bin"
    shutil.rmtree(dst, ignore_errors=True)
    os.sync()
    wall, rss = measured([PY, "-m", "qwen2llama", "convert", str(src), str(dst), "--no-verify"])
    shutil.rmtree(dst, ignore_errors=True)
    largest = max(p.stat().st_size for p in src.glob("*.bin"))
    return {"source_bytes": folder_bytes(src), "seconds": round(wall, 2), "peak_rss_mib": rss,
            "largest_tensor_mib": round(151936 * 4096 * 2 / 2**20, 1), "bin_file_bytes": largest}


def bench_tokenizer() -> dict:
    code = r"""
import sys, time, json
sys.path.insert(0, %r)
from qwen2llama.synth import vocab_path
from qwen2llama.tokens import PATTERN, SPECIAL_TOKENS
t0 = time.perf_counter()
from qwen2llama.tokenizer import read_tiktoken
from qwen2llama.tokenizer.files import build_tokenizer
ours, merges = build_tokenizer(read_tiktoken(vocab_path()))
t1 = time.perf_counter()
from transformers.convert_slow_tokenizer import TikTokenConverter
theirs = TikTokenConverter(vocab_file=str(vocab_path()), pattern=PATTERN, extra_special_tokens=SPECIAL_TOKENS).converted()
t2 = time.perf_counter()
their_merges = len(json.loads(theirs.to_str())["model"]["merges"])
print(json.dumps({"ours_s": t1 - t0, "generic_s": t2 - t1, "ours_merges": len(merges), "generic_merges": their_merges}))
""" % str(ROOT)
    runs = []
    for _ in range(REPEATS):
        runs.append(json.loads(subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True).stdout))
    return {"ours_seconds": round(statistics.median(r["ours_s"] for r in runs), 2),
            "generic_seconds": round(statistics.median(r["generic_s"] for r in runs), 2),
            "ours_merges": runs[0]["ours_merges"], "generic_merges": runs[0]["generic_merges"]}


def bench_verify(src: Path) -> dict:
    dst = OUT / "converted"
    shutil.rmtree(dst, ignore_errors=True)
    subprocess.run([PY, "-m", "qwen2llama", "convert", str(src), str(dst), "--no-verify"], check=True,
                   capture_output=True)
    report = OUT / "verify-report.json"
    wall, rss = measured([PY, "-m", "qwen2llama", "verify", str(src), str(dst), "--quick", "--report", str(report)])
    data = json.loads(report.read_text())
    layers = data["checks"]["logits"]["layers"]
    per_layer = statistics.median(l["seconds_reference"] + l["seconds_llama"] for l in layers)
    return {"seconds": round(wall, 1), "peak_rss_mib": rss, "layers": len(layers),
            "seconds_per_layer_both_sides": round(per_layer, 3),
            "max_abs_logit_diff": data["checks"]["logits"]["max_abs_logit_diff"], "passed": data["passed"]}


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from qwen2llama.synth import synthesize

    OUT.mkdir(exist_ok=True)
    src = OUT / f"qwen-7b-{LAYERS}l"
    if not (src / "config.json").exists():
        shutil.rmtree(src, ignore_errors=True)
        print(f"synthesizing {src} ...", flush=True)
        synthesize(src, "qwen-7b", layers=LAYERS, shards=2)
    print("convert vs cp ...", flush=True)
    copy = bench_copy(src)
    print(".bin input ...", flush=True)
    binrow = bench_bin(src)
    print("tokenizer ...", flush=True)
    tok = bench_tokenizer()
    print("verify ...", flush=True)
    ver = bench_verify(src)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    results = {"machine": machine, "layers": LAYERS, "repeats": REPEATS, "copy": copy, "bin": binrow, "tokenizer": tok,
               "verify": ver}
    (OUT / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    gb = copy["source_bytes"] / 1e9
    print(f"\nQwen-7B widths, {LAYERS} layers, bf16, {gb:.2f} GB; {machine}; median of {REPEATS}\n")
    print("| what | seconds | GB/s | peak RSS MiB |\n|---|---|---|---|")
    for name, row in copy["rows"].items():
        print(f"| {name} | {row['seconds']} | {row['gb_per_s']} | {row['peak_rss_mib']} |")
    print(f"\nconvert/cp = {copy['ratio_convert_to_cp']} (with sha256 of every file), "
          f"{copy['ratio_convert_no_checksums_to_cp']} with --no-checksums; "
          f"convert/(cp + sync) = {copy['ratio_convert_to_cp_sync']}")
    print(f".bin input ({binrow['source_bytes'] / 1e9:.2f} GB, one file): convert --no-verify {binrow['seconds']} s, "
          f"peak RSS {binrow['peak_rss_mib']} MiB (largest tensor {binrow['largest_tensor_mib']} MiB)")
    print(f"tokenizer: ours {tok['ours_seconds']} s, {tok['ours_merges']} merges; transformers TikTokenConverter "
          f"{tok['generic_seconds']} s, {tok['generic_merges']} merges")
    print(f"verify --quick: {ver['seconds']} s, peak RSS {ver['peak_rss_mib']} MiB, "
          f"{ver['seconds_per_layer_both_sides']} s per layer (both sides), passed={ver['passed']}")


if __name__ == "__main__":
    main()
