"""Where verify computes: the CPU, or an accelerator torch sees (`--device`). The code is the same
layer-streamed code on either; the compute is float32 (TF32 off, so an NVIDIA GPU's matmuls keep
float32's precision and the tolerances stay those of the CPU); statistics are summed on the CPU."""
from __future__ import annotations

from ..errors import InputError

DEVICES = ("auto", "cpu", "cuda", "mps")


def check_name(name: str) -> str:
    """The name, when it is one of DEVICES; bad input otherwise (no torch needed to say so)."""
    if name not in DEVICES:
        raise InputError(f"--device {name!r} is not one of {', '.join(DEVICES)}",
                         fix="use --device auto (an accelerator when torch sees one), cpu, cuda or mps")
    return name


def _available() -> dict[str, bool]:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return {"cpu": True, "cuda": torch.cuda.is_available(), "mps": bool(mps and mps.is_available())}


def compute_device(name: str | None):
    """The torch device for `--device NAME`: auto picks CUDA, then MPS, then the CPU. Bad input
    (exit 2) for a name that is not one of DEVICES or an accelerator torch does not see."""
    import torch

    name = check_name("auto" if name is None else name)
    seen = _available()
    if name == "auto":
        name = next(d for d in ("cuda", "mps", "cpu") if seen[d])
    if not seen[name]:
        raise InputError(f"--device {name}: torch {torch.__version__} sees no {name} device here",
                         fix="use --device cpu, or install a torch build for that accelerator")
    if name == "cuda":  # float32 means float32: no TF32 in matmuls or convolutions
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return torch.device(name)
