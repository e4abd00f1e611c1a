"""Snapshots: everything a run needs to go on as if it had never stopped.

A snapshot is two files, each written atomically (temp file, fsync, rename), so a
killed process leaves either the old file or the new one, never half of one:

- `<prefix>_iter_<N>.npz`: the weights, in netc's weights format (for `netc run
  --infer`, `netc viz`, fine-tuning);
- `<prefix>_iter_<N>.solverstate.npz`: the weights again, the solver's history
  buffers and a JSON record (iteration, random generator states, data positions,
  the smoothed-loss window). Resuming reads only this file, so it can never pair
  weights of one iteration with history of another.

No pickles: arrays are plain .npy members and the record is UTF-8 JSON bytes.
"""
from __future__ import annotations

import io
import json
import os
import zipfile

import numpy as np

from netc.errors import NetcError
from netc.fileio import write_bytes_atomic

FORMAT = "netc-solverstate"
VERSION = 1
_RECORD = "__record__"


def snapshot_paths(prefix: str, iteration: int) -> tuple[str, str]:
    base = f"{prefix}_iter_{iteration}"
    return base + ".npz", base + ".solverstate.npz"


def write_state(path: str, record: dict, weights: dict[str, list], solver_state: dict[str, np.ndarray]) -> None:
    """The solverstate file: `record` (JSON-able), weights as `weights/<layer>/<i>`,
    solver buffers as `solver/<name>`."""
    arrays = {_RECORD: np.frombuffer(json.dumps({"format": FORMAT, "version": VERSION, **record}).encode(),
                                     dtype=np.uint8)}
    for layer, blobs in weights.items():
        for i, blob in enumerate(blobs):
            arrays[f"weights/{layer}/{i}"] = np.asarray(blob)
    for name, value in solver_state.items():
        arrays[f"solver/{name}"] = np.asarray(value)
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **arrays)
    write_bytes_atomic(path, buffer.getvalue(), "snapshot")


def read_state(path: str) -> tuple[dict, dict[str, list[np.ndarray]], dict[str, np.ndarray]]:
    """(record, weights, solver state) of a solverstate file; anything wrong with it is
    one NetcError naming the file."""
    def bad(why: str) -> NetcError:
        return NetcError(f"'{path}' is not a netc solver state: {why}", None,
                         "give the .solverstate.npz that netc run --train wrote")

    if not os.path.isfile(path):
        hint = None
        if path.endswith(".npz") and not path.endswith(".solverstate.npz"):
            hint = f"resume from the solver state, e.g. {path[:-4]}.solverstate.npz"
        raise NetcError(f"snapshot '{path}' does not exist", None, hint)
    try:
        with np.load(path, allow_pickle=False) as z:
            if _RECORD not in z.files:
                raise bad("it has no record (is it a weights file?)")
            record = json.loads(bytes(z[_RECORD]).decode("utf-8"))
            weights: dict[str, list[np.ndarray]] = {}
            solver: dict[str, np.ndarray] = {}
            for key in z.files:
                if key.startswith("weights/"):
                    layer, _, index = key[len("weights/"):].rpartition("/")
                    weights.setdefault(layer, []).append((int(index), z[key]))
                elif key.startswith("solver/"):
                    solver[key[len("solver/"):]] = z[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as err:
        raise bad(str(err)) from None
    if record.get("format") != FORMAT:
        raise bad("its record names another format")
    if record.get("version") != VERSION:
        raise bad(f"version {record.get('version')}, this netc reads version {VERSION}")
    ordered = {layer: [a for _, a in sorted(blobs, key=lambda t: t[0])] for layer, blobs in weights.items()}
    return record, ordered, solver
