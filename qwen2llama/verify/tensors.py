"""Check 2, tensors: every output tensor equals its planned source slice bit for bit (or the
source cast to the output dtype; GPTQ: its columns); nothing missing or extra; zero companions
all zeros. A dequantized GPTQ linear is compared with the plan's dequantization, which the
logits check then holds against the reference's own."""
from __future__ import annotations

import numpy as np
import torch

from ..dtypes import NAME_OF, torch_dtype
from ..plan import build_plan
from ..qwen.checkpoint import Checkpoint
from ..storage import OutputTensor, TensorRef, read_ref, unknown_kind
from ..storage.refs import row_blocks
from ..storage.values import CHUNK, byte_chunks
from .report import check, tensors_summary




def _same_bytes(want: OutputTensor, got: TensorRef) -> bool:
    offset, length = want.source.rows(want.row_start, want.row_stop)
    if length != got.nbytes:
        return False
    return all(a == b for a, b in zip(byte_chunks(want.source, offset, length),
                                      byte_chunks(got, got.offset, got.nbytes)))


_SIGNLESS = {"F16": (np.uint16, 0x7FFF), "BF16": (np.uint16, 0x7FFF), "F32": (np.uint32, 0x7FFFFFFF)}


def _all_zero(ref: TensorRef, negative_zero: bool = False) -> bool:
    """Every byte zero; with `negative_zero`, every element +0.0 or -0.0 (raw words with the sign
    bit masked: apart from the plan's own float test)."""
    word, mask = _SIGNLESS[ref.dtype] if negative_zero else (np.uint8, 0xFF)
    return not any((np.frombuffer(c,
                                  dtype=word) & mask).any() for c in byte_chunks(ref, ref.offset, ref.nbytes))


def _same_cast(want: OutputTensor, got: TensorRef) -> bool:
    src = want.source
    for start, stop in row_blocks(want.row_start, want.row_stop, src.nbytes // src.shape[0], CHUNK):
        a = read_ref(src, start, stop).to(torch_dtype(want.dtype))
        b = read_ref(got, start - want.row_start, stop - want.row_start)
        if not torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8)):
            return False
    return True


def _same_columns(want: OutputTensor, got: TensorRef) -> bool:
    src, (c0, c1) = want.source, want.cols
    for start, stop in row_blocks(want.row_start, want.row_stop, src.nbytes // src.shape[0], CHUNK):
        a = read_ref(src, start, stop)[:, c0:c1].contiguous().view(torch.uint8)
        if not torch.equal(a, read_ref(got, start - want.row_start, stop - want.row_start).view(torch.uint8)):
            return False
    return True


def _same_derived(want: OutputTensor, got: TensorRef) -> bool:
    row = 0
    for block in want.derived.blocks(want.dtype):
        b = read_ref(got, row, row + block.shape[0])
        if not torch.equal(block.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8)):
            return False
        row += block.shape[0]
    return True


def _compare(want: OutputTensor, got: TensorRef) -> str | None:
    """None when equal, else what differs."""
    match want.kind:
        case "computed":
            same, what = _same_derived(want, got), "differs from the dequantized source"
        case "columns":
            same = _same_columns(want, got)
            what = f"differs from {want.source.name}[:, {want.cols[0]}:{want.cols[1]}]"
        case "zeros":
            same, what = _all_zero(got), "must be all zeros (Qwen has no bias there)"
        case "copy":
            same = _same_bytes(want, got)
            what = f"bytes differ from {want.source.name}[{want.row_start}:{want.row_stop}]"
        case "cast":
            same = _same_cast(want, got)
            what = f"differs from {want.source.name} cast to {NAME_OF[want.dtype]}"
        case _:
            raise unknown_kind(want.kind)
    return None if same else f"{want.name}: {what}"


def _expected_plan(ckpt: Checkpoint, dst_tensors: dict[str, TensorRef], quantized: bool, adapter=None,
                   target=None):
    """The plan that would have written this folder (in the layout `target`), or what is wrong with
    its element types."""
    floats = {r.dtype for r in dst_tensors.values() if r.dtype in NAME_OF}
    others = {r.dtype for r in dst_tensors.values()} - floats
    if ckpt.quantization is not None and quantized:
        if not floats or others - {"I32"}:
            return f"output dtypes {sorted(floats | others)}: expected GPTQ's int32 and floating-point types"
        kept = build_plan(ckpt, target=target)  # each tensor as stored, or the dense ones cast with --dtype
        if all(dst_tensors[t.name].dtype == t.dtype for t in kept.tensors if t.name in dst_tensors):
            return kept
        emb = dst_tensors.get("model.embed_tokens.weight")
        return build_plan(ckpt, NAME_OF[emb.dtype], target=target) if emb is not None and \
            emb.dtype in NAME_OF else kept
    if len(floats) != 1 or others:
        return f"output dtypes {sorted(floats | others)}: expected one floating-point type"
    if ckpt.quantization is not None:  # a --dequantize conversion
        return build_plan(ckpt, dequantize=NAME_OF[floats.pop()], target=target)
    return build_plan(ckpt, NAME_OF[floats.pop()], adapter=adapter, target=target)


def compare_planned(expected: dict[str, OutputTensor], dst_tensors: dict[str, TensorRef]) -> dict:
    """Every planned tensor against the one written: failures, counts, whether a cast narrowed."""
    failures = [f"missing: {n}" for n in sorted(set(expected) - set(dst_tensors))]
    failures += [f"extra: {n}" for n in sorted(set(dst_tensors) - set(expected))]
    compared = identical = 0
    lossy = False
    for name, want in expected.items():
        got = dst_tensors.get(name)
        if got is None:
            continue
        if got.shape != want.shape:
            failures.append(f"{name}: shape {list(got.shape)}, expected {list(want.shape)}")
            continue
        compared += got.nbytes
        lossy |= want.narrows
        problem = _compare(want, got)
        if problem:
            failures.append(problem)
        identical += problem is None
    return {"tensors": len(expected), "identical": identical, "bytes_compared": compared, "lossy_cast": lossy,
            "failures": failures}


def carried_failures(ckpt: Checkpoint, dst) -> list[str]:
    """A reward model's value head is carried: the output's must be the source's, byte for byte."""
    from ..qwen.checkpoint import VALUE_HEAD
    from ..storage.digest import sha256_file

    source = ckpt.companions.get(VALUE_HEAD)
    if source is None:
        return []
    copy = dst / VALUE_HEAD
    if not copy.is_file():
        return [f"{VALUE_HEAD}: the source's value head is not in the output"]
    return [] if sha256_file(copy) == sha256_file(source) else [f"{VALUE_HEAD}: differs from the source's"]


def check_tensors(ckpt: Checkpoint, dst_tensors: dict[str, TensorRef], quantized: bool = False,
                  adapter=None, target=None) -> dict:
    """`quantized`: the folder's config.json has a quantization_config (a GPTQ folder);
    `adapter`: the folder was written with this adapter merged in; `target`: its layout."""
    plan = _expected_plan(ckpt, dst_tensors, quantized, adapter, target)
    if isinstance(plan, str):
        return check(False, failures=[plan])
    found = compare_planned({t.name: t for t in plan.tensors}, dst_tensors)
    found["failures"] += [f"{r.name}: left out of the output as zero, but holds non-zero values"
                          for r in plan.zero_dropped if not _all_zero(r, negative_zero=True)]
    found["dropped_zero"] = len(plan.zero_dropped)
    return check(not found["failures"], tensors_summary(found), **found, output_dtype=NAME_OF[plan.dtype],
                 format=plan.fmt.name,
                 quantized=plan.quantized, merged_adapter=adapter is not None)
