"""What a step allocates outside the arena, layer call by layer call (NumPy backend).

The memory plan promises that a step runs inside the arena allocated once; what a
layer still allocates (a NumPy expression's result, a mask) comes on top of it. This
measures that with tracemalloc, which NumPy reports its array memory to: for each
layer call, the most memory allocated at once beyond what was allocated when the call
began. Used by the tests (held near zero) and bench/arena_memory.py.
"""
from __future__ import annotations

import tracemalloc
from dataclasses import dataclass, field


@dataclass
class StepAllocations:
    """peak_bytes: the most allocated at once during the step beyond its start;
    calls: (bytes, layer name, layer type, "forward" or "backward") per layer call,
    in order, bytes being that call's own peak beyond its start."""
    peak_bytes: int = 0
    calls: list[tuple[int, str, str, str]] = field(default_factory=list)

    def largest(self, count: int = 5) -> list[tuple[int, str, str, str]]:
        return sorted(self.calls, key=lambda c: -c[0])[:count]

    def describe(self, count: int = 5) -> str:
        return ", ".join(f"{layer} {kind} {nbytes / 1024:.0f} KiB"
                         for nbytes, layer, _, kind in self.largest(count) if nbytes)


def trace_step(executor, step) -> StepAllocations:
    """Run step() (a forward, a backward, or both, of `executor`) under tracemalloc."""
    result = StepAllocations()
    outer = executor.observer
    already = tracemalloc.is_tracing()
    if not already:
        tracemalloc.start()
    start = tracemalloc.get_traced_memory()[0]
    base = [start]

    def observe(layer, kind, arrays):
        current, peak = tracemalloc.get_traced_memory()
        result.calls.append((max(0, peak - base[0]), layer.name, layer.type, kind))
        result.peak_bytes = max(result.peak_bytes, peak - start)
        if outer is not None:
            outer(layer, kind, arrays)
        tracemalloc.reset_peak()
        base[0] = tracemalloc.get_traced_memory()[0]

    executor.observer = observe
    tracemalloc.reset_peak()
    try:
        step()
        result.peak_bytes = max(result.peak_bytes, tracemalloc.get_traced_memory()[1] - start)
    finally:
        executor.observer = outer
        if not already:
            tracemalloc.stop()
    return result
