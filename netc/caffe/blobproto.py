"""Caffe's .binaryproto files (a single BlobProto, e.g. a mean image) as arrays."""
from __future__ import annotations

import numpy as np
from google.protobuf.message import DecodeError

from netc.caffe import caffe_pb2
from netc.errors import NetcError
from netc.fileio import open_input


def is_legacy(blob: caffe_pb2.BlobProto) -> bool:
    """Whether the blob gives its shape in the old num/channels/height/width fields."""
    return any(blob.HasField(f) for f in ("num", "channels", "height", "width"))


def blob_dims(blob: caffe_pb2.BlobProto) -> tuple[int, ...]:
    """A blob's shape by Caffe's rule (Blob::FromProto): the legacy 4-d fields when any
    of them is set, else `shape.dim`."""
    if is_legacy(blob):
        return (blob.num, blob.channels, blob.height, blob.width)
    return tuple(int(d) for d in blob.shape.dim)


def blob_values(blob: caffe_pb2.BlobProto) -> np.ndarray:
    """The blob's values, flat: `double_data` as float64 when present, else `data` as float32."""
    if len(blob.double_data):
        return np.asarray(blob.double_data, dtype=np.float64)
    return np.asarray(blob.data, dtype=np.float32)


def blob_array(blob: caffe_pb2.BlobProto) -> np.ndarray:
    dims = blob_dims(blob)
    array = blob_values(blob)
    if array.size != int(np.prod(dims)):
        raise ValueError(f"{array.size} values for shape {list(dims)}")
    return array.reshape(dims)


def _parse(path: str, what: str) -> caffe_pb2.BlobProto:
    blob = caffe_pb2.BlobProto()
    with open_input(path, what) as f:
        data = f.read()
    try:
        blob.ParseFromString(data)
    except DecodeError as err:
        raise NetcError(f"{what} '{path}' is not a Caffe BlobProto ({err})") from None
    return blob


def _drop_batch(dims: tuple[int, ...]) -> tuple[int, ...]:
    return dims[1:] if len(dims) == 4 and dims[0] == 1 else dims


def read_blobproto_dims(path: str, what: str = "file") -> tuple[int, ...]:
    """The shape of the blob in a .binaryproto file (a leading batch axis of 1 dropped),
    from its header alone: checking a net's shapes needs no more."""
    return _drop_batch(blob_dims(_parse(path, what)))


def read_blobproto(path: str, what: str = "file") -> np.ndarray:
    """The array in a .binaryproto file, with its leading batch axis of 1 dropped.
    `what` names the file in errors ("mean file")."""
    try:
        array = blob_array(_parse(path, what))
    except ValueError as err:
        raise NetcError(f"{what} '{path}' is not a Caffe BlobProto ({err})") from None
    return array.reshape(_drop_batch(array.shape))
