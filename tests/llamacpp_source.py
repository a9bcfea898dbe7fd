"""llama.cpp's own converter, from the llama-cpp-python source distribution on PyPI.

Downloaded once with pip into a cache outside the repository (never committed); only the
converter script, its `conversion/` package and `gguf-py` are unpacked.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

VERSION = os.environ.get("LLAMA_CPP_PYTHON_VERSION", "0.3.36")
CACHE = Path(os.environ.get("QWEN2LLAMA_CACHE", Path.home() / ".cache" / "qwen2llama"))
WANTED = ("vendor/llama.cpp/convert_hf_to_gguf.py", "vendor/llama.cpp/conversion/",
          "vendor/llama.cpp/gguf-py/",
          "vendor/llama.cpp/requirements/")


def sdist() -> Path:
    """The cached sdist tarball, downloaded with pip on first use."""
    target = CACHE / f"llama_cpp_python-{VERSION}.tar.gz"
    if not target.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        "-d", str(CACHE), f"llama-cpp-python=={VERSION}"], check=True, capture_output=True)
    return target


def converter_dir() -> Path:
    """Folder holding convert_hf_to_gguf.py, conversion/ and gguf-py/ (unpacked once)."""
    root = CACHE / f"llama.cpp-{VERSION}"
    if not (root / "requirements").is_dir():
        shutil.rmtree(root, ignore_errors=True)  # unpacked by an older version of this helper
        prefix = f"llama_cpp_python-{VERSION}/"
        tmp = root.with_suffix(".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        with tarfile.open(sdist()) as tar:
            members = [m for m in tar.getmembers()
                       if m.name.startswith(prefix) and m.name[len(prefix):].startswith(WANTED)
                       and m.isfile()]
            for m in members:
                m.name = m.name[len(prefix + "vendor/llama.cpp/"):]
            tar.extractall(tmp, members=members, filter="data")
        tmp.rename(root)
    return root


def pinned_transformers() -> str:
    """The transformers release llama.cpp's converter is pinned to, from its requirements file."""
    text = (converter_dir() / "requirements" / "requirements-convert_legacy_llama.txt").read_text()
    return re.search(r"^transformers==([\w.]+)", text, re.M).group(1)


def overlay() -> Path:
    """llama.cpp's pinned transformers, installed once into the cache (see runtimes/overlay.py);
    put first on PYTHONPATH for the converter only."""
    sys.path.insert(0, str(Path(__file__).resolve().parent / "runtimes"))
    from overlay import NEEDS, transformers_overlay

    version = pinned_transformers()
    if version not in NEEDS:
        raise RuntimeError(f"llama.cpp now pins transformers {version}: add its needs to runtimes/overlay.py")
    return transformers_overlay(version)


def convert_to_gguf(model_dir: Path, outfile: Path, outtype: str = "f32") -> subprocess.CompletedProcess:
    """Run llama.cpp's convert_hf_to_gguf.py as its requirements ask: its gguf-py, its transformers."""
    root = converter_dir()
    path = os.pathsep.join(map(str, (overlay(), root / "gguf-py", root)))
    env = {**os.environ, "PYTHONPATH": path, "NO_LOCAL_GGUF": ""}
    return subprocess.run([sys.executable, str(root / "convert_hf_to_gguf.py"), str(model_dir), "--outfile",
                           str(outfile),
                           "--outtype", outtype], capture_output=True, text=True, env=env, timeout=600)


def gguf_reader(path: Path):
    sys.path.insert(0, str(converter_dir() / "gguf-py"))
    from gguf import GGUFReader

    return GGUFReader(path)
