"""Readers: the examples of each file-backed data source, untransformed.

IDX, CIFAR-10 and .npy/.npz sets are small enough to decode into memory once
(Fashion-MNIST is 47 MB of bytes); an image list is decoded a batch at a time.
Every reader gives the same interface: `len()`, `example_shape` ([C, H, W] for
images), `pixel_unit` (255 for 8-bit pixels, 1 for float arrays) and `take(indices)`
→ (data [n, ...] in its stored dtype, labels float32 [n] or None).

Every problem with the files is a NetcError at the layer naming the file and what
was expected.
"""
from __future__ import annotations

import os
import zlib

import numpy as np

from netc.data.locate import DataNotFound, find_data
from netc.errors import NetcError, Span


class Examples:
    """Examples held in memory: data [N, ...] (uint8 or float32), labels float32 [N] or None."""

    def __init__(self, data: np.ndarray, labels: np.ndarray | None, pixel_unit: float):
        self.data, self.labels, self.pixel_unit = data, labels, pixel_unit

    def __len__(self) -> int:
        return len(self.data)

    @property
    def example_shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[1:])

    def take(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        labels = None if self.labels is None else self.labels[indices]
        return self.data[indices], labels


def found(named: str, what: str, span: Span | None) -> str:
    try:
        return find_data(named)
    except DataNotFound as err:
        raise NetcError(f"{what}: {err.message}", span, err.hint) from None


def read_bytes(path: str, what: str, span: Span | None) -> tuple[bytes, bool]:
    """A file's bytes, gunzipped when it is gzipped (by its magic, not its name).
    The flag says whether a gzip stream ended early: what came before it is kept, so
    the caller can say how many records survived."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except IsADirectoryError:
        raise NetcError(f"{what} '{path}' is a directory, not a file", span) from None
    except OSError as err:
        raise NetcError(f"cannot read {what} '{path}': {err.strerror or err}", span) from None
    if raw[:2] != b"\x1f\x8b":
        return raw, False
    # zlib rather than gzip.open: a truncated stream still yields every byte before the cut
    parts, truncated = [], False
    try:
        while raw:
            stream = zlib.decompressobj(16 + zlib.MAX_WBITS)
            parts.append(stream.decompress(raw))
            if not stream.eof:
                truncated = True
                break
            raw = stream.unused_data
    except zlib.error as err:
        raise NetcError(f"{what} '{path}' is a corrupt gzip file ({err})", span,
                        "download it again") from None
    return b"".join(parts), truncated


# --- IDX (MNIST, Fashion-MNIST) ------------------------------------------------------------------

# IDX type byte -> big-endian NumPy dtype (LeCun's format description)
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def parse_idx(data: bytes, truncated: bool, path: str, what: str, noun: str,
              span: Span | None) -> np.ndarray:
    """The array in an IDX file's bytes; `noun` names one record in errors ("images")."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_TYPES:
        raise NetcError(f"{what} '{path}' is not an IDX file (bad magic number "
                        f"{data[:4].hex() or 'none'}; expected 0000 then a type byte and a dimension count)",
                        span, "check that the file is an uncorrupted MNIST-format IDX file")
    ndim = data[3]
    head = 4 + 4 * ndim
    if ndim == 0 or len(data) < head:
        raise NetcError(f"{what} '{path}' ends inside its IDX header", span, "download it again")
    dims = tuple(int(d) for d in np.frombuffer(data, ">i4", ndim, 4))
    dtype = np.dtype(IDX_TYPES[data[2]])
    record = int(np.prod(dims[1:], dtype=np.int64)) * dtype.itemsize
    complete = (len(data) - head) // record if record else dims[0]
    if complete < dims[0]:
        cut = "its gzip stream is cut short and it" if truncated else "it"
        raise NetcError(f"{what} '{path}' ends after {complete} of {dims[0]} {noun} ({cut} is truncated)",
                        span, "download it again")
    # a gzip stream cut only in its trailer still holds every record: read it
    array = np.frombuffer(data, dtype, int(np.prod(dims, dtype=np.int64)), head).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=False)


def _idx_names(kind: str, split: str) -> list[str]:
    prefix = "train" if split == "TRAIN" else "t10k"
    rank = 3 if kind == "images" else 1
    names = [f"{prefix}-{kind}-idx{rank}-ubyte", f"{prefix}-{kind}.idx{rank}-ubyte"]
    return [n + suffix for n in names for suffix in ("", ".gz")]


def idx_images_path(path: str, split: str) -> str | None:
    """The images file of `split` in a folder (or the file itself); None if absent."""
    if os.path.isfile(path):
        return path
    for name in _idx_names("images", split):
        candidate = os.path.join(path, name)
        if os.path.isfile(candidate):
            return candidate
    return None


def idx_labels_path(images: str, split: str, given_folder: bool) -> str | None:
    """The labels file beside an images file: the split's standard name in a folder,
    else the images file's name with images→labels and idx3→idx1."""
    folder, base = os.path.split(images)
    candidates = _idx_names("labels", split) if given_folder else []
    candidates.append(base.replace("images", "labels").replace("idx3", "idx1"))
    for name in candidates:
        candidate = os.path.join(folder, name)
        if candidate != images and os.path.isfile(candidate):
            return candidate
    return None


def read_idx(p: dict, span: Span | None, want_labels: bool) -> Examples:
    source = found(p["source_path"], "IDXData source", span)
    split = p["split"]
    images_path = idx_images_path(source, split)
    if images_path is None:
        names = " or ".join(_idx_names("images", split)[::2])
        raise NetcError(f"IDXData source '{source}' holds no {names}[.gz]", span,
                        "name a folder with MNIST-format IDX files, or the images file itself")
    data, cut = read_bytes(images_path, "IDX images file", span)
    images = parse_idx(data, cut, images_path, "IDX images file", "images", span)
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4:   # N, H, W, C colour images
        images = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    else:
        raise NetcError(f"IDX images file '{images_path}' has {images.ndim} dimensions; "
                        "images have 3 (N, H, W) or 4 (N, H, W, C)", span)
    unit = 255.0 if images.dtype == np.uint8 else 1.0
    if images.dtype != np.uint8:
        images = images.astype(np.float32)
    labels = None
    if want_labels:
        labels_path = idx_labels_path(images_path, split, os.path.isdir(source))
        if labels_path is None:
            raise NetcError(f"no labels file beside IDX images '{images_path}'", span,
                            f"expected {_idx_names('labels', split)[1]} (or .gz) in the same folder")
        data, cut = read_bytes(labels_path, "IDX labels file", span)
        labels = parse_idx(data, cut, labels_path, "IDX labels file", "labels", span)
        labels = check_labels(labels, len(images), labels_path, images_path, span)
    return Examples(images, labels, unit)


def check_labels(labels: np.ndarray, count: int, where: str, data_where: str, span: Span | None) -> np.ndarray:
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise NetcError(f"the labels in '{where}' have shape {list(labels.shape)}; one label per example "
                        "is [N]", span)
    if len(labels) != count:
        raise NetcError(f"'{data_where}' holds {count} examples but '{where}' holds {len(labels)} labels",
                        span, "the data and its labels must come from the same set, in the same order")
    return labels.astype(np.float32)


# --- CIFAR-10 binary batches ---------------------------------------------------------------------

CIFAR_RECORD = 1 + 3 * 32 * 32   # a label byte, then the red, green and blue 32x32 planes
CIFAR_FILES = {"TRAIN": [f"data_batch_{i}.bin" for i in range(1, 6)], "TEST": ["test_batch.bin"]}


def cifar_files(source: str, split: str, span: Span | None) -> list[str]:
    if os.path.isfile(source):
        return [source]
    folder = source
    inner = os.path.join(source, "cifar-10-batches-bin")   # where the archive unpacks to
    if not os.path.isfile(os.path.join(folder, CIFAR_FILES[split][0])) and os.path.isdir(inner):
        folder = inner
    paths = [os.path.join(folder, name) for name in CIFAR_FILES[split]]
    missing = [os.path.basename(path) for path in paths if not os.path.isfile(path)]
    if missing:
        raise NetcError(f"CIFAR10Data source '{source}' lacks {', '.join(missing)}", span,
                        "CIFAR-10's binary version has data_batch_1.bin .. data_batch_5.bin (train) and "
                        "test_batch.bin (test); unpack cifar-10-binary.tar.gz there")
    return paths


def parse_cifar(data: bytes, path: str, span: Span | None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 3, 32, 32] in RGB order, labels float32 [N]) of one batch file."""
    if len(data) % CIFAR_RECORD:
        raise NetcError(f"CIFAR-10 file '{path}' ends inside record {len(data) // CIFAR_RECORD + 1} "
                        f"({len(data)} bytes is not a whole number of {CIFAR_RECORD}-byte records)",
                        span, "download it again")
    records = np.frombuffer(data, np.uint8).reshape(-1, CIFAR_RECORD)
    labels = records[:, 0]
    if len(labels) and labels.max() > 9:
        raise NetcError(f"'{path}' is not a CIFAR-10 binary file (label {labels.max()} in a record; "
                        "CIFAR-10 has 10 classes)", span,
                        "CIFAR-100's binary files have two label bytes and are not read by CIFAR10Data")
    return records[:, 1:].reshape(-1, 3, 32, 32), labels.astype(np.float32)


def read_cifar10(p: dict, span: Span | None, want_labels: bool) -> Examples:
    source = found(p["source_path"], "CIFAR10Data source", span)
    images, labels = [], []
    for path in cifar_files(source, p["split"], span):
        data, cut = read_bytes(path, "CIFAR-10 file", span)
        if cut:
            raise NetcError(f"CIFAR-10 file '{path}' is a truncated gzip file", span, "download it again")
        x, y = parse_cifar(data, path, span)
        images.append(x)
        labels.append(y)
    return Examples(np.concatenate(images), np.concatenate(labels) if want_labels else None, 255.0)


# --- .npy / .npz arrays --------------------------------------------------------------------------

def load_array(path: str, what: str, span: Span | None, key: str | None = None) -> np.ndarray:
    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError as err:
        if "pickle" in str(err).lower():
            raise NetcError(f"{what} '{path}' holds Python objects (a pickle), which netc does not load",
                            span, "save plain numeric arrays with numpy.save or numpy.savez") from None
        raise NetcError(f"{what} '{path}' is not a .npy or .npz file ({err})", span) from None
    except (OSError, EOFError) as err:
        raise NetcError(f"cannot read {what} '{path}': {err}", span) from None
    try:
        if isinstance(loaded, np.ndarray):
            return loaded
        names = list(loaded.files)
        if key not in names:
            raise NetcError(f"{what} '{path}' has no array '{key}' (it has: {', '.join(names) or 'none'})", span)
        return loaded[key]
    except ValueError as err:   # a pickled member of an .npz
        raise NetcError(f"array '{key}' in '{path}' cannot be loaded without pickles ({err})", span,
                        "save plain numeric arrays with numpy.savez") from None
    finally:
        if not isinstance(loaded, np.ndarray):
            loaded.close()


def read_arrays(p: dict, span: Span | None, want_labels: bool) -> Examples:
    source = found(p["source_path"], "NpyData source", span)
    data = load_array(source, "NpyData source", span, p["data_key"])
    if data.ndim < 2:
        raise NetcError(f"the data in '{source}' has shape {list(data.shape)}; examples need a leading "
                        "batch axis", span)
    if not (np.issubdtype(data.dtype, np.number) or data.dtype == np.bool_):
        raise NetcError(f"the data in '{source}' is {data.dtype}, not numbers", span)
    unit = 255.0 if data.dtype == np.uint8 else 1.0
    if data.dtype != np.uint8:
        data = data.astype(np.float32)
    labels = None
    if want_labels:
        if source.endswith(".npz"):
            labels = load_array(source, "NpyData source", span, p["label_key"])
            where = f"{source}[{p['label_key']}]"
        elif p.get("label_source_path"):
            where = found(p["label_source_path"], "NpyData label_source", span)
            labels = load_array(where, "NpyData label_source", span, p["label_key"])
        else:
            raise NetcError(f"NpyData '{source}' is a .npy file and no label_source gives its labels", span,
                            "add label_source=\"labels.npy\", use an .npz with a label array, "
                            "or give the layer only a data top")
        labels = check_labels(labels, len(data), where, source, span)
    return Examples(np.ascontiguousarray(data), labels, unit)


# --- image lists (Caffe's ImageData) -------------------------------------------------------------

class ImageList:
    """Caffe's ImageData: a list file of `path label` lines, decoded with Pillow a batch
    at a time. Colour images come out in BGR channel order, as Caffe (through OpenCV)
    gives them, so Caffe's mean values and pretrained nets apply unchanged. Resizing
    (new_height, new_width) is bilinear, as OpenCV's default."""

    def __init__(self, p: dict, span: Span | None, want_labels: bool):
        self.span = span
        self.list_path = found(p["source_path"], "ImageData source", span)
        self.color = p["is_color"]
        self.size = (p["new_width"], p["new_height"]) if p["new_height"] else None
        # image paths are relative to root_folder, else to the list file's own folder
        root = p.get("root_folder_path")
        self.root = found(root, "ImageData root_folder", span) if root else os.path.dirname(self.list_path)
        self.entries = self._read_list()
        self.labels = np.array([label for _, label, _ in self.entries], np.float32) if want_labels else None
        self.pixel_unit = 255.0
        self._shape: tuple[int, ...] | None = None

    def _read_list(self) -> list[tuple[str, int, int]]:
        try:
            with open(self.list_path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise NetcError(f"cannot read the ImageData list '{self.list_path}': {err}", self.span) from None
        entries = []
        for number, line in enumerate(lines, 1):
            line = line.strip()
            if not line:
                continue
            # Caffe splits at the last space, so image paths may contain spaces
            path, _, label = line.rpartition(" ")
            try:
                value = int(label)
            except ValueError:
                value = None
            if not path or value is None:
                raise NetcError(f"line {number} of '{self.list_path}' is not 'path label': {line!r}", self.span,
                                "each line names an image and its integer label, separated by a space")
            entries.append((os.path.join(self.root, path), value, number))
        if not entries:
            raise NetcError(f"the ImageData list '{self.list_path}' names no images", self.span)
        return entries

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def example_shape(self) -> tuple[int, ...]:
        if self._shape is None:
            self._shape = self.decode(0).shape
        return self._shape

    def decode(self, i: int) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        path, _, line = self.entries[i]
        try:
            with Image.open(path) as image:
                image = image.convert("RGB" if self.color else "L")
                if self.size is not None and image.size != self.size:
                    image = image.resize(self.size, Image.BILINEAR)
                pixels = np.asarray(image, np.uint8)
        except FileNotFoundError:
            raise NetcError(f"image '{path}' (line {line} of '{self.list_path}') does not exist", self.span) from None
        except (OSError, UnidentifiedImageError, ValueError) as err:
            raise NetcError(f"cannot decode image '{path}' (line {line} of '{self.list_path}'): {err}",
                            self.span) from None
        if self.color:
            return pixels[:, :, ::-1].transpose(2, 0, 1)   # H, W, RGB -> BGR, H, W
        return pixels[None]

    def take(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        images = [self.decode(int(i)) for i in indices]
        shape = self.example_shape
        for i, image in zip(indices, images):
            if image.shape != shape:
                raise NetcError(f"image '{self.entries[int(i)][0]}' is {image.shape[2]}x{image.shape[1]} but "
                                f"the first is {shape[2]}x{shape[1]}; a batch needs one size", self.span,
                                "give new_height and new_width to resize every image")
        labels = None if self.labels is None else self.labels[indices]
        return np.stack(images), labels


READERS = {"IDXData": read_idx, "CIFAR10Data": read_cifar10, "NpyData": read_arrays, "ImageData": ImageList}
