"""Splitting NumPy work across the CPU's cores.

OpenBLAS already runs each GEMM on every core, but NumPy's own loops (strided copies
for im2col and col2im, pooling, LRN, elementwise ops) run on one. They release the
GIL, so a small thread pool can run independent slices of one array operation at the
same time. The layers call `split(xp, total, work, fn)`: fn(start, stop) handles the
slice [start, stop) of an outer axis (the batch, or channels) and must write only its
own part of any output, so that the result is bit-identical to one fn(0, total) call.

Only for NumPy (CuPy parallelises on the GPU itself) and only when the work, in array
elements touched, is large enough to pay for handing it to a thread (~10-20 µs).
These parts never overlap a GEMM, but they do compete with OpenBLAS's threads: after
each GEMM, OpenBLAS's workers keep spinning (sched_yield) for a while waiting for the
next one, so in a net that runs GEMMs a helper thread shares a core with a spinning
worker. Measured on 2 cores: LeNet's training step is 0.4-0.8 ms faster unsplit (its
arrays are 0.2-2M elements), while AlexNet's and GoogLeNet's larger ones still gain a
little; hence the high threshold below.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy

from netc.runtime.scratch import current_region, using_region

# Below this many elements a split costs more than it saves. Alone, a 2-way split of a
# float32 copy or add pays off from ~100k elements; between GEMMs (see above) LeNet's
# 2M-element im2col and col2im still lose, AlexNet batch 16 (4-17M) breaks even or gains.
MIN_ELEMENTS = 1 << 22

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


def worth_splitting(xp, total: int, work: int, min_work: int | None = None) -> bool:
    return (xp is numpy and _workers > 1 and total > 1
            and work >= (MIN_ELEMENTS if min_work is None else min_work))


_inside = threading.local()


def split(xp, total: int, work: int, fn, min_work: int | None = None) -> None:
    """Run fn(start, stop) over [0, total), in slices on several threads when xp is
    NumPy and `work` (elements touched) reaches min_work (default MIN_ELEMENTS);
    else as one call. A split inside a slice runs as one call (no nesting)."""
    if getattr(_inside, "active", False) or not worth_splitting(xp, total, work, min_work):
        fn(0, total)
        return
    ranges = chunks(total, _workers)
    pool = _executor()
    region = current_region()     # the layer call's scratch, for every slice's workspace()

    def slice_(a, b):
        _inside.active = True
        try:
            with using_region(region):
                fn(a, b)
        finally:
            _inside.active = False

    # the calling thread takes the first slice itself
    futures = [pool.submit(slice_, a, b) for a, b in ranges[1:]]
    slice_(*ranges[0])
    for f in futures:
        f.result()


# OpenBLAS runs a GEMM of m·n·k below 2·65536·GEMM_MULTITHREAD_THRESHOLD(4) on one
# thread (interface/gemm.c); above it, its own threads do as well as ours.
OPENBLAS_ONE_THREAD_MNK = 1 << 19
# Below this many multiply-adds in all, a batch of small GEMMs is not worth a handoff.
MIN_SPLIT_MACS = 1 << 21


def split_gemms(xp, total: int, macs_each: int, fn) -> None:
    """fn(start, stop) over [0, total) items that each run a GEMM of macs_each m·n·k
    (and the copies around it): split across threads when OpenBLAS would run each
    GEMM on one thread, so that the cores share them; else one call."""
    if macs_each >= OPENBLAS_ONE_THREAD_MNK:
        fn(0, total)
        return
    split(xp, total, total * macs_each, fn, min_work=MIN_SPLIT_MACS)


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
