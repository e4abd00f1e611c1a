"""How long `netc check nets/googlenet.net` takes, wall time including interpreter start-up.

Goal (language issue): under 0.5 s on a 2-core machine. There is no Caffe here to
race, so the peer printed beside it is the floor every Python command pays: a bare
`python -c "import click"` start-up. The ratio says how much of the time is netc's own.

    python3 bench/check_speed.py [--runs 15] [FILE]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def median_seconds(cmd: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", default="nets/googlenet.net")
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()

    check = [sys.executable, "-m", "netc", "check", args.file]
    floor = [sys.executable, "-c", "import click"]
    median_seconds(check, 2)   # warm the file cache
    ours = median_seconds(check, args.runs)
    base = median_seconds(floor, args.runs)
    print(f"netc check {args.file}: median {ours * 1000:.0f} ms over {args.runs} runs (goal < 500 ms)")
    print(f"python start-up + click:  median {base * 1000:.0f} ms")
    print(f"ratio netc / bare start-up: {ours / base:.2f}x; netc's own share {max(0.0, ours - base) * 1000:.0f} ms")
    print("PASS" if ours < 0.5 else "FAIL", "(< 0.5 s)")


if __name__ == "__main__":
    main()
