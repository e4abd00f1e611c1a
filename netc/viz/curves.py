"""`netc plot`: training curves from a JSON-lines log.

Each line of the log is one JSON object with an integer "iter", and either
  a display record   {"iter": 100, "loss": 0.31, "lr": 0.01, "seconds": 12.5}
  or a test record   {"iter": 500, "test": {"accuracy": 0.91, "loss": 0.30, ...}}
(test outputs by name; top-5 accuracy may appear as "accuracy_top5"). Other keys
are ignored, so the log can grow. The picture has two panels sharing the iteration
axis: training loss on top (test losses beside it, dashed), log-scaled when it
spans more than a factor of 10; below it every test output whose name holds
"accuracy".
"""
from __future__ import annotations

import io
import json
import math
import os
from dataclasses import dataclass, field

from netc.errors import NetcError, Span
from netc.fileio import open_input, write_bytes_atomic

FORMATS = ("png", "svg", "pdf")
DPI = 100


@dataclass
class Curves:
    train_iters: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    test: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)   # name -> (iters, values)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_log(path: str) -> Curves:
    """The curves of a JSON-lines training log; a line that is not a record is a NetcError at it."""
    with open_input(path, "training log") as f:
        raw = f.read()
    text = raw.decode("utf-8", errors="replace")
    curves = Curves()
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        def bad(why: str, hint: str | None = None) -> NetcError:
            return NetcError(why, Span(path, number, 1, number, len(line) + 1), hint or
                             'each line is one JSON object: {"iter": N, "loss": X, ...} or {"iter": N, "test": {...}}')
        if not line.strip():
            raise bad("empty line in the training log")
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise bad(f"not JSON: {err.msg} (column {err.colno})") from None
        if not isinstance(record, dict):
            raise bad("a log record is a JSON object")
        it = record.get("iter")
        if not isinstance(it, int) or isinstance(it, bool):
            raise bad('a log record needs an integer "iter"')
        if "loss" in record:
            if not _number(record["loss"]):
                raise bad('"loss" is not a number')
            curves.train_iters.append(it)
            curves.train_loss.append(float(record["loss"]))
        if "test" in record:
            outputs = record["test"]
            if not isinstance(outputs, dict) or not all(_number(v) for v in outputs.values()):
                raise bad('"test" is not an object of numbers by output name')
            for name, value in outputs.items():
                iters, values = curves.test.setdefault(name, ([], []))
                iters.append(it)
                values.append(float(value))
    if not curves.train_loss and not curves.test:
        raise NetcError(f"training log '{path}' holds no records", Span(path, 1, 1) if lines else None,
                        "netc run --train writes one line per display and per test")
    return curves


def _log_scale(values: list[float]) -> bool:
    finite = [v for v in values if math.isfinite(v)]
    return bool(finite) and min(finite) > 0 and max(finite) > 10 * min(finite)


def import_pyplot():
    """pyplot on the Agg backend (no display needed), or a NetcError saying how to get it."""
    try:
        import matplotlib
    except ImportError:
        raise NetcError("netc plot needs matplotlib", None, "pip install 'netc[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def figure_bytes(curves: Curves, title: str, size: tuple[int, int], fmt: str) -> bytes:
    plt = import_pyplot()
    width, height = size
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(width / DPI, height / DPI), dpi=DPI)
    try:
        losses = list(curves.train_loss)
        if curves.train_loss:
            top.plot(curves.train_iters, curves.train_loss, lw=1, label="train loss")
        for name, (iters, values) in curves.test.items():
            if "loss" in name:
                top.plot(iters, values, "--o", ms=3, lw=1, label=f"test {name}")
                losses += values
        if _log_scale(losses):
            top.set_yscale("log")
        top.set_ylabel("loss")
        if top.lines:
            top.legend(loc="upper right", fontsize="small")
        accuracies = {n: c for n, c in curves.test.items() if "accuracy" in n}
        for name, (iters, values) in accuracies.items():
            bottom.plot(iters, values, "-o", ms=3, lw=1, label=name)
        bottom.set_ylabel("test accuracy")
        bottom.set_xlabel("iteration")
        if accuracies:
            bottom.legend(loc="lower right", fontsize="small")
        else:
            bottom.text(0.5, 0.5, "no test accuracy in the log", ha="center", va="center",
                        transform=bottom.transAxes, color="grey")
        for ax in (top, bottom):
            ax.grid(True, alpha=0.3)
        top.set_title(title)
        fig.tight_layout()
        buffer = io.BytesIO()
        # no bbox_inches="tight": the PNG keeps exactly the requested pixel size
        fig.savefig(buffer, format=fmt, dpi=DPI)
        return buffer.getvalue()
    finally:
        plt.close(fig)


def plot_log(path: str, output: str, size: tuple[int, int] = (1000, 700)) -> Curves:
    """Draw the log's curves into `output` (.png, .svg or .pdf), atomically."""
    fmt = os.path.splitext(str(output))[1].lower().lstrip(".")
    if fmt not in FORMATS:
        raise NetcError(f"cannot write '{output}': plots are written as {', '.join('.' + f for f in FORMATS)}",
                        None, "give an output name ending in .png")
    import_pyplot()           # before reading a long log, say if matplotlib is missing
    curves = read_log(path)
    data = figure_bytes(curves, os.path.basename(str(path)), size, fmt)
    write_bytes_atomic(output, data, "plot")
    return curves
