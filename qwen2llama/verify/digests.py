"""Tensor digests in golden files: a digest of every output tensor's values as the conversion
defines them, keyed by LLaMA name, recorded from the source alone; verify hashes what a folder
holds and compares, whatever its shards or file format (safetensors or `.bin`).

They come from the mapping (layout.py, formats/), so they prove integrity — no weight changed
since a correct conversion — not correctness: the golden file's reference numbers, recorded
without the mapping, keep that role.
"""
from __future__ import annotations

import time

from ..dtypes import ITEMSIZE, NAME_OF
from ..errors import InputError
from ..progress import NullProgress, Progress
from ..storage import TensorRef
from ..storage.digest import digest
from ..storage.values import output_chunks, ref_chunks
from .report import check, tensors_summary

ALGORITHM = "blake3"
HEX_LENGTH = 64


def record(plan, progress: Progress | None = None) -> dict:
    """{"hash", "dtype", "format", "quantized", "tensors": {name: {dtype, shape, digest}}} for a plan."""
    progress = progress or NullProgress()
    progress.start("golden: tensor digests", plan.total_bytes)
    tensors = {}
    for t in plan.tensors:
        tensors[t.name] = {"dtype": t.dtype, "shape": list(t.shape),
                           "digest": digest(output_chunks(t), ALGORITHM)}
        progress.advance(t.nbytes)
    progress.finish()
    return {"hash": ALGORITHM, "dtype": NAME_OF[plan.dtype], "format": plan.fmt.name,
            "quantized": plan.quantized,
            "tensors": tensors}


def validate(recorded, path) -> None:
    """A golden header's tensor digests, as `record` writes them, or bad input naming the field."""
    def bad(field: str, want: str):
        return InputError(f"the golden file's tensor_digests.{field} is not {want}", path=path,
                          fix="record it again with `qwen2llama golden SRC FILE`")

    if not isinstance(recorded, dict) or recorded.get("hash") != ALGORITHM:
        raise bad("hash", f"{ALGORITHM!r}")
    tensors = recorded.get("tensors")
    if not isinstance(tensors, dict) or not tensors:
        raise bad("tensors", "a non-empty object")
    for name, entry in tensors.items():
        if not isinstance(entry, dict) or entry.get("dtype") not in ITEMSIZE:
            raise bad(f"tensors[{name!r}].dtype", "a safetensors dtype")
        shape = entry.get("shape")
        if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                                  for n in shape):
            raise bad(f"tensors[{name!r}].shape", "a list of sizes")
        value = entry.get("digest")
        if not isinstance(value, str) or len(value) != HEX_LENGTH or value.strip("0123456789abcdef"):
            raise bad(f"tensors[{name!r}].digest", f"{HEX_LENGTH} hex digits")


def check_tensors_golden(recorded: dict, dst_tensors: dict[str, TensorRef], against: str,
                         progress: Progress | None = None) -> dict:
    """Every tensor of the folder hashed and compared with the recorded digests."""
    progress = progress or NullProgress()
    t0 = time.perf_counter()
    want = recorded["tensors"]
    failures = [f"missing: {n}" for n in sorted(set(want) - set(dst_tensors))]
    failures += [f"extra: {n}" for n in sorted(set(dst_tensors) - set(want))]
    compared = identical = 0
    progress.start("tensors: digests (golden)", sum(r.nbytes for n, r in dst_tensors.items() if n in want))
    for name, entry in want.items():
        got = dst_tensors.get(name)
        if got is None:
            continue
        if got.dtype != entry["dtype"] or list(got.shape) != entry["shape"]:
            failures.append(f"{name}: {got.dtype} {list(got.shape)}, the golden file recorded "
                            f"{entry['dtype']} {entry['shape']}")
        elif digest(ref_chunks(got), recorded["hash"]) != entry["digest"]:
            failures.append(f"{name}: values differ from the golden file ({recorded['hash']} of the tensor)")
        else:
            identical += 1
        compared += got.nbytes
        progress.advance(got.nbytes)
    progress.finish()
    found = {"tensors": len(want), "identical": identical, "bytes_compared": compared}
    return check(not failures, tensors_summary(found), **found,
                 seconds=round(time.perf_counter() - t0, 2),
                 hash=recorded["hash"], output_dtype=recorded.get("dtype"), format=recorded.get("format"),
                 against=against, failures=failures)
