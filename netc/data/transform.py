"""Caffe's data transformation (DataTransformer), for a whole batch at once.

Per pixel `(x − mean)·scale`: the mean (mean_file image or mean_value per channel)
is subtracted before scaling. crop_size takes a random crop in training and the
centre crop, at offset ((H − crop) // 2, (W − crop) // 2), in testing; mirror flips
horizontally at random in training only. A mean image is cropped and flipped with
the data, so each output pixel has its own mean pixel subtracted, as in Caffe.

Beyond Caffe, `pca_color` (training only) is AlexNet's colour augmentation: with
λ_i, p_i the eigenvalues and eigenvectors of the C×C covariance of the training
pixels (measured in intensities scaled to [0, 1], i.e. bytes / 255), every pixel of
an image gets `Σ_i p_i·α_i·λ_i` added (in the data's own units, before the mean is
subtracted), with α_i ~ N(0, pca_color) drawn once per image. AlexNet used 0.1.

All randomness comes from the generator passed in, drawn in a fixed order (crop
offsets, flips, colour weights), so a batch is a pure function of that generator.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from netc.errors import NetcError, Span

PCA_SAMPLE = 10_000          # at most this many examples measure the colour covariance
PCA_CHUNK = 500


@dataclass(frozen=True)
class ColourPCA:
    """Eigenvalues (largest first) and eigenvectors (columns) of the pixel covariance,
    in intensities scaled to [0, 1]."""
    values: np.ndarray
    vectors: np.ndarray

    def shifts(self, alpha: np.ndarray) -> np.ndarray:
        """[n, C] colour shifts Σ_i p_i·α_i·λ_i for weights alpha [n, C]."""
        return (alpha * self.values) @ self.vectors.T


def colour_pca(examples, limit: int = PCA_SAMPLE, seed: int = 0) -> ColourPCA:
    """The pixel covariance's eigen-decomposition, from every example when there are at
    most `limit`, else from `limit` of them drawn without replacement (a fixed draw
    for a given seed, so a resumed run measures the same covariance)."""
    n = len(examples)
    if n <= limit:
        chosen = np.arange(n)
    else:
        chosen = np.sort(np.random.default_rng([seed, 0x9CA]).choice(n, limit, replace=False))
    unit = examples.pixel_unit
    total, outer, count = 0.0, 0.0, 0
    for start in range(0, len(chosen), PCA_CHUNK):
        data, _ = examples.take(chosen[start:start + PCA_CHUNK])
        channels = data.shape[1]
        pixels = np.moveaxis(data, 1, 0).reshape(channels, -1).astype(np.float64) / unit
        total = total + pixels.sum(axis=1)
        outer = outer + pixels @ pixels.T
        count += pixels.shape[1]
    mean = total / count
    covariance = outer / count - np.outer(mean, mean)
    values, vectors = np.linalg.eigh(covariance)
    order = np.argsort(values)[::-1]
    return ColourPCA(np.maximum(values[order], 0.0), vectors[:, order])


class Transform:
    """The transformation of one data layer in one phase."""

    def __init__(self, p: dict, train: bool, example_shape: tuple[int, ...], *,
                 mean_image: np.ndarray | None = None, pca: ColourPCA | None = None,
                 pixel_unit: float = 255.0, span: Span | None = None, what: str = "data"):
        self.train = train
        self.scale = np.float32(p.get("scale", 1.0))
        self.crop = p.get("crop_size", 0) or 0
        self.mirror = bool(p.get("mirror")) and train
        self.pca_std = float(p.get("pca_color", 0.0) or 0.0) if train else 0.0
        self.pca = pca if self.pca_std > 0 else None
        self.pixel_unit = np.float32(pixel_unit)
        self.example_shape = tuple(example_shape)
        images = len(self.example_shape) == 3
        needs_images = [name for name, on in (("crop_size", self.crop), ("mirror", self.mirror),
                                              ("pca_color", self.pca is not None),
                                              ("mean_file", mean_image is not None)) if on]
        if needs_images and not images:
            raise NetcError(f"{needs_images[0]} needs [C, H, W] examples; {what} holds "
                            f"{list(self.example_shape)}", span)
        if self.crop and images and (self.crop > self.example_shape[1] or self.crop > self.example_shape[2]):
            raise NetcError(f"crop_size {self.crop} is larger than the {self.example_shape[1]}x"
                            f"{self.example_shape[2]} examples of {what}", span)
        self.mean: np.ndarray | None = None
        if mean_image is not None:
            mean_image = np.asarray(mean_image, np.float32)
            if mean_image.shape != self.example_shape:
                raise NetcError(f"the mean file is {list(mean_image.shape)} but the examples of {what} are "
                                f"{list(self.example_shape)}", span,
                                "the mean image must have the examples' size before cropping")
            self.mean = mean_image
        elif p.get("mean_value"):
            values = np.asarray(p["mean_value"], np.float32)
            channels = self.example_shape[0] if images else 1
            if len(values) not in (1, channels) or (len(values) > 1 and not images):
                raise NetcError(f"{len(values)} mean values for {what} of shape {list(self.example_shape)}",
                                span, "give one mean value, or one per channel")
            # per-channel values broadcast over H, W; a single value over everything
            self.mean = values.reshape((-1,) + (1,) * (len(self.example_shape) - 1))

    @property
    def output_shape(self) -> tuple[int, ...]:
        if self.crop:
            return (self.example_shape[0], self.crop, self.crop)
        return self.example_shape

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The float32 network input for raw examples x [n, ...]."""
        n = len(x)
        mean = self.mean
        full_mean = mean is not None and mean.shape == self.example_shape
        if self.crop or self.mirror:
            _, height, width = self.example_shape
            crop_h, crop_w = (self.crop, self.crop) if self.crop else (height, width)
            if self.crop and self.train:
                rows = rng.integers(0, height - crop_h + 1, n)
                cols = rng.integers(0, width - crop_w + 1, n)
            else:
                rows = np.full(n, (height - crop_h) // 2)
                cols = np.full(n, (width - crop_w) // 2)
            flips = rng.integers(0, 2, n).astype(bool) if self.mirror else np.zeros(n, bool)
            x = crop_and_flip(x, rows, cols, crop_h, crop_w, flips)
            if full_mean:
                mean = crop_and_flip(np.broadcast_to(mean, (n,) + mean.shape), rows, cols, crop_h, crop_w, flips)
        out = x.astype(np.float32)
        if self.pca is not None:
            alpha = rng.normal(0.0, self.pca_std, (n, out.shape[1]))
            shift = (self.pca.shifts(alpha) * self.pixel_unit).astype(np.float32)
            out += shift.reshape(shift.shape + (1,) * (out.ndim - 2))
        if mean is not None:
            out -= mean
        if self.scale != 1:
            out *= self.scale
        return out


def crop_and_flip(x: np.ndarray, rows: np.ndarray, cols: np.ndarray, height: int, width: int,
                  flips: np.ndarray) -> np.ndarray:
    """x[k, :, rows[k]:+height, cols[k]:+width] for each k, flipped left-right where
    flips[k]. One slice for the batch when every offset agrees; otherwise a slice per
    example, which for images copies far faster than one fancy-indexed gather."""
    if (rows == rows[0]).all() and (cols == cols[0]).all() and (flips == flips[0]).all() and len(x):
        window = x[:, :, rows[0]:rows[0] + height, cols[0]:cols[0] + width]
        return np.ascontiguousarray(window[..., ::-1] if flips[0] else window)
    out = np.empty(x.shape[:2] + (height, width), x.dtype)
    for k in range(len(x)):
        window = x[k, :, rows[k]:rows[k] + height, cols[k]:cols[k] + width]
        out[k] = window[..., ::-1] if flips[k] else window
    return out
