"""Where a data set named by a net actually is.

The path the net names comes first. A net written on one machine often names a
place that does not exist on another, so when it is missing netc also looks in
`$NETC_DATA/<last component of the named path>`: with NETC_DATA=~/data,
`IDXData(source="/usr/share/datasets/fashion-mnist")` finds ~/data/fashion-mnist.

Both the loader and shape inference (`netc check`) resolve paths here, so they
always agree on which files a net reads. This module imports nothing heavy:
netc.layers.data imports it on every compile.
"""
from __future__ import annotations

import os

ENV_VAR = "NETC_DATA"


class DataNotFound(Exception):
    """Neither the named path nor its NETC_DATA fallback exists."""

    def __init__(self, message: str, hint: str):
        super().__init__(message)
        self.message, self.hint = message, hint


def fallback_path(named: str) -> str | None:
    """`$NETC_DATA/<last component of named>`, or None when NETC_DATA is unset."""
    root = os.environ.get(ENV_VAR)
    if not root:
        return None
    last = os.path.basename(os.path.normpath(named))
    return os.path.join(os.path.expanduser(root), last) if last else None


def find_data(named: str) -> str:
    """The existing path for `named`: itself, else its NETC_DATA fallback.
    Raises DataNotFound saying where it looked and how to get the data."""
    if os.path.exists(named):
        return named
    other = fallback_path(named)
    if other is not None and os.path.exists(other):
        return other
    last = os.path.basename(os.path.normpath(named)) or named
    if other is None:
        message = f"'{named}' does not exist (and {ENV_VAR} is not set, so netc looked nowhere else)"
    else:
        message = f"neither '{named}' nor '{other}' exists"
    raise DataNotFound(message, how_to_get(named, last))


def locate(named: str | None) -> str | None:
    """find_data, but a path found nowhere is returned as named (callers that can
    live without the file, such as shape inference, then say what they lack)."""
    if not named:
        return named
    try:
        return find_data(named)
    except DataNotFound:
        return named


def how_to_get(named: str, last: str) -> str:
    lowered = named.lower()
    if "fashion-mnist" in lowered or "fashion_mnist" in lowered:
        return ("sudo apt-get install dataset-fashion-mnist (Debian's package installs "
                "/usr/share/datasets/fashion-mnist), or put the four IDX files (train-images-idx3-ubyte.gz, "
                "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) "
                f"in ${ENV_VAR}/fashion-mnist")
    if "mnist" in lowered:
        return ("put MNIST's four IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
                "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz, from http://yann.lecun.com/exdb/mnist/) "
                f"in '{named}' or in ${ENV_VAR}/{last}")
    if "cifar" in lowered:
        return ("unpack CIFAR-10's binary version (cifar-10-binary.tar.gz from "
                "https://www.cs.toronto.edu/~kriz/cifar.html: data_batch_1.bin .. data_batch_5.bin, "
                f"test_batch.bin) into '{named}' or into ${ENV_VAR}/{last}")
    return (f"put the data at '{named}', or set {ENV_VAR} to a folder holding '{last}'")
