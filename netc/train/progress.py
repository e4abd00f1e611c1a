"""The terminal side of a training run: a live bar (iteration, loss, learning rate,
images/s, ETA) and one line per display step and per test, above the bar.

tqdm draws the bar only on a terminal; into a file or a pipe (CI, `| tee`) the
display and test lines are all that is written, so logs stay readable.
"""
from __future__ import annotations

import sys

from netc.train.trainer import Reporter


class TerminalReporter(Reporter):
    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.bar = None
        self.examples = 1

    def start(self, first: int, last: int, examples_per_iter: int) -> None:
        from tqdm import tqdm

        self.examples = examples_per_iter
        self.bar = tqdm(total=last, initial=first, file=self.stream, unit="it", dynamic_ncols=True,
                        disable=None if self.stream.isatty() else True, leave=True,
                        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]")

    def iteration(self, it: int, loss: float, lr: float) -> None:
        if self.bar is not None and not self.bar.disable:
            self.bar.update(it - self.bar.n)
            rate = self.bar.format_dict.get("rate") or 0.0
            self.bar.set_postfix_str(f"loss {loss:.4f}, lr {lr:.3g}, {rate * self.examples:,.0f} img/s",
                                     refresh=False)

    def display(self, it: int, loss: float, lr: float, images_per_s: float) -> None:
        self._line(f"iteration {it:>7}  loss {loss:.6f}  lr {lr:.6g}  {images_per_s:,.0f} img/s")

    def test(self, it: int, results: dict[str, float]) -> None:
        shown = "  ".join(f"{name} {value:.4f}" for name, value in results.items())
        self._line(f"iteration {it:>7}  test: {shown}")

    def message(self, text: str) -> None:
        self._line(f"netc: {text}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _line(self, text: str) -> None:
        if self.bar is not None and not self.bar.disable:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)
