"""Caffe's .binaryproto files (a single BlobProto, e.g. a mean image) as arrays."""
from __future__ import annotations

import numpy as np
from google.protobuf.message import DecodeError

from netc.caffe import caffe_pb2
from netc.errors import NetcError


def blob_dims(blob: caffe_pb2.BlobProto) -> tuple[int, ...]:
    """A blob's shape: `shape.dim`, or the legacy num/channels/height/width."""
    if blob.HasField("shape"):
        return tuple(int(d) for d in blob.shape.dim)
    return (blob.num, blob.channels, blob.height, blob.width)


def blob_array(blob: caffe_pb2.BlobProto) -> np.ndarray:
    data = blob.double_data if len(blob.double_data) else blob.data
    dims = blob_dims(blob)
    array = np.asarray(data, dtype=np.float64 if len(blob.double_data) else np.float32)
    if array.size != int(np.prod(dims)):
        raise ValueError(f"{array.size} values for shape {list(dims)}")
    return array.reshape(dims)


def read_blobproto(path: str) -> np.ndarray:
    """The array in a .binaryproto file, with its leading batch axis of 1 dropped."""
    blob = caffe_pb2.BlobProto()
    try:
        with open(path, "rb") as f:
            blob.ParseFromString(f.read())
        array = blob_array(blob)
    except FileNotFoundError:
        raise NetcError(f"'{path}' does not exist") from None
    except (OSError, DecodeError, ValueError) as err:
        raise NetcError(f"'{path}' is not a Caffe BlobProto ({err})") from None
    return array[0] if array.ndim == 4 and array.shape[0] == 1 else array
