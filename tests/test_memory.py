"""Memory is bounded by design: a 7B-width checkpoint converts in < 1 GiB and verifies in < 3 GiB."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from qwen2llama.synth import synthesize

HERE = Path(__file__).parent


def peak_rss(*args) -> tuple[float, subprocess.CompletedProcess]:
    result = subprocess.run([sys.executable, str(HERE / "peak_rss.py"), sys.executable, "-m", "qwen2llama",
                             *map(str, args)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    return float(re.search(r"peak_rss_mib=([\d.]+)", result.stdout).group(1)), result


@pytest.fixture(scope="module")
def seven_b(tmp_path_factory):
    """Qwen-7B widths (hidden 4096, MLP 11008, vocab 151936), 2 layers, bf16: 3.3 GB."""
    return synthesize(tmp_path_factory.mktemp("7b") / "qwen-7b-2l", "qwen-7b", layers=2, shards=2)


def test_convert_and_verify_peak_rss_at_7b_width(seven_b, tmp_path):
    size = sum(p.stat().st_size for p in seven_b.glob("*.safetensors"))
    assert size > 3e9
    out = tmp_path / "llama"
    convert_mib, _ = peak_rss("convert", seven_b, out, "--no-verify", "--shard-size", "1GB")
    assert convert_mib < 1024, f"convert peak RSS {convert_mib} MiB"
    verify_mib, result = peak_rss("verify", seven_b, out, "--quick")
    assert verify_mib < 3 * 1024, f"verify peak RSS {verify_mib} MiB"
    assert "verify: equivalent" in result.stdout
    print(f"7B width, 2 layers, {size / 1e9:.2f} GB: convert {convert_mib:.0f} MiB, verify {verify_mib:.0f} MiB")
