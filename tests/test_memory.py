"""Memory is bounded by design: no step holds a tensor table, let alone the model.

At Qwen-1.8B widths each embedding table (151936 x 2048 bf16) is 622 MB, more than the convert
bound, so a convert that held any one of them fails; verify's bound is below what the lm_head
alone takes in float32 (1.24 GB) on top of its runtime. The 7B-width figures are in `make bench`.
"""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from qwen2llama.synth import synthesize

pytestmark = pytest.mark.slow


# A small process that runs the command and prints its peak RSS (KiB) from wait4. It must not be
# pytest itself: Linux counts a forked child's pre-exec memory (all of pytest's) in its peak.
LAUNCHER = ("import os, subprocess, sys; p = subprocess.Popen(sys.argv[1:]); _, s, u = os.wait4(p.pid, 0); "
            "print(u.ru_maxrss); sys.exit(os.waitstatus_to_exitcode(s))")


def peak_rss_mib(*args) -> tuple[float, str]:
    """Peak RSS of the CLI run as a child (its own children included), and its output."""
    result = subprocess.run([sys.executable, "-c", LAUNCHER, sys.executable, "-m", "qwen2llama",
                             *map(str, args)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    return int(result.stdout.split()[-1]) / 1024, result.stdout


NEEDS_DISK = 3.0e9  # the source, its conversion and some slack


@pytest.fixture
def wide(tmp_path):
    """Qwen-1.8B widths (hidden 2048, vocab rows 151936), 1 layer, bf16, two shards: 1.35 GB.

    Function-scoped, so the 2.7 GB of source and output go when the test passes.
    """
    free = shutil.disk_usage(tmp_path).free
    if free < NEEDS_DISK:
        pytest.skip(f"needs {NEEDS_DISK / 1e9:.1f} GB free under {tmp_path}, has {free / 1e9:.1f} GB")
    return synthesize(tmp_path / "qwen-1_8b-1l", "qwen-1_8b", layers=1, shards=2)


def test_convert_and_verify_peak_rss(wide, tmp_path):
    size = sum(p.stat().st_size for p in wide.glob("*.safetensors"))
    assert size > 1.3e9
    out = tmp_path / "llama"
    convert_mib, _ = peak_rss_mib("convert", wide, out, "--no-verify", "--shard-size", "500MB")
    assert convert_mib < 512, f"convert peak RSS {convert_mib:.0f} MiB"
    verify_mib, text = peak_rss_mib("verify", wide, out, "--quick", "--greedy-tokens", "0")
    assert "verify: equivalent" in text
    assert verify_mib < 1536, f"verify peak RSS {verify_mib:.0f} MiB"
    print(f"1.8B widths, 1 layer, {size / 1e9:.2f} GB: convert {convert_mib:.0f} MiB, verify "
          f"{verify_mib:.0f} MiB")
