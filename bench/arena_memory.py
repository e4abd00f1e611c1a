"""What one step allocates beyond the memory plan's arena, layer call by layer call,
and how long it takes, against every blob in its own array (Caffe's allocation), in
one run.

    python3 bench/arena_memory.py googlenet train 8
    python3 bench/arena_memory.py alexnet test 16 --top 20

tracemalloc counts what NumPy allocates during a step after a warm-up one: with the
arena, what layers still make outside it; separately, every blob too. "Outside the
plan's room" is scratch a layer took beyond what its type declared (0 when the
declarations are right).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("net", help="a net in nets/ (lenet, alexnet, googlenet, ...) or a .net file")
    parser.add_argument("phase", choices=["train", "test"])
    parser.add_argument("batch", type=int)
    parser.add_argument("--top", type=int, default=8, help="how many layer calls to list")
    args = parser.parse_args()
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")
    import numpy as np

    from netc.compile import build_ir
    from netc.passes.shapes import batch_overrides, infer_shapes
    from netc.runtime.alloc_trace import trace_step
    from netc.runtime.executor import Executor
    from netc.runtime.verify import random_input
    from netc.runtime.weights import init_weights

    path = args.net if args.net.endswith(".net") else str(ROOT / "nets" / f"{args.net}.net")
    ir = build_ir(path, args.phase)
    net = infer_shapes(ir, batch_overrides(infer_shapes(ir), args.batch))
    weights = init_weights(net, 0, np.float32)
    rng = np.random.default_rng(0)
    executors = {memory: Executor(net, weights, memory=memory) for memory in ("separate", "arena")}
    feeds = {t: random_input(net, t, rng) for t in executors["arena"].feeds_needed()}

    def stepper(ex):
        def step():
            ex.forward(feeds)
            if args.phase == "train":
                ex.backward()
        return step

    times: dict[str, list[float]] = {memory: [] for memory in executors}
    for round_ in range(6):          # alternating, so that both see the same machine
        for memory, ex in executors.items():
            started = time.perf_counter()
            stepper(ex)()
            if round_:               # the first is the warm-up
                times[memory].append(time.perf_counter() - started)
    executors["arena"].unplanned.clear()
    traces = {memory: trace_step(ex, stepper(ex)) for memory, ex in executors.items()}
    name = Path(path).stem
    for memory, ex in executors.items():
        arena = 0 if ex.storage.arena is None else ex.storage.arena.nbytes
        print(f"{name} {args.phase} batch {args.batch}, {memory:8}: arena {arena / 2**20:7.1f} MiB, "
              f"allocated during a step {traces[memory].peak_bytes / 2**20:7.2f} MiB at most, "
              f"step {statistics.median(times[memory]) * 1000:7.1f} ms (median of 5)")
    arena = executors["arena"]
    print(f"in the arena, the largest layer calls (allocated beyond the arena), and "
          f"{arena.unplanned_bytes / 2**20:.2f} MiB outside the plan's room:")
    for nbytes, layer, layer_type, call in traces["arena"].largest(args.top):
        print(f"  {nbytes / 2**10:9.1f} KiB  {layer} ({layer_type}) {call}")
    for where, nbytes in sorted(arena.unplanned.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"  outside the plan's room: {nbytes / 2**10:9.1f} KiB  {where}")


if __name__ == "__main__":
    sys.exit(main())
