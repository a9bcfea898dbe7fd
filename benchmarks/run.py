"""`make bench`: conversion cost against `cp`, the load-everything baseline, the tokenizer
against transformers' generic tiktoken converter, and verify's time and memory per layer.

Runs are alternated and repeated; medians are reported, with each run's wall time, peak RSS and
CPU seconds kept in bench-out/results.json. Prints a Markdown table (the README shows the latest
one). Sizes: BENCH_LAYERS (default 2) layers at Qwen-7B widths, bf16, about 3.3 GB; 32 is the real
Qwen-7B size (15.4 GB). BENCH_REPEATS (default 5). BENCH_ONLY=copy measures the copy table alone;
BENCH_ONLY=context verify's extra time for a --context output (7B widths, seq_length 2048).
The load-everything baseline is left out when the model is over half the machine's memory.
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
REPEATS = int(os.environ.get("BENCH_REPEATS", "5"))
ONLY_COPY = os.environ.get("BENCH_ONLY") == "copy"
ONLY_VERIFY = os.environ.get("BENCH_ONLY") == "verify"
PY = sys.executable


def measured(cmd: list[str], env: dict | None = None) -> tuple[float, float, float]:
    """(wall seconds, peak RSS MiB, CPU seconds) of cmd, run as the only child of a fresh wrapper."""
    t0 = time.perf_counter()
    result = subprocess.run([PY, str(ROOT / "benchmarks" / "peak_rss.py"), *cmd], capture_output=True,
                            text=True,
                            env={**os.environ, **(env or {})})
    wall = time.perf_counter() - t0
    if result.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{result.stdout}\n{result.stderr}")
    found = re.search(r"peak_rss_mib=([\d.]+) cpu_s=([\d.]+)", result.stdout)
    return wall, float(found.group(1)), float(found.group(2))


def memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


CACHE_OFF = "qwen2llama convert --no-verify, tokenizer cache off"


def bench_copy(src: Path) -> dict:
    """convert (BLAKE3 digests, warm tokenizer cache: the default) against cp, and the same with
    sha256, without digests, and with the tokenizer built every time."""
    runs: dict[str, list] = {"cp -r": [], "cp -r + sync": [], "qwen2llama convert --no-verify": [],
                             "qwen2llama convert --no-verify --hash sha256": [],
                             "qwen2llama convert --no-verify --no-checksums": [], CACHE_OFF: [],
                             "load-all baseline": []}
    if folder_bytes(src) > memory_bytes() / 2:
        del runs["load-all baseline"]  # it would measure swapping, if it finished at all
    names = list(runs)
    for rep in range(REPEATS):
        # alternate the contenders, and rotate their order so that none always runs first
        for name in names[rep % len(names):] + names[: rep % len(names)]:
            dst = OUT / f"dst-{rep}"
            shutil.rmtree(dst, ignore_errors=True)
            if name.startswith("cp"):
                cmd = ["bash", "-c", f"cp -r {src} {dst}" + (f" && sync {dst}/*" if "sync" in name else "")]
            elif name.startswith("qwen2llama"):
                cmd = [PY, "-m", "qwen2llama", "convert", str(src), str(dst), *name.split(",")[0].split()[2:]]
            else:
                cmd = [PY, str(ROOT / "benchmarks" / "baseline_load_all.py"), str(src), str(dst)]
            os.sync()  # start each run with no dirty pages from the last one, the source in the page cache
            subprocess.run(["cat", *map(str, src.glob("*.safetensors"))], stdout=subprocess.DEVNULL,
                           check=True)
            time.sleep(1)
            runs[name].append(measured(cmd,
                                       {"QWEN2LLAMA_TOKENIZER_CACHE": "off"} if name == CACHE_OFF else None))
            shutil.rmtree(dst, ignore_errors=True)
            os.sync()
    size = folder_bytes(src)
    rows = {}
    for name, values in runs.items():
        wall = statistics.median(v[0] for v in values)
        rows[name] = {"seconds": round(wall, 2), "gb_per_s": round(size / 1e9 / wall, 2),
                      "min_s": round(min(v[0] for v in values), 2),
                      "max_s": round(max(v[0] for v in values), 2),
                      "cpu_seconds": round(statistics.median(v[2] for v in values), 2),
                      "cpu_seconds_per_gb": round(statistics.median(v[2] for v in values) / (size / 1e9), 2),
                      "peak_rss_mib": round(statistics.median(v[1] for v in values), 1),
                      "runs": [{"seconds": round(w, 2), "peak_rss_mib": r, "cpu_seconds": c} for w, r,
                               c in values]}
    cp = rows["cp -r"]["seconds"]
    return {"source_bytes": size, "rows": rows,
            "ratio_convert_to_cp": round(rows["qwen2llama convert --no-verify"]["seconds"] / cp, 2),
            "ratio_convert_sha256_to_cp": round(
                rows["qwen2llama convert --no-verify --hash sha256"]["seconds"] / cp, 2),
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
    wall, rss, _ = measured([PY, "-m", "qwen2llama", "convert", str(src), str(dst), "--no-verify"])
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
ours, (_, merges) = build_tokenizer(read_tiktoken(vocab_path()))
t1 = time.perf_counter()
from transformers.convert_slow_tokenizer import TikTokenConverter
theirs = TikTokenConverter(vocab_file=str(vocab_path()), pattern=PATTERN,
                           extra_special_tokens=SPECIAL_TOKENS).converted()
t2 = time.perf_counter()
their_merges = len(json.loads(theirs.to_str())["model"]["merges"])
print(json.dumps({"ours_s": t1 - t0, "generic_s": t2 - t1, "ours_merges": len(merges),
                  "generic_merges": their_merges}))
""" % str(ROOT)
    runs = []
    for _ in range(REPEATS):
        runs.append(json.loads(subprocess.run([PY, "-c", code], capture_output=True, text=True,
                                              check=True).stdout))
    return {"ours_seconds": round(statistics.median(r["ours_s"] for r in runs), 2),
            "generic_seconds": round(statistics.median(r["generic_s"] for r in runs), 2),
            "ours_merges": runs[0]["ours_merges"], "generic_merges": runs[0]["generic_merges"]}


def bench_verify(src: Path) -> dict:
    dst = OUT / "converted"
    shutil.rmtree(dst, ignore_errors=True)
    subprocess.run([PY, "-m", "qwen2llama", "convert", str(src), str(dst), "--no-verify"], check=True,
                   capture_output=True)
    report = OUT / "verify-report.json"
    wall, rss, _ = measured([PY, "-m", "qwen2llama", "verify", str(src), str(dst), "--quick", "--report",
                             str(report)])
    data = json.loads(report.read_text())
    layers = data["checks"]["logits"]["layers"]
    per_layer = statistics.median(row["seconds_reference"] + row["seconds_llama"] for row in layers)
    golden = OUT / "golden.safetensors"
    rec_wall, rec_rss, _ = measured([PY, "-m", "qwen2llama", "golden", str(src), str(golden), "--quick"])
    gold_wall, gold_rss, _ = measured([PY, "-m", "qwen2llama", "verify", str(dst), "--golden", str(golden),
                                       "--report", str(report)])
    gold = json.loads(report.read_text())
    return {"seconds": round(wall, 1), "peak_rss_mib": rss, "layers": len(layers),
            "seconds_per_layer_both_sides": round(per_layer, 3),
            "max_abs_logit_diff": data["checks"]["logits"]["max_abs_logit_diff"], "passed": data["passed"],
            "golden_record_seconds": round(rec_wall, 1), "golden_record_peak_rss_mib": rec_rss,
            "golden_file_mb": round(golden.stat().st_size / 1e6, 2),
            "golden_verify_seconds": round(gold_wall, 1), "golden_verify_peak_rss_mib": gold_rss,
            "golden_verify_passed": gold["passed"],
            "golden_tensor_digest_seconds": gold["checks"]["tensors"]["seconds"],
            "golden_tensor_digest_gb": round(gold["checks"]["tensors"]["bytes_compared"] / 1e9, 2),
            "golden_max_abs_logit_diff": gold["checks"]["logits"]["max_abs_logit_diff"]}


def hash_speed(algorithm: str) -> float:
    """GB/s of one core for one of the digest algorithms convert offers."""
    from qwen2llama.manifest import new_hash

    block = os.urandom(1 << 20)
    digest = new_hash(algorithm)
    t0 = time.perf_counter()
    for _ in range(512):
        digest.update(block)
    return 512 * len(block) / 1e9 / (time.perf_counter() - t0)


def bench_cpu_parts() -> dict:
    """Where convert's CPU goes besides the copy: digest speed, and the tokenizer files job."""
    from qwen2llama.synth import vocab_path

    folder = OUT / "tokenizer-job"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    wall, _, cpu = measured([PY, "-m", "qwen2llama.tokenizer", str(vocab_path()), str(folder), "chat",
                             "8192"])
    shutil.rmtree(folder)
    return {"sha256_gb_per_s_one_core": round(hash_speed("sha256"), 2),
            "blake3_gb_per_s_one_core": round(hash_speed("blake3"), 2),
            "tokenizer_job_seconds": round(wall, 2),
            "tokenizer_job_cpu_seconds": round(cpu, 2)}


def print_copy_table(copy: dict, cpu_parts: dict) -> None:
    gb = copy["source_bytes"] / 1e9
    print("| what | seconds (median) | min–max | GB/s | CPU s | CPU s per GB | peak RSS MiB |\n"
          "|---|---|---|---|---|---|---|")
    for name, row in copy["rows"].items():
        print(f"| {name} | {row['seconds']} | {row['min_s']}–{row['max_s']} | {row['gb_per_s']} | "
              f"{row['cpu_seconds']} | {row['cpu_seconds_per_gb']} | {row['peak_rss_mib']} |")
    cores = os.cpu_count() or 1
    convert_cpu = copy["rows"]["qwen2llama convert --no-verify"]["cpu_seconds"]
    print(f"\nconvert/cp = {copy['ratio_convert_to_cp']} (BLAKE3 of every file, tokenizer from the cache), "
          f"{copy['ratio_convert_sha256_to_cp']} with --hash sha256, "
          f"{copy['ratio_convert_no_checksums_to_cp']} with --no-checksums; "
          f"convert/(cp + sync) = {copy['ratio_convert_to_cp_sync']}")
    b3, sha = cpu_parts["blake3_gb_per_s_one_core"], cpu_parts["sha256_gb_per_s_one_core"]
    print(f"CPU: convert used {convert_cpu} CPU-seconds, so on {cores} cores it cannot take less than "
          f"{convert_cpu / cores:.2f} s. Digests of {gb:.2f} GB: BLAKE3 at {b3} GB/s per core "
          f"{gb / b3:.2f} s, "
          f"sha256 at {sha} GB/s {gb / sha:.2f} s; the tokenizer files job when not cached "
          f"{cpu_parts['tokenizer_job_cpu_seconds']} s")


def bench_context() -> dict:
    """verify's extra time for a --context output's band check at 7B widths: the first Qwen-7B-Chat
    release's widths (seq_length 2048) with LAYERS layers, --context 4096 (band 2049..4096)."""
    from qwen2llama.synth import synthesize

    src = OUT / f"qwen-7b-chat-2023-08-{LAYERS}l"
    if not (src / "config.json").exists():
        shutil.rmtree(src, ignore_errors=True)
        synthesize(src, "qwen-7b-chat-2023-08", layers=LAYERS, shards=2 if LAYERS <= 8 else 8)
    runs = {}
    for label, extra in (("default", []), ("--context 4096", ["--context", "4096"])):
        dst, report = OUT / "converted-context", OUT / "verify-context.json"
        shutil.rmtree(dst, ignore_errors=True)
        subprocess.run([PY, "-m", "qwen2llama", "convert", str(src), str(dst), "--no-verify", *extra],
                       check=True, capture_output=True)
        wall, rss, _ = measured([PY, "-m", "qwen2llama", "verify", str(src), str(dst), "--quick", "--report",
                                 str(report)])
        logits = json.loads(report.read_text())["checks"]["logits"]
        runs[label] = {"seconds": round(wall, 1), "peak_rss_mib": rss, "context": logits.get("context")}
    band = runs["--context 4096"]["context"]
    return {"default_verify_seconds": runs["default"]["seconds"],
            "context_verify_seconds": runs["--context 4096"]["seconds"],
            "extra_seconds": round(runs["--context 4096"]["seconds"] - runs["default"]["seconds"], 1),
            "context_peak_rss_mib": runs["--context 4096"]["peak_rss_mib"],
            "band_tokens": band["tokens"], "band_layers": band["layers"],
            "band_max_abs_diff": band.get("band_row", {}).get("max_abs_logit_diff",
                                                              band.get("max_abs_hidden_diff"))}


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from qwen2llama.synth import synthesize

    OUT.mkdir(exist_ok=True)
    os.environ["QWEN2LLAMA_TOKENIZER_CACHE"] = str(OUT / "tokenizer-cache")  # warm after the first convert
    src = OUT / f"qwen-7b-{LAYERS}l"
    if not (src / "config.json").exists():
        shutil.rmtree(src, ignore_errors=True)
        print(f"synthesizing {src} ...", flush=True)
        synthesize(src, "qwen-7b", layers=LAYERS, shards=2 if LAYERS <= 8 else 8)
    if ONLY_VERIFY:
        ver = bench_verify(src)
        (OUT / "results-verify.json").write_text(json.dumps(ver, indent=2) + "\n")
        print_verify(ver)
        return
    if os.environ.get("BENCH_ONLY") == "context":
        ctx = bench_context()
        (OUT / f"results-context-{LAYERS}l.json").write_text(json.dumps(ctx, indent=2) + "\n")
        print(json.dumps(ctx, indent=2))
        return
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {memory_bytes() / 2**30:.0f} GiB, " \
              f"Python {platform.python_version()}"
    print("convert vs cp ...", flush=True)
    copy = bench_copy(src)
    cpu_parts = bench_cpu_parts()
    results = {"machine": machine, "layers": LAYERS, "repeats": REPEATS, "copy": copy, "cpu_parts": cpu_parts}
    if not ONLY_COPY:
        print(".bin input ...", flush=True)
        results["bin"] = bench_bin(src)
        print("tokenizer ...", flush=True)
        results["tokenizer"] = bench_tokenizer()
        print("verify ...", flush=True)
        results["verify"] = bench_verify(src)
        print("verify of a --context output ...", flush=True)
        results["context"] = bench_context()
    name = "results.json" if not ONLY_COPY else f"results-{LAYERS}l-copy.json"
    (OUT / name).write_text(json.dumps(results, indent=2) + "\n")
    gb = copy["source_bytes"] / 1e9
    print(f"\nQwen-7B widths, {LAYERS} layers, bf16, {gb:.2f} GB; {machine}; {REPEATS} runs each\n")
    print_copy_table(copy, cpu_parts)
    if ONLY_COPY:
        return
    binrow, tok, ver = results["bin"], results["tokenizer"], results["verify"]
    print(f".bin input ({binrow['source_bytes'] / 1e9:.2f} GB, one file): convert --no-verify "
          f"{binrow['seconds']} s, "
          f"peak RSS {binrow['peak_rss_mib']} MiB (largest tensor {binrow['largest_tensor_mib']} MiB)")
    print(f"tokenizer: ours {tok['ours_seconds']} s, {tok['ours_merges']} merges; transformers "
          "TikTokenConverter "
          f"{tok['generic_seconds']} s, {tok['generic_merges']} merges")
    print_verify(ver)


def print_verify(ver: dict) -> None:
    print(f"verify --quick: {ver['seconds']} s, peak RSS {ver['peak_rss_mib']} MiB, "
          f"{ver['seconds_per_layer_both_sides']} s per layer (both sides), passed={ver['passed']}")
    print(f"golden --quick (record): {ver['golden_record_seconds']} s, peak RSS "
          f"{ver['golden_record_peak_rss_mib']} MiB, "
          f"{ver['golden_file_mb']} MB; verify --golden: {ver['golden_verify_seconds']} s, peak RSS "
          f"{ver['golden_verify_peak_rss_mib']} MiB, max |Δlogit| {ver['golden_max_abs_logit_diff']:.2e}, "
          f"passed={ver['golden_verify_passed']}")
    print(f"verify --golden, tensor digests: {ver['golden_tensor_digest_gb']} GB hashed in "
          f"{ver['golden_tensor_digest_seconds']} s (one read of the folder)")


if __name__ == "__main__":
    main()
