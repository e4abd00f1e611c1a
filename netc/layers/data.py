"""Where data enters a net: Input, and the data sources with Caffe's transform parameters.

A source's output shape is [batch_size, C, H, W] for the data top (after crop_size)
and [batch_size] for the label top. C, H, W come from `shape=[C, H, W]` when given,
else from the source itself where that is cheap (an IDX or .npy header; CIFAR-10 is
always 3x32x32); Caffe's database-backed Data layer cannot know them, and asks for
`netc check --input data=N,C,H,W`. Data is looked for where the net says, then in
$NETC_DATA (netc.data.locate), exactly as the loader (netc.data) looks for it.
"""
from __future__ import annotations

import gzip
import os
import struct
import zipfile

from netc.data.locate import DataNotFound, find_data, locate
from netc.layers.base import REQUIRED, LayerType, Param, ParamError, ShapeError, register


class UnknownShape(Exception):
    """The shape of a source's output cannot be known without reading its data."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@register
class Input(LayerType):
    type_name = "Input"
    summary = "a named input of a given shape (one shape per top)"
    params = (Param("shape", "shapes", (), aliases=("shapes",)),)
    message = "input_param"
    min_bottoms = max_bottoms = 0
    num_tops = (1, None)

    def normalize(self, p):
        for shape in p["shape"]:
            if any(d < 1 for d in shape):
                raise ParamError(f"input dimensions must be positive, got {list(shape)}", param="shape")
        return p

    def infer(self, p, bottoms, ntops):
        shapes = p["shape"]
        if len(shapes) == 1:
            return [shapes[0]] * ntops
        if len(shapes) != ntops:
            if not shapes:
                raise UnknownShape("the Input layer gives no shape")
            raise ShapeError(f"{len(shapes)} shapes for {ntops} inputs", param="shape")
        return list(shapes)


TRANSFORM_PARAMS = (
    Param("scale", "float", 1.0, message="transform_param", doc="multiplies each pixel after mean subtraction"),
    Param("mirror", "bool", False, message="transform_param", doc="random horizontal flips in training"),
    Param("crop_size", "int", 0, minimum=0, message="transform_param",
          doc="random crop in training, centre crop in testing"),
    Param("mean_file", "str", None, message="transform_param", path=True),
    Param("mean_value", "floats", (), message="transform_param"),
    Param("pca_color", "float", 0.0, minimum=0, message="transform_param",
          doc="AlexNet's PCA colour augmentation in training: the std of each component's weight "
              "(AlexNet: 0.1); 0 is off"),
)
_SOURCE = Param("source", "str", REQUIRED, doc="where the data is", path=True)
_BATCH = Param("batch_size", "int", REQUIRED, minimum=1, aliases=("batch",))
_SHAPE = Param("shape", "shape", (), doc="[C, H, W] of one example, when the source cannot tell")


class _DataSource(LayerType):
    min_bottoms = max_bottoms = 0
    num_tops = (1, 2)   # data and, optionally, label

    def default_tops(self, name):
        return ("data", "label")

    def normalize(self, p):
        if p.get("mean_file") and p.get("mean_value"):
            raise ParamError("give mean_file or mean_value, not both", param="mean_value")
        return p

    def example_shape(self, p) -> tuple[int, ...]:
        """[C, H, W] of one example before transformation."""
        if p.get("shape"):
            return p["shape"]
        return self.read_example_shape(p)

    def read_example_shape(self, p) -> tuple[int, ...]:
        raise UnknownShape(f"{self.type_name} cannot tell the shape of its examples without reading them")

    def infer(self, p, bottoms, ntops):
        example = tuple(self.example_shape(p))
        if p.get("crop_size"):
            crop = p["crop_size"]
            if len(example) != 3:
                raise ShapeError(f"crop_size needs [C, H, W] examples, got {list(example)}", param="crop_size")
            if crop > example[1] or crop > example[2]:
                raise ShapeError(f"crop_size {crop} is larger than the {example[1]}x{example[2]} images",
                                 param="crop_size")
            example = (example[0], crop, crop)
        if p.get("mean_value") and example and len(p["mean_value"]) not in (1, example[0]):
            raise ShapeError(f"{len(p['mean_value'])} mean values for {example[0]} channels",
                             "give one mean value, or one per channel", param="mean_value")
        n = p["batch_size"]
        return [(n,) + example, (n,)][:ntops]


@register
class Data(_DataSource):
    """Caffe reads the example shape from the database, which netc check does not open.
    What can be known without it is used: the mean file's header (the mean image is
    C×H×W, the examples' size), the count of mean values (one per channel), the crop."""
    type_name = "Data"
    summary = "Caffe's LMDB/LevelDB source (shape from shape=, the mean file, or crop_size)"
    params = (_SOURCE, _BATCH, _SHAPE,
              Param("backend", "enum", "LEVELDB", choices=("LEVELDB", "LMDB")),
              Param("rand_skip", "int", 0, minimum=0),
              Param("prefetch", "int", 4, minimum=1)) + TRANSFORM_PARAMS
    message = "data_param"

    def read_example_shape(self, p):
        mean = read_mean_file_shape(p.get("mean_file_path"))
        if mean is not None:
            return mean
        crop = p["crop_size"]
        if not crop:
            raise UnknownShape("Caffe's Data layer reads its shape from the database")
        channels = len(p["mean_value"]) if len(p["mean_value"]) > 1 else 3
        return (channels, crop, crop)

    def assumption(self, p):
        if p["shape"] or read_mean_file_shape(p.get("mean_file_path")) or len(p["mean_value"]) > 1:
            return None
        return ("assumed 3-channel images for Caffe's Data layer (convert_imageset stores colour "
                "images); its shape is read from the database, which netc check does not open")


def read_mean_file_shape(path: str | None) -> tuple[int, ...] | None:
    """C, H, W of a Caffe mean file (a binary BlobProto), or None where there is none.
    A file that exists but is no BlobProto is an error naming it."""
    path = locate(path)
    if not path or not os.path.isfile(path):
        return None
    from netc.caffe.blobproto import read_blobproto_dims
    from netc.errors import NetcError

    try:
        dims = read_blobproto_dims(path, "mean file")[-3:]
    except NetcError as err:
        raise UnknownShape(err.message) from None
    if len(dims) != 3 or any(d < 1 for d in dims):
        raise UnknownShape(f"the mean file '{path}' holds no C×H×W image (its shape is {list(dims)})")
    return dims


def _find(named: str) -> str:
    """The data a source names, where netc's loader would find it (netc.data.locate)."""
    try:
        return find_data(named)
    except DataNotFound as err:
        raise UnknownShape(f"{err.message}; to get it: {err.hint}") from None


def _idx_images_file(path: str, split: str) -> str:
    if os.path.isfile(path):
        return path
    prefix = "train" if split == "TRAIN" else "t10k"
    for name in (f"{prefix}-images-idx3-ubyte", f"{prefix}-images.idx3-ubyte"):
        for suffix in ("", ".gz"):
            candidate = os.path.join(path, name + suffix)
            if os.path.isfile(candidate):
                return candidate
    raise UnknownShape(f"no {prefix}-images-idx3-ubyte[.gz] in '{path}'")


def read_idx_header(path: str) -> tuple[int, ...]:
    """The dimensions in an IDX file's header (gzipped or raw)."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) != 4 or head[0] != 0 or head[1] != 0:
                raise UnknownShape(f"'{path}' is not an IDX file (bad magic number)")
            ndim = head[3]
            dims = f.read(4 * ndim)
            if len(dims) != 4 * ndim:
                raise UnknownShape(f"'{path}' ends inside its IDX header")
    except (OSError, EOFError) as err:
        raise UnknownShape(f"cannot read '{path}': {err}") from None
    return struct.unpack(f">{ndim}i", dims)


@register
class IDXData(_DataSource):
    type_name = "IDXData"
    summary = "MNIST-format IDX files (MNIST, Fashion-MNIST), raw or gzipped"
    params = (_SOURCE, _BATCH, _SHAPE,
              Param("split", "enum", "TRAIN", choices=("TRAIN", "TEST")),
              Param("shuffle", "bool", None)) + TRANSFORM_PARAMS

    def read_example_shape(self, p):
        dims = read_idx_header(_idx_images_file(_find(p["source_path"]), p["split"]))
        if len(dims) == 3:
            return (1, dims[1], dims[2])
        if len(dims) == 4:   # N, H, W, C colour images
            return (dims[3], dims[1], dims[2])
        raise UnknownShape(f"IDX images have 3 or 4 dimensions, the file has {len(dims)}")


@register
class CIFAR10Data(_DataSource):
    type_name = "CIFAR10Data"
    summary = "CIFAR-10 binary batches (data_batch_1..5.bin, test_batch.bin): 3x32x32"
    params = (_SOURCE, _BATCH,
              Param("split", "enum", "TRAIN", choices=("TRAIN", "TEST")),
              Param("shuffle", "bool", None)) + TRANSFORM_PARAMS

    def example_shape(self, p):
        return (3, 32, 32)


def read_npy_shape(path: str, key: str) -> tuple[int, ...]:
    import numpy as np

    def header(f) -> tuple[int, ...]:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, _ = np.lib.format.read_array_header_1_0(f)
        else:
            shape, _, _ = np.lib.format.read_array_header_2_0(f)
        return shape

    try:
        if path.endswith(".npz"):
            with zipfile.ZipFile(path) as z:
                names = [n[:-4] for n in z.namelist() if n.endswith(".npy")]
                if key not in names:
                    raise UnknownShape(f"'{path}' has no array '{key}' (it has: {', '.join(names) or 'none'})")
                with z.open(key + ".npy") as f:
                    return header(f)
        with open(path, "rb") as f:
            return header(f)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise UnknownShape(f"cannot read the array header of '{path}': {err}") from None


@register
class NpyData(_DataSource):
    type_name = "NpyData"
    summary = "arrays from .npy (data) or .npz (data_key, label_key) files"
    params = (_SOURCE, _BATCH, _SHAPE,
              Param("label_source", "str", None, doc=".npy file of labels when source is a .npy", path=True),
              Param("data_key", "str", "data"),
              Param("label_key", "str", "label"),
              Param("shuffle", "bool", None)) + TRANSFORM_PARAMS

    def read_example_shape(self, p):
        shape = read_npy_shape(_find(p["source_path"]), p["data_key"])
        if len(shape) < 2:
            raise UnknownShape(f"'{p['source']}' holds shape {list(shape)}; examples need a leading batch axis")
        return tuple(shape[1:])


@register
class ImageData(_DataSource):
    type_name = "ImageData"
    summary = "an image list file, 'path label' per line (Caffe's ImageData)"
    params = (_SOURCE, _BATCH, _SHAPE,
              Param("new_height", "int", 0, minimum=0),
              Param("new_width", "int", 0, minimum=0),
              Param("is_color", "bool", True),
              Param("root_folder", "str", "", path=True),
              Param("shuffle", "bool", False),
              Param("rand_skip", "int", 0, minimum=0)) + TRANSFORM_PARAMS
    message = "image_data_param"

    def normalize(self, p):
        if bool(p["new_height"]) != bool(p["new_width"]):
            raise ParamError("new_height and new_width go together", param="new_height")
        return super().normalize(p)

    def read_example_shape(self, p):
        if p["new_height"]:
            return (3 if p["is_color"] else 1, p["new_height"], p["new_width"])
        raise UnknownShape("ImageData keeps each image's own size unless new_height and new_width are set")


@register
class DummyData(LayerType):
    type_name = "DummyData"
    summary = "synthetic data of given shapes (one per top), filled by data_filler"
    params = (Param("shape", "shapes", REQUIRED), Param("data_filler", "filler", None))
    message = "dummy_data_param"
    min_bottoms = max_bottoms = 0
    num_tops = (1, None)

    def infer(self, p, bottoms, ntops):
        return Input.infer(self, p, bottoms, ntops)

    # each top filled from data_filler (constant 0 when not given) with the run's generator;
    # one shape for several tops: each top gets its own fill
    def forward(self, p, bottoms, weights, ctx, state):
        from netc.ir import Filler
        from netc.runtime.fillers import fill

        filler = p["data_filler"] or Filler()
        shapes = p["shape"]

        def make(i):
            shape = tuple(shapes[i] if len(shapes) > 1 else shapes[0])
            return ctx.xp.asarray(fill(filler, shape, ctx.rng, ctx.dtype), dtype=ctx.dtype)

        return [make(i) for i in range(state["ntops"])]


@register
class MemoryData(_DataSource):
    type_name = "MemoryData"
    summary = "arrays handed over by a program: batch_size, channels, height, width"
    params = (_BATCH, Param("channels", "int", REQUIRED, minimum=1), Param("height", "int", REQUIRED, minimum=1),
              Param("width", "int", REQUIRED, minimum=1)) + TRANSFORM_PARAMS
    message = "memory_data_param"

    def example_shape(self, p):
        return (p["channels"], p["height"], p["width"])


DATA_SOURCES = ("Data", "IDXData", "CIFAR10Data", "NpyData", "ImageData", "DummyData", "MemoryData")
