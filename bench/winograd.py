"""Each stride-1 convolution by im2col + GEMM and by Winograd's algorithm, side by side.

The evidence behind netc.layers.winograd's plan (which layers it takes): for every
convolution Winograd could run, the forward time of both ways in the net's real input
(memory order included), and the plan's choice at this batch.

    python3 bench/winograd.py [--net alexnet|googlenet|lenet] [--batch 16] [--runs 5]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cpu import median_time     # bench/ is the script's own directory

ROOT = Path(__file__).resolve().parent.parent
NETS = {"alexnet": ((3, 227, 227), "fc8"), "googlenet": ((3, 224, 224), "loss3/classifier"),
        "lenet": ((1, 28, 28), "ip2")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", choices=sorted(NETS), default="alexnet")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    from netc.layers import winograd
    from netc.layers.base import REGISTRY
    from netc.passes.prune import prune_to_outputs
    from netc.runtime import infer
    from netc.runtime.executor import Executor
    from netc.runtime.weights import init_weights

    shape, output = NETS[args.net]
    x = np.random.default_rng(0).uniform(-1, 1, size=(args.batch,) + shape).astype(np.float32)
    net, _, _ = infer.prepare(str(ROOT / "nets" / f"{args.net}.net"), {"data": x}, args.batch)
    net = prune_to_outputs(net, [output])
    weights = init_weights(net, seed=0)
    ex = Executor(net, weights)
    ex.forward({"data": x})
    conv = REGISTRY["Convolution"]
    chosen = winograd.MIN_COLUMNS
    print(f"{args.net}, batch {args.batch}: forward ms, median of {args.runs}")
    print(f"{'layer':28} {'C':>4} {'Co':>4} {'k':>3} {'out':>4} {'tiles·N':>8} {'direct':>8} {'Winograd':>9} "
          f"{'speed-up':>8}  plan")
    totals = [0.0, 0.0]
    for layer in net.layers:
        if layer.type != "Convolution":
            continue
        p, bottom = dict(layer.params), ex.blobs[layer.bottoms[0]]
        geo = conv._geometry(p, bottom)
        winograd.MIN_COLUMNS = 0                 # any tile count: could Winograd run it at all?
        possible = winograd.plan(geo, p["group"], args.batch)
        if possible is None:
            continue
        times = []
        for min_columns in (1 << 62, 0):         # direct, then Winograd
            winograd.MIN_COLUMNS = min_columns
            times.append(1000 * median_time(lambda: conv.forward(p, [bottom], weights[layer.name], ex.ctx, {}),
                                                   args.runs))
        winograd.MIN_COLUMNS = chosen
        takes = winograd.plan(geo, p["group"], args.batch) is not None
        totals = [t + s for t, s in zip(totals, times)]
        columns = possible.tiles_h * possible.tiles_w * args.batch
        print(f"{layer.name:28} {geo.c:4} {weights[layer.name][0].shape[0]:4} {geo.kh:3} {geo.oh:4} {columns:8} "
              f"{times[0]:8.2f} {times[1]:9.2f} {times[0] / times[1]:7.2f}x  {'Winograd' if takes else 'direct'}")
    print(f"{'total':28} {'':4} {'':4} {'':3} {'':4} {'':8} {totals[0]:8.2f} {totals[1]:9.2f}")


if __name__ == "__main__":
    main()
