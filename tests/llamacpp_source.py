"""llama.cpp's own converter, from the llama-cpp-python source distribution on PyPI.

Downloaded once with pip into a cache outside the repository (never committed); only the
converter script, its `conversion/` package and `gguf-py` are unpacked.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

VERSION = os.environ.get("LLAMA_CPP_PYTHON_VERSION", "0.3.36")
CACHE = Path(os.environ.get("QWEN2LLAMA_CACHE", Path.home() / ".cache" / "qwen2llama"))
WANTED = ("vendor/llama.cpp/convert_hf_to_gguf.py", "vendor/llama.cpp/conversion/", "vendor/llama.cpp/gguf-py/")


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
    if not (root / "convert_hf_to_gguf.py").exists():
        prefix = f"llama_cpp_python-{VERSION}/"
        tmp = root.with_suffix(".partial")
        with tarfile.open(sdist()) as tar:
            members = [m for m in tar.getmembers()
                       if m.name.startswith(prefix) and m.name[len(prefix):].startswith(WANTED) and m.isfile()]
            for m in members:
                m.name = m.name[len(prefix + "vendor/llama.cpp/"):]
            tar.extractall(tmp, members=members, filter="data")
        tmp.rename(root)
    return root


def convert_to_gguf(model_dir: Path, outfile: Path, outtype: str = "f32") -> subprocess.CompletedProcess:
    root = converter_dir()
    env = {**os.environ, "PYTHONPATH": f"{root / 'gguf-py'}{os.pathsep}{root}", "NO_LOCAL_GGUF": ""}
    return subprocess.run([sys.executable, str(root / "convert_hf_to_gguf.py"), str(model_dir), "--outfile", str(outfile),
                           "--outtype", outtype], capture_output=True, text=True, env=env, timeout=600)


def gguf_reader(path: Path):
    sys.path.insert(0, str(converter_dir() / "gguf-py"))
    from gguf import GGUFReader

    return GGUFReader(path)
