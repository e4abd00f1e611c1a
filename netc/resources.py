"""Finding the files that ship with netc: the grammar and the CUDA kernels.

Installed, they are the packages netc.grammars and netc.kernels (setup.py maps
the top-level grammars/ and kernels/ there). Run from a source checkout, the
checkout's netc/ can shadow that mapping, so fall back to the top-level folders.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path


def read_resource(folder: str, filename: str) -> str:
    try:
        return resources.files(f"netc.{folder}").joinpath(filename).read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError):
        return (Path(__file__).resolve().parent.parent / folder / filename).read_text(encoding="utf-8")
