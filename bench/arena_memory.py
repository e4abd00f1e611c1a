"""What one step takes beyond the memory plan's arena, and how long, against every blob
in its own array (Caffe's allocation), in one run.

    python3 bench/arena_memory.py googlenet train 8
    python3 bench/arena_memory.py alexnet test 16

tracemalloc counts what NumPy allocates during a step after a warm-up one: with the
arena, the temporaries layers still make outside it; separately, every blob too.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("net", help="a net in nets/ (lenet, alexnet, googlenet)")
    parser.add_argument("phase", choices=["train", "test"])
    parser.add_argument("batch", type=int)
    args = parser.parse_args()
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")
    import numpy as np

    from netc.compile import build_ir
    from netc.passes.shapes import batch_overrides, infer_shapes
    from netc.runtime.executor import Executor
    from netc.runtime.verify import random_input
    from netc.runtime.weights import init_weights

    ir = build_ir(str(ROOT / "nets" / f"{args.net}.net"), args.phase)
    net = infer_shapes(ir, batch_overrides(infer_shapes(ir), args.batch))
    weights = init_weights(net, 0, np.float32)
    rng = np.random.default_rng(0)
    executors = {memory: Executor(net, weights, memory=memory) for memory in ("separate", "arena")}
    feeds = {t: random_input(net, t, rng) for t in executors["arena"].feeds_needed()}

    def step(ex):
        ex.forward(feeds)
        if args.phase == "train":
            ex.backward()

    times: dict[str, list[float]] = {memory: [] for memory in executors}
    for round_ in range(6):          # alternating, so that both see the same machine
        for memory, ex in executors.items():
            started = time.perf_counter()
            step(ex)
            if round_:               # the first is the warm-up
                times[memory].append(time.perf_counter() - started)
    for memory, ex in executors.items():
        tracemalloc.start()
        step(ex)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        arena = 0 if ex.storage.arena is None else ex.storage.arena.nbytes
        print(f"{args.net} {args.phase} batch {args.batch}, {memory:8}: arena {arena / 2**20:7.1f} MiB, "
              f"allocated during a step {peak / 2**20:7.1f} MiB, "
              f"step {statistics.median(times[memory]) * 1000:7.1f} ms (median of 5)")

if __name__ == "__main__":
    sys.exit(main())
