"""Caffe's transforms and the PCA colour augmentation, each against a direct NumPy
computation written from the definition in shared/caffe_semantics.md."""
import numpy as np
import pytest

from netc.caffe import caffe_pb2
from netc.data import DataError, open_source
from netc.data.sources import Examples
from netc.data.transform import Transform, colour_pca


def images(n=6, c=3, h=7, w=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, c, h, w), dtype=np.uint8)


def run(p, x, train, seed=0, **kw):
    return Transform(p, train, x.shape[1:], **kw)(x, np.random.default_rng(seed))


def test_mean_value_subtracted_before_scale():
    x = images()
    out = run({"scale": 0.5, "mean_value": (10.0, 20.0, 30.0)}, x, train=False)
    expected = (x.astype(np.float32) - np.array([10, 20, 30], np.float32)[:, None, None]) * np.float32(0.5)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)
    out = run({"scale": 0.25, "mean_value": (100.0,)}, x, train=True)
    np.testing.assert_array_equal(out, (x.astype(np.float32) - 100) * np.float32(0.25))


def test_centre_crop_offsets_in_test():
    x = images(h=7, w=10)
    out = run({"crop_size": 4, "mirror": True}, x, train=False)
    # Caffe's centre: ((7 - 4) // 2, (10 - 4) // 2) = (1, 3); no mirroring in testing
    np.testing.assert_array_equal(out, x[:, :, 1:5, 3:7])


def windows(image, crop):
    """Every crop of one [C, H, W] image, and its mirror image."""
    _, h, w = image.shape
    for i in range(h - crop + 1):
        for j in range(w - crop + 1):
            window = image[:, i:i + crop, j:j + crop]
            yield (i, j, False), window
            yield (i, j, True), window[..., ::-1]


def test_random_crop_and_mirror_in_train():
    x = images(n=64, h=9, w=9)
    out = run({"crop_size": 5, "mirror": True}, x, train=True, seed=3)
    seen = []
    for k in range(len(x)):
        matches = [key for key, window in windows(x[k], 5) if np.array_equal(window, out[k])]
        assert matches, f"example {k} is no crop of its image"
        seen.append(matches[0])
    assert len({key[:2] for key in seen}) > 10          # offsets vary
    flips = sum(key[2] for key in seen)
    assert 10 < flips < 54                              # about half mirrored


def test_mirror_without_crop_only_in_train():
    x = images(n=40)
    out = run({"mirror": True}, x, train=True, seed=1)
    flipped = [np.array_equal(out[k], x[k, :, :, ::-1]) for k in range(len(x))]
    same = [np.array_equal(out[k], x[k]) for k in range(len(x))]
    assert all(f or s for f, s in zip(flipped, same))
    assert 5 < sum(flipped) < 35
    np.testing.assert_array_equal(run({"mirror": True}, x, train=False), x)


def write_mean(path, mean):
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend((1,) + mean.shape)
    blob.data.extend(mean.ravel().tolist())
    path.write_bytes(blob.SerializeToString())


def test_crop_with_mean_file(tmp_path, data_layer):
    x = images(n=8, h=6, w=7)
    mean = np.random.default_rng(5).uniform(0, 255, (3, 6, 7)).astype(np.float32)
    write_mean(tmp_path / "mean.binaryproto", mean)
    np.save(tmp_path / "x.npy", x)
    line = ('d: NpyData(source="x.npy", batch=8, scale=0.5, crop_size=4, mirror=true, '
            'mean_file="mean.binaryproto", shuffle=false) -> data')
    with open_source(data_layer(line, "test"), "test", 0) as src:
        out = src.next_batch()["data"]
    centred = (x.astype(np.float32) - mean) * np.float32(0.5)
    np.testing.assert_array_equal(out, centred[:, :, 1:5, 1:5])   # offsets (6-4)//2, (7-4)//2
    # in training each output is a window of (x - mean)·scale, the mean cropped with the data
    with open_source(data_layer(line, "train"), "train", 0) as src:
        out = src.next_batch()["data"]
    for k in range(len(x)):
        assert any(np.array_equal(w, out[k]) for _, w in windows(centred[k], 4)), k


def test_mean_file_of_wrong_size(tmp_path, data_layer):
    write_mean(tmp_path / "mean.binaryproto", np.zeros((3, 5, 5), np.float32))
    np.save(tmp_path / "x.npy", images(h=6, w=7))
    with pytest.raises(DataError, match=r"mean file '.*mean.binaryproto' is \[3, 5, 5\] but the examples"):
        open_source(data_layer('d: NpyData(source="x.npy", batch=2, mean_file="mean.binaryproto") -> data'),
                    "train", 0)


def synthetic_colours(n, covariance, seed=0, size=16):
    """Images whose pixels are drawn from N(0.5, covariance) in [0, 1] units, as float32."""
    rng = np.random.default_rng(seed)
    pixels = rng.multivariate_normal([0.5, 0.5, 0.5], covariance, n * size * size)
    return np.ascontiguousarray(pixels.reshape(n, size, size, 3).transpose(0, 3, 1, 2)).astype(np.float32)


Q = np.linalg.qr(np.array([[1.0, 2, 0], [0, 1, 3], [2, 0, 1]]))[0]
LAMBDA = np.array([0.04, 0.01, 0.002])
COVARIANCE = Q @ np.diag(LAMBDA) @ Q.T


def test_pca_recovers_eigenvectors_and_values():
    examples = Examples(synthetic_colours(40, COVARIANCE), None, 1.0)
    pca = colour_pca(examples)
    np.testing.assert_allclose(pca.values, LAMBDA, rtol=0.05)
    for i in range(3):
        assert abs(pca.vectors[:, i] @ Q[:, i]) > 0.99
    # bytes are measured in [0, 1] units: the same colours as uint8 give the same eigenvalues
    as_bytes = Examples(np.clip(np.round(examples.data * 255), 0, 255).astype(np.uint8), None, 255.0)
    np.testing.assert_allclose(colour_pca(as_bytes).values, LAMBDA, rtol=0.05)
    sampled = colour_pca(examples, limit=20, seed=1)   # a sample of the examples suffices
    np.testing.assert_allclose(sampled.values, LAMBDA, rtol=0.1)


def test_pca_shift_has_the_expected_covariance():
    examples = Examples(synthetic_colours(4, COVARIANCE), None, 1.0)
    pca = colour_pca(examples)
    x = np.zeros((20000, 3, 2, 2), np.float32)
    std = 0.1
    out = Transform({"pca_color": std}, True, x.shape[1:], pca=pca, pixel_unit=1.0)(x, np.random.default_rng(0))
    shifts = out[:, :, 0, 0]
    np.testing.assert_array_equal(out, np.broadcast_to(shifts[:, :, None, None], out.shape))   # one per image
    # shift = P·(α∘λ), α ~ N(0, std²): covariance P·diag(λ²·std²)·Pᵀ
    expected = pca.vectors @ np.diag((pca.values * std) ** 2) @ pca.vectors.T
    np.testing.assert_allclose(np.cov(shifts.T.astype(np.float64)), expected, atol=0.03 * expected.max())
    assert Transform({"pca_color": std}, False, x.shape[1:], pca=pca)(x, np.random.default_rng(0)).max() == 0


def test_pca_in_bytes_is_scaled_back(tmp_path, data_layer):
    x = np.clip(np.round(synthetic_colours(30, COVARIANCE) * 255), 0, 255).astype(np.uint8)
    np.save(tmp_path / "x.npy", x)
    layer = data_layer('d: NpyData(source="x.npy", batch=30, pca_color=0.5) -> data')
    with open_source(data_layer('d: NpyData(source="x.npy", batch=30, pca_color=0.5, shuffle=false) -> data'),
                     "train", 0) as src:
        out = src.next_batch()["data"]
    shift = out - x.astype(np.float32)
    per_image = shift[:, :, 0, 0]
    np.testing.assert_allclose(shift, np.broadcast_to(per_image[:, :, None, None], shift.shape), atol=1e-4)
    # λ in [0, 1] units, shifts in bytes: |shift| ≲ 255·λ₁·4σ
    assert 0 < np.abs(per_image).max() < 255 * LAMBDA[0] * 1.1 * 0.5 * 4
    with open_source(layer, "test", 0) as src:
        np.testing.assert_array_equal(src.next_batch()["data"], x)   # training only


def test_transform_rejects_what_cannot_work():
    with pytest.raises(DataError, match="crop_size 9 is larger than the 7x8"):
        Transform({"crop_size": 9}, True, (3, 7, 8))
    with pytest.raises(DataError, match="2 mean values"):
        Transform({"mean_value": (1.0, 2.0)}, True, (3, 7, 8))
    with pytest.raises(DataError, match=r"crop_size needs \[C, H, W\]"):
        Transform({"crop_size": 2}, True, (5,))
