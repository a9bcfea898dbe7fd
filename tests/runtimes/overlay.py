"""A transformers release (with the tokenizers and huggingface_hub it needs) installed once with
pip into the cache outside the repository, to be put first on PYTHONPATH over the project's
environment: the other packages (torch, numpy, safetensors) are the project's own."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

CACHE = Path(os.environ.get("QWEN2LLAMA_CACHE", Path.home() / ".cache" / "qwen2llama"))
# what each release needs besides itself (from its setup.py pins)
NEEDS = {
    "4.45.0": ("tokenizers>=0.20,<0.21", "huggingface-hub>=0.23.2,<1.0"),
    "4.57.6": ("tokenizers>=0.22.0,<=0.23.0", "huggingface-hub>=0.34.0,<1.0"),
}


def transformers_overlay(version: str) -> Path:
    target = CACHE / f"transformers-{version}"
    if not (target / "transformers").is_dir():
        tmp = target.with_suffix(".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp),
                        f"transformers=={version}", *NEEDS[version]], check=True, capture_output=True)
        tmp.rename(target)
    return target
