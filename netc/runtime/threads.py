"""Splitting NumPy work across the CPU's cores.

OpenBLAS already runs each GEMM on every core, but NumPy's own loops (strided copies
for im2col and col2im, pooling, LRN, elementwise ops) run on one. They release the
GIL, so a small thread pool can run independent slices of one array operation at the
same time. The layers call `split(xp, total, work, fn)`: fn(start, stop) handles the
slice [start, stop) of an outer axis (the batch, or channels) and must write only its
own part of any output, so that the result is bit-identical to one fn(0, total) call.

Only for NumPy (CuPy parallelises on the GPU itself) and only when the work, in array
elements touched, is large enough to pay for handing it to a thread (~10-20 µs).
These parts never overlap a GEMM, so they do not compete with OpenBLAS's threads.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy

# Below this many elements a split costs more than it saves (measured: a 2-way split
# of a float32 copy or add starts to pay off around 50-100k elements).
MIN_ELEMENTS = 1 << 17

_workers = max(1, os.cpu_count() or 1)
_pool: ThreadPoolExecutor | None = None


def workers() -> int:
    return _workers


def set_workers(n: int) -> None:
    """Use n threads from now on (1: never split). For tests and benchmarks."""
    global _workers, _pool
    if _pool is not None:
        _pool.shutdown(wait=True)
        _pool = None
    _workers = max(1, int(n))


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=_workers, thread_name_prefix="netc")
    return _pool


def chunks(total: int, parts: int) -> list[tuple[int, int]]:
    """[0, total) cut into `parts` near-equal contiguous ranges (none empty)."""
    parts = max(1, min(parts, total))
    step, extra = divmod(total, parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + step + (1 if i < extra else 0)
        out.append((start, stop))
        start = stop
    return out


def worth_splitting(xp, total: int, work: int) -> bool:
    return xp is numpy and _workers > 1 and total > 1 and work >= MIN_ELEMENTS


def split(xp, total: int, work: int, fn) -> None:
    """Run fn(start, stop) over [0, total), in slices on several threads when xp is
    NumPy and `work` (elements touched) is large enough; else as one call."""
    if not worth_splitting(xp, total, work):
        fn(0, total)
        return
    ranges = chunks(total, _workers)
    pool = _executor()
    # the calling thread takes the first slice itself
    futures = [pool.submit(fn, a, b) for a, b in ranges[1:]]
    fn(*ranges[0])
    for f in futures:
        f.result()


# --- memory -------------------------------------------------------------------------
# Not about threads, but about the same NumPy CPU runtime's speed. A forward/backward
# pass allocates its blobs afresh and frees them at the end; glibc then gives the freed
# top of the heap back to the kernel (trim) and serves large arrays by mmap, so the
# next pass pays a page fault (zeroing) per 4 KiB page touched, costly under a VM:
# ~3 ms of LeNet's 19 ms step here. Keeping freed memory in the process removes that.
# A process-wide setting: the runtime's owner (executor/CLI) decides to call it.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory(trim_bytes: int = 1 << 30, mmap_bytes: int = 256 << 20) -> bool:
    """Ask glibc's malloc to keep up to trim_bytes of freed memory and to serve arrays
    under mmap_bytes from the heap. True where it took effect (glibc only)."""
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_TRIM_THRESHOLD, int(trim_bytes))) and bool(mallopt(_M_MMAP_THRESHOLD, int(mmap_bytes)))
