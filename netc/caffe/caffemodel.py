"""Caffe's binary weights files (.caffemodel): reading their blobs, writing new ones.

A .caffemodel is a serialized NetParameter whose layers carry their learnable
blobs (BlobProto). Reading goes through netc.caffe.load.load_caffemodel, which
parses, upgrades V1 `layers`, and turns a corrupt or truncated file into a
NetcError. Each blob's values come from `data` (float) or, when present,
`double_data`; its shape from `shape.dim` or, in old files, the legacy 4-d
num/channels/height/width.

Writing produces what Caffe's snapshot writes for the parts Caffe reads back
when loading weights (Net::CopyTrainedLayersFrom matches layers by name and
checks each blob's shape): the net's name and, per layer with weights, a
LayerParameter with name, type, bottoms, tops and blobs (BlobShape + float data).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from netc.caffe import caffe_pb2
from netc.caffe.blobproto import blob_dims, blob_values, is_legacy
from netc.caffe.load import load_caffemodel
from netc.errors import NetcError

__all__ = ["read_caffemodel_blobs", "read_caffemodel_entries", "caffemodel_bytes"]


def read_caffemodel_entries(path) -> dict[str, list[tuple[np.ndarray, bool]]]:
    """Per layer name, its blobs as (array, legacy) pairs, in file order.

    `legacy` is True when the blob's shape came from the old 4-d
    num/channels/height/width fields (Caffe then accepts it for any blob shape
    that, padded on the left with 1s to four axes, is the same). Arrays are
    float32 from `data`, float64 from `double_data`. Every layer of the file is
    listed, those without blobs too; when a name repeats, the last one wins, as
    in Caffe where each copy overwrites the previous one.
    """
    path = str(path)
    net = load_caffemodel(path)
    out: dict[str, list[tuple[np.ndarray, bool]]] = {}
    for layer in net.layer:
        out[layer.name] = [_blob_array(blob, path, layer.name, i)
                           for i, blob in enumerate(layer.blobs)]
    return out


def read_caffemodel_blobs(path) -> dict[str, list[np.ndarray]]:
    """Per layer name, its blobs as arrays shaped as stored, in Caffe's blob order."""
    return {name: [array for array, _ in blobs]
            for name, blobs in read_caffemodel_entries(path).items()}


def _blob_array(blob: caffe_pb2.BlobProto, path: str, layer: str, index: int) -> tuple[np.ndarray, bool]:
    legacy, shape = is_legacy(blob), blob_dims(blob)
    if any(d < 0 for d in shape):
        raise NetcError(f"weights file '{path}': layer '{layer}' blob {index} has a "
                        f"negative dimension {_fmt(shape)}",
                        hint="the file is corrupt; copy or download it again")
    values = blob_values(blob)
    count = int(np.prod(shape, dtype=np.int64))
    if values.size != count:
        raise NetcError(f"weights file '{path}': layer '{layer}' blob {index} holds "
                        f"{values.size} values but its shape {_fmt(shape)} needs {count}",
                        hint="the file is corrupt or was written without data; "
                             "copy or download it again")
    return values.reshape(shape), legacy


def _fmt(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------

_DATA_TAG = bytes([(5 << 3) | 2])   # BlobProto.data = 5, length-delimited (packed)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _fill_blob(blob: caffe_pb2.BlobProto, array: np.ndarray) -> None:
    array = np.asarray(array)
    blob.shape.SetInParent()        # written even for a 0-d blob
    blob.shape.dim.extend(int(d) for d in array.shape)
    # The packed float field, encoded straight from the array's bytes: the
    # same bytes protobuf writes, without a Python float per element.
    raw = np.ascontiguousarray(array, dtype="<f4").tobytes()
    if raw:
        blob.MergeFromString(_DATA_TAG + _varint(len(raw)) + raw)


def caffemodel_bytes(net, weights: Mapping[str, Sequence[np.ndarray]]) -> bytes:
    """A binary NetParameter for `net` holding `weights`, as Caffe's snapshot writes.

    One LayerParameter per layer of the net that has an entry in `weights`, in
    net order, with name, type, bottoms, tops and its blobs (BlobShape + float32
    data). Blobs shared through ParamSpec names are written under every layer
    that uses them, as Caffe does.
    """
    proto = caffe_pb2.NetParameter()
    proto.name = net.name
    for layer in net.layers:
        if layer.name not in weights:
            continue
        lp = proto.layer.add()
        lp.name = layer.name
        lp.type = layer.type
        lp.bottom.extend(layer.bottoms)
        lp.top.extend(layer.tops)
        for array in weights[layer.name]:
            _fill_blob(lp.blobs.add(), array)
    return proto.SerializeToString()
