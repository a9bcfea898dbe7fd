"""`make bench` (GPTQ part): Int4 and Int8 releases at Qwen-7B widths (BENCH_LAYERS, default 2):
convert against `cp -r` and against the dense bf16 convert of the same widths (wall time, peak
RSS, CPU), then verify --quick of the GPTQ output and of a --dequantize float16 output.
Medians of BENCH_REPEATS (default 3) alternated runs; results in bench-out/results-gptq.json.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import OUT, PY, ROOT, folder_bytes, measured  # noqa: E402

LAYERS = int(os.environ.get("BENCH_LAYERS", "2"))
REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))


def _source(name: str, **kw) -> Path:
    from qwen2llama.synth import synthesize

    src = OUT / f"{name}-{LAYERS}l"
    if not (src / "config.json").exists():
        shutil.rmtree(src, ignore_errors=True)
        print(f"synthesizing {src} ...", flush=True)
        synthesize(src, name, layers=LAYERS, shards=2, **kw)
    return src


def _copy_rows(sources: dict[str, Path]) -> dict:
    runs: dict[str, list] = {}
    for rep in range(REPEATS):
        for label, src in sources.items():
            for how in ("cp -r", "convert --no-verify"):
                dst = OUT / "dst-gptq"
                shutil.rmtree(dst, ignore_errors=True)
                os.sync()
                cmd = (["cp", "-r", str(src), str(dst)] if how == "cp -r" else
                       [PY, "-m", "qwen2llama", "convert", str(src), str(dst), "--no-verify"])
                runs.setdefault(f"{label}: {how}", []).append(measured(cmd))
                shutil.rmtree(dst, ignore_errors=True)
    rows = {}
    for name, values in runs.items():
        rows[name] = {"seconds": round(statistics.median(v[0] for v in values), 2),
                      "peak_rss_mib": round(statistics.median(v[1] for v in values), 1),
                      "cpu_seconds": round(statistics.median(v[2] for v in values), 2)}
    return rows


def _verify(src: Path, extra: list[str]) -> dict:
    dst, report = OUT / "dst-gptq-verify", OUT / "verify-gptq.json"
    shutil.rmtree(dst, ignore_errors=True)
    convert_s, convert_rss, _ = measured([PY, "-m", "qwen2llama", "convert", str(src), str(dst),
                                          "--no-verify", *extra])
    wall, rss, _ = measured([PY, "-m", "qwen2llama", "verify", str(src), str(dst), "--quick", "--report",
                             str(report)])
    data = json.loads(report.read_text())
    shutil.rmtree(dst, ignore_errors=True)
    logits = data["checks"]["logits"]
    return {"convert_seconds": round(convert_s, 2), "convert_peak_rss_mib": convert_rss,
            "seconds": round(wall, 1),
            "peak_rss_mib": rss, "passed": data["passed"], "max_abs_logit_diff": logits["max_abs_logit_diff"],
            "top1_agreement": logits["top1_agreement"],
            "tensors_identical": "{identical}/{tensors}".format(**data["checks"]["tensors"])}


def main() -> None:
    sys.path.insert(0, str(ROOT))
    OUT.mkdir(exist_ok=True)
    os.environ["QWEN2LLAMA_TOKENIZER_CACHE"] = str(OUT / "tokenizer-cache")
    sources = {"dense bf16": _source("qwen-7b"), "Int4": _source("qwen-7b-chat-int4"),
               "Int8": _source("qwen-7b-chat-int8")}
    sizes = {k: folder_bytes(v) for k, v in sources.items()}
    print("convert vs cp ...", flush=True)
    rows = _copy_rows(sources)
    print("verify ...", flush=True)
    results = {"layers": LAYERS, "repeats": REPEATS, "source_bytes": sizes, "copy": rows,
               "verify_int4": _verify(sources["Int4"], []), "verify_int8": _verify(sources["Int8"], []),
               "verify_int4_dequantized_f16": _verify(sources["Int4"], ["--dequantize", "float16"])}
    (OUT / "results-gptq.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nQwen-7B widths, {LAYERS} layers; {REPEATS} runs each (medians)\n")
    print("| source | GB | cp -r s | convert s | convert/cp | convert peak RSS MiB | convert CPU s |\n"
          "|---|---|---|---|---|---|---|")
    for label in sources:
        cp, conv = rows[f"{label}: cp -r"], rows[f"{label}: convert --no-verify"]
        print(f"| {label} | {sizes[label] / 1e9:.2f} | {cp['seconds']} | {conv['seconds']} | "
              f"{conv['seconds'] / cp['seconds']:.2f} | {conv['peak_rss_mib']} | {conv['cpu_seconds']} |")
    for key in ("verify_int4", "verify_int8", "verify_int4_dequantized_f16"):
        v = results[key]
        print(f"{key}: convert {v['convert_seconds']} s / {v['convert_peak_rss_mib']} MiB; verify --quick "
              f"{v['seconds']} s, peak RSS {v['peak_rss_mib']} MiB, tensors {v['tensors_identical']}, "
              f"max |Δlogit| {v['max_abs_logit_diff']:.2e}, top-1 {v['top1_agreement']}, "
              f"passed={v['passed']}")


if __name__ == "__main__":
    main()
