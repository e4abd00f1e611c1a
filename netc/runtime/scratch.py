"""Scratch memory for one layer call: pieces of the room the memory plan gave it.

A layer's forward and backward need arrays besides their inputs and outputs: column
matrices, padded copies, masks, partial sums (`workspace`), and, for the backward,
state the forward keeps (`RunContext.kept`). The memory plan (netc.passes.memory)
reserves room for both in the arena, sized by the layer type's workspace_bytes and
kept_bytes; the executor opens a Region over that room around the call, and
`workspace()` hands out pieces of it, so that a training step allocates nothing.

A piece is named by a slot: the same slot asked again on the same thread gets the
same memory back (valid until then, as with the thread slots below), so a loop that
asks for its scratch every turn takes its room once. Threads of netc.runtime.threads
working on one call share its region, each with pieces of its own.

Where the region is too small for a piece, or outside a region (the executor with
memory="separate", tests calling a layer directly), the piece comes from a buffer per
thread and slot kept between calls (Caffe keeps its col_buffer so too): a fresh array
costs its page zeroing, as much as the copy into it. A region counts what did not fit
(`overflow_bytes`): room the layer's workspace_bytes did not declare. CuPy pools its
memory itself, so outside a region it gets plain arrays.
"""
from __future__ import annotations

import math
import threading
from contextlib import contextmanager

import numpy

# Beyond this size a piece outside a region is a fresh array, given back after use,
# rather than a buffer kept for the thread.
_SLOT_MAX_BYTES = 512 << 20
_ALIGNMENT = 64

_local = threading.local()


def aligned(nbytes: int) -> int:
    """The room a piece of `nbytes` takes in a region: what a layer type's
    workspace_bytes and kept_bytes add up, piece by piece."""
    return -(-int(nbytes) // _ALIGNMENT) * _ALIGNMENT


class Region:
    """Bytes (a uint8 array, NumPy or CuPy) handed out in aligned pieces by slot."""

    def __init__(self, memory):
        self.memory = memory
        self.used = 0
        self.overflow_bytes = 0
        self._pieces: dict[tuple[str, int], tuple[int, int]] = {}
        self._lock = threading.Lock()

    def take(self, nbytes: int, slot: str):
        """`nbytes` of the region for `slot` on this thread, or None where they do not fit."""
        key = (slot, threading.get_ident())
        with self._lock:
            piece = self._pieces.get(key)
            if piece is not None and piece[1] >= nbytes:
                return self.memory[piece[0]:piece[0] + nbytes]
            start = aligned(self.used)
            if self.memory is None or start + nbytes > self.memory.size:
                self.overflow_bytes += nbytes
                return None
            self.used = start + nbytes
            self._pieces[key] = (start, nbytes)
            return self.memory[start:start + nbytes]

    def array(self, shape, dtype, slot: str):
        """An uninitialised array of `shape` and `dtype` in the piece for `slot` (see
        take), or None where it does not fit."""
        dtype = numpy.dtype(dtype)
        shape = tuple(int(d) for d in shape) if isinstance(shape, (tuple, list)) else (int(shape),)
        memory = self.take(dtype.itemsize * math.prod(shape), slot)    # math.prod: numpy.prod costs µs
        return None if memory is None else memory.view(dtype).reshape(shape)

    def holds(self, array) -> bool:
        """Whether `array`'s memory lies inside the region."""
        if self.memory is None:
            return False
        start = address(self.memory)
        return start <= address(array) < start + self.memory.size


def address(array) -> int:
    """Where an array's data begins (NumPy or CuPy)."""
    ptr = getattr(getattr(array, "data", None), "ptr", None)
    return ptr if ptr is not None else array.__array_interface__["data"][0]


def current_region() -> Region | None:
    """The region workspace() hands out on this thread now, if any."""
    return getattr(_local, "region", None)


@contextmanager
def using_region(region: Region | None):
    """Within it, workspace() on this thread takes its pieces from `region`."""
    previous = getattr(_local, "region", None)
    _local.region = region
    try:
        yield region
    finally:
        _local.region = previous


def workspace(xp, shape, dtype, slot: str = "col"):
    """An uninitialised scratch array, valid until the next call for the same slot on
    this thread: never return it, or keep it past the layer call that asked."""
    region = current_region()
    if region is not None:
        array = region.array(shape, dtype, slot)
        if array is not None:
            return array
    dtype = numpy.dtype(dtype)
    shape = tuple(int(d) for d in shape) if isinstance(shape, (tuple, list)) else (int(shape),)
    nbytes = dtype.itemsize * math.prod(shape)
    if xp is not numpy or nbytes > _SLOT_MAX_BYTES:
        return xp.empty(shape, dtype=dtype)
    buffers = getattr(_local, "buffers", None)
    if buffers is None:
        buffers = _local.buffers = {}
    buf = buffers.get(slot)
    if buf is None or buf.nbytes < nbytes:
        buf = buffers[slot] = numpy.empty(nbytes, dtype=numpy.uint8)
    return buf[:nbytes].view(dtype).reshape(shape)
