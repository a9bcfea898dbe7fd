"""Freed buffers kept for reuse while verify runs. Verify reads every layer of both models into
fresh buffers of the same few sizes; glibc returns each large one to the kernel when it is freed
(munmap), and the next layer's read faults every page in again, zero-filled. Measured at Qwen-7B
widths (2 layers, 2 cores): 56 of verify's 66 seconds were kernel time; with the thresholds
raised, 31 s in all. Peak RSS rises by what the heap keeps (1.48 -> 1.85 GiB there); the
bound in tests/test_memory.py holds. Elsewhere than glibc this does nothing."""
from __future__ import annotations

import ctypes
import ctypes.util
from contextlib import contextmanager

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
DEFAULT = 128 * 1024  # glibc's initial value of both
KEEP = 1 << 30  # blocks up to 1 GiB come from the heap, and freeing never trims it


def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") else None
    except OSError:
        return None


@contextmanager
def reused_heap():
    """Large allocations from the heap, kept there when freed; glibc's defaults again after."""
    libc = _libc()
    if libc is None:
        yield
        return
    libc.mallopt(M_MMAP_THRESHOLD, KEEP)
    libc.mallopt(M_TRIM_THRESHOLD, KEEP)
    try:
        yield
    finally:
        libc.mallopt(M_MMAP_THRESHOLD, DEFAULT)
        libc.mallopt(M_TRIM_THRESHOLD, DEFAULT)
