"""Weights files: netc's .npz and Caffe's binary .caffemodel, saved and loaded.

The format follows the file's extension: `.npz` (netc's own, laid out as
NPZ_LAYOUT below says) or `.caffemodel` (Caffe's binary NetParameter, see
netc.caffe.caffemodel); `.caffemodel.h5` (Caffe's HDF5 snapshots) is refused
with a clear message. Loading matches blobs to the net BY LAYER NAME, as
Caffe's Net::CopyTrainedLayersFrom does: entries for layers the net lacks are
ignored (a training net's data and loss layers); every blob's shape and each
layer's number of blobs are checked against the compiled net. Writing is
atomic (temp file, fsync, rename): a failure never leaves half a file.
"""
from __future__ import annotations

import io
import json
import os
from typing import Mapping, Sequence

import numpy as np

from netc.caffe.caffemodel import caffemodel_bytes, read_caffemodel_entries
from netc.errors import NetcError
from netc.fileio import open_input, write_bytes_atomic
from netc.ir import Net, Shape
from netc.runtime.weights import Weights

__all__ = ["NPZ_LAYOUT", "FORMAT_KEY", "save_weights", "load_weights", "weights_format"]

NPZ_LAYOUT = """\
netc's .npz weights layout (a NumPy .npz: an uncompressed zip of .npy arrays)

  "<layer name>/<blob index>"  one array per learnable blob, in Caffe's blob order
                               (0 = weights, 1 = bias; BatchNorm 0, 1, 2 = mean,
                               variance, factor), with the net's blob shape; float32
                               unless saved otherwise. A layer name may itself
                               contain "/": the blob index is always the last
                               component. A blob shared through a ParamSpec name is
                               stored under every layer that uses it.
  "__netc__/format"            uint8 array holding UTF-8 JSON:
                               {"format": "netc-weights", "version": 1, "net": "<net name>"}

Blobs are matched to the net by layer name when loaded. Nothing is pickled:
files are read with allow_pickle=False and object arrays are refused.
"""

FORMAT_KEY = "__netc__/format"
_FORMAT_NAME = "netc-weights"
_FORMAT_VERSION = 1
_KINDS_HINT = "weights files end in .npz (netc's format) or .caffemodel (Caffe's binary format)"

# (array as read, legacy 4-d dims?) per blob, per layer name.
_Found = Mapping[str, Sequence[tuple[np.ndarray, bool]]]


def weights_format(path) -> str:
    """"npz" or "caffemodel", from the file name; NetcError for anything else."""
    path = str(path)
    lower = path.lower()
    if lower.endswith((".h5", ".hdf5")):
        raise NetcError(f"weights file '{path}': HDF5 weights (.caffemodel.h5) are not supported",
                        hint="save them as a binary .caffemodel from Caffe "
                             "(net.save('x.caffemodel') in pycaffe), or as .npz")
    if lower.endswith(".npz"):
        return "npz"
    if lower.endswith(".caffemodel"):
        return "caffemodel"
    suffix = os.path.splitext(path)[1]
    what = f"'{suffix}'" if suffix else "a name without an extension"
    raise NetcError(f"weights file '{path}': unknown weights format ({what})", hint=_KINDS_HINT)


# ---------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------

def save_weights(path, net: Net, weights: Mapping[str, Sequence[np.ndarray]]) -> None:
    """Write `weights` of `net` to `path` (.npz or .caffemodel, by extension), atomically.

    Every layer of the net with learnable blobs must have them in `weights`,
    with the net's shapes; .npz keeps each array's dtype, .caffemodel stores
    float32 as Caffe does.
    """
    path = str(path)
    kind = weights_format(path)
    _check_complete(net, weights)
    data = _npz_bytes(net, weights) if kind == "npz" else caffemodel_bytes(net, weights)
    write_bytes_atomic(path, data, "weights file")


def _check_complete(net: Net, weights: Mapping[str, Sequence[np.ndarray]]) -> None:
    names = {layer.name for layer in net.layers}
    for name in weights:
        if name not in names:
            raise NetcError(f"the weights hold blobs for layer '{name}', which net "
                            f"'{net.name}' does not have")
    for layer in net.layers:
        expected = _expected_shapes(net, layer.name)
        blobs = weights.get(layer.name)
        if blobs is None:
            if expected:
                raise NetcError(f"no weights given for layer '{layer.name}'", layer.span)
            continue
        if len(blobs) != len(expected):
            raise NetcError(f"layer '{layer.name}' has {len(blobs)} weight blobs, "
                            f"but the net expects {len(expected)}", layer.span)
        for i, (blob, shape) in enumerate(zip(blobs, expected)):
            array = np.asarray(blob)
            if array.shape != shape:
                raise NetcError(f"layer '{layer.name}' blob {i} has shape {_fmt(array.shape)}, "
                                f"but the net expects {_fmt(shape)}", layer.span)
            if array.dtype.kind not in "fiu":
                raise NetcError(f"layer '{layer.name}' blob {i} holds {array.dtype} values, "
                                "not numbers", layer.span)


def _npz_bytes(net: Net, weights: Mapping[str, Sequence[np.ndarray]]) -> bytes:
    header = {"format": _FORMAT_NAME, "version": _FORMAT_VERSION, "net": net.name}
    arrays = {FORMAT_KEY: np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)}
    for layer in net.layers:
        for i, blob in enumerate(weights.get(layer.name, ())):
            arrays[f"{layer.name}/{i}"] = np.asarray(blob)
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **arrays)
    return buf.getvalue()


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------

def load_weights(path, net: Net, dtype=np.float32, allow_missing: bool = False,
                 initial: Mapping[str, Sequence[np.ndarray]] | None = None) -> Weights:
    """Read a weights file (.npz or .caffemodel, by extension) into `net`'s layout.

    Blobs are matched by layer name; entries for layers the net lacks are
    ignored. Each blob's shape must be the net's (a legacy 4-d num/channels/
    height/width .caffemodel blob is accepted, and reshaped, when the net's
    shape padded on the left with 1s equals it, as Caffe does), and a layer must
    have exactly as many blobs as the net expects. Arrays are converted to
    `dtype` (None keeps the stored type). Layers sharing a ParamSpec name get one
    array object, taken from the first such layer in net order that the file has.

    A layer with learnable blobs that the file does not provide (and that
    sharing does not cover) is an error, unless `allow_missing`. Then its blobs
    come from `initial` (for example init_weights(net)) when given, keeping the
    sharing of `initial`'s arrays; without `initial` the layer is simply left out
    of the result, so the result then holds only what the file provided.
    """
    path = str(path)
    if weights_format(path) == "npz":
        found = _read_npz(path)
    else:
        found = read_caffemodel_entries(path)
    return _match(path, net, found, dtype, allow_missing, initial)


def _expected_shapes(net: Net, name: str) -> tuple[Shape, ...]:
    info = net.layer_info.get(name)
    return tuple(tuple(s) for s in info.param_shapes) if info is not None else ()


def _fmt(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _legacy_fits(stored: tuple[int, ...], shape: Shape) -> bool:
    """Caffe's Blob::ShapeEquals for a legacy blob: the shape padded to 4 axes."""
    return len(stored) == 4 and len(shape) <= 4 and (1,) * (4 - len(shape)) + tuple(shape) == stored


def _count_hint(found: int, expected: int) -> str:
    if found == expected + 1:
        return "the file has one blob more: a bias the net does not have (bias_term=false?)"
    if found + 1 == expected:
        return "the file has one blob less: no bias, where the net has one (bias_term=false there?)"
    return "the file was written for a different definition of this layer"


def _match(path: str, net: Net, found: _Found, dtype, allow_missing: bool,
           initial: Mapping[str, Sequence[np.ndarray]] | None) -> Weights:
    # 1. Check and shape what the file has for each layer of the net.
    loaded: dict[str, list[np.ndarray]] = {}
    for layer in net.layers:
        entry = found.get(layer.name)
        if entry is None:
            continue
        expected = _expected_shapes(net, layer.name)
        if len(entry) != len(expected):
            raise NetcError(
                f"weights file '{path}' has {len(entry)} blob{'s' * (len(entry) != 1)} for "
                f"layer '{layer.name}', but the net expects {len(expected)}",
                layer.span, _count_hint(len(entry), len(expected)))
        arrays = []
        for i, ((array, legacy), shape) in enumerate(zip(entry, expected)):
            if array.shape != shape:
                if not (legacy and _legacy_fits(array.shape, shape)):
                    raise NetcError(
                        f"weights file '{path}': layer '{layer.name}' blob {i} has shape "
                        f"{_fmt(array.shape)}, but the net expects {_fmt(shape)}",
                        layer.span,
                        "the weights were trained for a different definition of this layer")
                array = array.reshape(shape)
            arrays.append(array)
        loaded[layer.name] = arrays

    # 2. Where shared blobs come from: the first layer in net order the file has.
    def spec_name(layer, i):
        return layer.param_specs[i].name if i < len(layer.param_specs) else None

    shared_source: dict[str, np.ndarray] = {}
    for layer in net.layers:
        if layer.name in loaded:
            for i, array in enumerate(loaded[layer.name]):
                name = spec_name(layer, i)
                if name is not None:
                    shared_source.setdefault(name, array)

    # 3. Assemble, one object per shared blob.
    result: Weights = {}
    shared: dict[str, np.ndarray] = {}
    for layer in net.layers:
        expected = _expected_shapes(net, layer.name)
        if not expected:
            continue
        blobs: list[np.ndarray | None] = []
        for i, shape in enumerate(expected):
            name = spec_name(layer, i)
            if name is not None and name in shared:
                blobs.append(shared[name])
                continue
            array = None
            if layer.name in loaded:
                array = _convert(loaded[layer.name][i], dtype)
            elif name is not None and name in shared_source:
                array = _convert(shared_source[name], dtype)
            elif initial is not None and allow_missing and layer.name in initial:
                array = initial[layer.name][i]
                if tuple(np.shape(array)) != shape:
                    raise NetcError(f"the initial weights of layer '{layer.name}' blob {i} have "
                                    f"shape {_fmt(np.shape(array))}, but the net expects "
                                    f"{_fmt(shape)}", layer.span)
            if array is not None and name is not None:
                shared[name] = array
            blobs.append(array)
        if any(b is None for b in blobs):
            if not allow_missing:
                raise NetcError(f"weights file '{path}' has no weights for layer '{layer.name}'",
                                layer.span, "--allow-missing keeps its filler values")
            continue
        result[layer.name] = blobs
    return result


def _convert(array: np.ndarray, dtype) -> np.ndarray:
    if dtype is None:
        return np.ascontiguousarray(array)
    return np.ascontiguousarray(array, dtype=dtype)


# ---------------------------------------------------------------------------
# Reading .npz
# ---------------------------------------------------------------------------

def _bad_npz(path: str, why: str) -> NetcError:
    return NetcError(f"weights file '{path}' is not a valid .npz weights file ({why})",
                     hint="the file is truncated or corrupt, or not written by netc; "
                          "save it again with netc")


def _read_npz(path: str) -> dict[str, list[tuple[np.ndarray, bool]]]:
    with open_input(path, "weights file") as f:
        # np.load takes anything that is neither a zip nor a .npy for a pickle;
        # decide from the magic bytes first, so a corrupt file is called corrupt.
        magic = f.read(4)
        f.seek(0)
        if magic.startswith(b"\x93NUM"):
            raise _bad_npz(path, "it holds a single .npy array, not a zip of arrays")
        if not magic.startswith(b"PK"):
            why = "it is empty" if not magic else "it is not a zip archive"
            raise _bad_npz(path, why)
        try:
            npz = np.load(f, allow_pickle=False)
        except Exception as e:      # BadZipFile, EOFError, OSError, ValueError, ...
            raise _bad_npz(path, str(e) or type(e).__name__) from None
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise _bad_npz(path, "it is not a zip of arrays")
        with npz:
            arrays: dict[str, np.ndarray] = {}
            for key in npz.files:
                try:
                    arrays[key] = npz[key]
                except ValueError as e:
                    if "allow_pickle" in str(e) or "Object arrays" in str(e):
                        raise NetcError(
                            f"weights file '{path}': entry '{key}' is an object array "
                            "(pickled Python data), which netc never loads",
                            hint="store plain numeric arrays") from None
                    raise _bad_npz(path, f"entry '{key}': {e}") from None
                except Exception as e:
                    raise _bad_npz(path, f"entry '{key}': {e or type(e).__name__}") from None
    return _npz_entries(path, arrays)


def _npz_entries(path: str, arrays: Mapping[str, np.ndarray]) -> dict[str, list[tuple[np.ndarray, bool]]]:
    if FORMAT_KEY in arrays:
        _check_header(path, arrays[FORMAT_KEY])
    by_layer: dict[str, dict[int, np.ndarray]] = {}
    for key, array in arrays.items():
        if key.startswith("__netc__/"):
            continue
        layer, sep, index = key.rpartition("/")
        if not sep or not layer or not index.isdigit() or str(int(index)) != index:
            raise NetcError(f"weights file '{path}': entry '{key}' is not named "
                            "'<layer name>/<blob index>'",
                            hint="netc's .npz stores one array per blob under "
                                 "'<layer name>/<blob index>', e.g. 'conv1/0'")
        if array.dtype.kind not in "fiu":
            raise NetcError(f"weights file '{path}': entry '{key}' holds {array.dtype} "
                            "values, not numbers")
        by_layer.setdefault(layer, {})[int(index)] = array
    out: dict[str, list[tuple[np.ndarray, bool]]] = {}
    for layer, blobs in by_layer.items():
        if sorted(blobs) != list(range(len(blobs))):
            raise NetcError(f"weights file '{path}': the blobs of layer '{layer}' are numbered "
                            f"{sorted(blobs)}, not 0 to {len(blobs) - 1}")
        out[layer] = [(blobs[i], False) for i in range(len(blobs))]
    return out


def _check_header(path: str, raw: np.ndarray) -> None:
    try:
        if raw.dtype != np.uint8 or raw.ndim != 1:
            raise ValueError
        header = json.loads(raw.tobytes().decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError
    except (ValueError, UnicodeDecodeError):
        raise _bad_npz(path, f"unreadable '{FORMAT_KEY}' entry") from None
    if header.get("format") != _FORMAT_NAME:
        raise _bad_npz(path, f"'{FORMAT_KEY}' names format {header.get('format')!r}, "
                             f"not {_FORMAT_NAME!r}")
    version = header.get("version")
    if not isinstance(version, int) or version > _FORMAT_VERSION:
        raise NetcError(f"weights file '{path}' uses netc weights format version {version!r}; "
                        f"this netc reads version {_FORMAT_VERSION}",
                        hint="a newer netc wrote it; upgrade netc")
