"""`netc run --infer`: a net, weights and input arrays (or an image) in, named blobs out.

The batch comes from the input arrays; they are run in chunks of the net's declared
batch (or --batch), the last chunk padded and trimmed, so the result does not depend
on the chunk size (test-phase layers treat each example on its own). Layers that
need a blob that was not given (a train/test net's loss and accuracy read `label`)
are left out.
"""
from __future__ import annotations

import math

import numpy as np

from netc.compile import build_ir, check_ir
from netc.errors import NetcError, did_you_mean
from netc.ir import Net
from netc.passes.prune import output_blobs, prune_to_available, prune_to_outputs
from netc.runtime.backend import NUMPY, Backend
from netc.runtime.executor import Executor
from netc.runtime.weights import init_weights

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def load_array(path: str) -> np.ndarray:
    """A .npy array (never unpickled), or the single array of an .npz."""
    try:
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                if len(z.files) != 1:
                    raise NetcError(f"'{path}' holds {len(z.files)} arrays; give one array per input",
                                    None, "save each input as its own .npy")
                return z[z.files[0]]
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise NetcError(f"input file '{path}' does not exist") from None
    except (ValueError, OSError) as err:
        raise NetcError(f"cannot read '{path}' as a NumPy array: {err}", None,
                        "inputs are .npy files (numpy.save), or images") from None


def load_inputs(net_path: str, specs: tuple[str, ...]) -> tuple[dict[str, np.ndarray], list[str]]:
    """--input NAME=FILE pairs as arrays, and the names given as images (prepared as the
    net's input wants them; any other file is a .npy/.npz array)."""
    arrays, images = {}, []
    for text in specs:
        name, sep, path = text.partition("=")
        if not name or not sep or not path:
            raise NetcError(f"--input '{text}' is not NAME=FILE", None, "e.g. --input data=batch.npy or data=cat.jpg")
        if path.lower().endswith(IMAGE_SUFFIXES):
            arrays[name] = load_image(path, net_path, name)
            images.append(name)
        else:
            arrays[name] = load_array(path)
    return arrays, images


def declared_batch(ir: Net, name: str) -> int | None:
    """The batch the file itself gives the input `name`: an Input's shape or a source's batch_size."""
    for layer in ir.layers:
        if name in layer.tops and not layer.bottoms:
            if layer.type == "Input" and layer.params["shape"]:
                shapes = layer.params["shape"]
                return shapes[min(layer.tops.index(name), len(shapes) - 1)][0]
            if "batch_size" in layer.params:
                return layer.params["batch_size"]
    return None


def prepare(path: str, inputs: dict[str, np.ndarray], batch: int | None) -> tuple[Net, int, int]:
    """The pruned test-phase net for chunks of `chunk` examples; (net, chunk, total)."""
    if not inputs:
        raise NetcError("no input given", None, "give --input NAME=FILE.npy (or an image)")
    totals = {name: a.shape[0] if a.ndim else 0 for name, a in inputs.items()}
    total = next(iter(totals.values()))
    if any(n != total for n in totals.values()) or total == 0:
        raise NetcError("the inputs disagree on the number of examples: " +
                        ", ".join(f"{k} has {v}" for k, v in totals.items()), None,
                        "every input's first axis is the batch")
    ir = build_ir(path, "test")
    chunk = batch or declared_batch(ir, next(iter(inputs))) or total
    chunk = max(1, min(chunk, total))
    overrides = {name: (chunk,) + tuple(a.shape[1:]) for name, a in inputs.items()}
    net = check_ir(ir, overrides)
    return prune_to_available(net, set(inputs)), chunk, total


def run_inference(path: str, inputs: dict[str, np.ndarray], weights=None, blobs: list[str] | None = None,
                  batch: int | None = None, seed: int = 0, dtype=np.float32,
                  allow_missing: bool = False, backend: Backend = NUMPY,
                  max_memory: int | None = None) -> dict[str, np.ndarray]:
    """Forward the inputs through the net; returns the requested blobs (default: the outputs).
    `weights`: a Weights dict, a path (.npz or .caffemodel) or None for the fillers' values.
    max_memory: bytes the memory plan may take (default: what the device has free)."""
    net, chunk, total = prepare(path, inputs, batch)
    wanted = blobs or output_blobs(net)
    for name in wanted:
        if name not in net.blob_shapes:
            raise NetcError(f"no blob '{name}' to output", None,
                            did_you_mean(name, net.blob_shapes) or
                            f"blobs computed here: {', '.join(list(net.blob_shapes)[:12])}")
    net = prune_to_outputs(net, wanted)
    weights = resolve_weights(weights, net, seed, dtype, allow_missing)
    executor = Executor(net, weights, backend=backend, dtype=dtype, seed=seed, max_memory=max_memory)
    outputs: dict[str, list[np.ndarray]] = {name: [] for name in wanted}
    for start in range(0, total, chunk):
        stop = min(start + chunk, total)
        feeds = {}
        for name, array in inputs.items():
            part = array[start:stop]
            if stop - start < chunk:   # pad the last chunk; the padding's outputs are dropped
                pad = np.zeros((chunk - (stop - start),) + array.shape[1:], dtype=array.dtype)
                part = np.concatenate([part, pad])
            feeds[name] = part
        values = executor.forward(feeds)
        for name in wanted:
            value = np.array(executor.backend.to_numpy(values[name]))   # the next chunk reuses the arena
            outputs[name].append(value[: stop - start] if value.ndim and value.shape[0] == chunk else value)
    return {name: np.concatenate(parts) if parts[0].ndim else parts[-1] for name, parts in outputs.items()}


def resolve_weights(weights, net: Net, seed: int, dtype, allow_missing: bool = False):
    """A Weights dict as given; a path (.npz, .caffemodel) loaded and matched by layer
    name, over the fillers' values where allow_missing; None: the fillers' values."""
    if isinstance(weights, dict):
        return weights
    if weights is None:
        return init_weights(net, seed, dtype)
    from netc.runtime.weight_files import load_weights
    initial = init_weights(net, seed, dtype) if allow_missing else None
    return load_weights(str(weights), net, dtype=dtype, allow_missing=allow_missing, initial=initial)


# --- images -----------------------------------------------------------------------
def load_image(path: str, net_path: str, name: str) -> np.ndarray:
    """An image as the net's input `name` sees it: [1, C, H, W], prepared as the
    source layer's transform says (resize to its example size, centre crop, mean,
    scale); for a deploy net's Input, resized to H×W in Caffe's 0–255 range.
    Colour images are fed in Caffe's BGR channel order."""
    from PIL import Image, UnidentifiedImageError

    ir = build_ir(net_path, "test")
    layer = next((l for l in ir.layers if name in l.tops and not l.bottoms), None)
    if layer is None:
        raise NetcError(f"the net has no input '{name}'")
    p = dict(layer.params)
    if layer.type == "Input":
        shape = p["shape"][0] if p["shape"] else None
        if shape is None or len(shape) != 4:
            raise NetcError(f"input '{name}' is not an image input (shape {shape})")
        channels, height, width = shape[1:]
        crop = 0
    else:
        example = p.get("shape") or ()
        crop = p.get("crop_size", 0)
        if len(example) == 3:
            channels, height, width = example
        elif crop:
            channels, height, width = 3, crop, crop
        else:
            raise NetcError(f"cannot tell the image size input '{name}' wants", layer.span,
                            "give the source shape=[C, H, W]")
    try:
        with Image.open(path) as img:
            img = img.convert("RGB" if channels == 3 else "L").resize((width, height), Image.BILINEAR)
            pixels = np.asarray(img, dtype=np.float32)
    except FileNotFoundError:
        raise NetcError(f"image '{path}' does not exist") from None
    except (UnidentifiedImageError, OSError) as err:
        raise NetcError(f"cannot read image '{path}': {err}") from None
    chw = pixels[None] if pixels.ndim == 2 else pixels[:, :, ::-1].transpose(2, 0, 1)   # RGB → Caffe's BGR
    # Caffe's test-time transform: centre crop, (x − mean)·scale; a mean image is
    # subtracted at the crop's offset, the same as subtracting it whole and then cropping
    crop_h, crop_w = (crop, crop) if crop else (height, width)
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    if p.get("mean_value"):
        chw = chw - np.asarray(p["mean_value"], dtype=np.float32).reshape(-1, 1, 1)
    elif p.get("mean_file_path"):
        from netc.caffe.blobproto import read_blobproto
        chw = chw - read_blobproto(p["mean_file_path"], "mean file").reshape(chw.shape)
    chw = chw[:, top:top + crop_h, left:left + crop_w]
    chw = chw * np.float32(p.get("scale", 1.0))
    return chw[None].astype(np.float32)


def top_k(scores: np.ndarray, k: int = 5) -> list[tuple[int, float]]:
    """The k best classes of one example with their probabilities (softmax applied
    unless the scores already are probabilities)."""
    flat = np.asarray(scores, dtype=np.float64).reshape(-1)
    if flat.min() < 0 or not math.isclose(flat.sum(), 1.0, rel_tol=1e-3):
        e = np.exp(flat - flat.max())
        flat = e / e.sum()
    order = np.argsort(-flat, kind="stable")[:k]
    return [(int(i), float(flat[i])) for i in order]


def read_labels(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f]
    except OSError as err:
        raise NetcError(f"cannot read labels file '{path}': {err.strerror or err}") from None
