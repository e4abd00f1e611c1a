"""`netc viz filters` and `netc viz activations`: picture geometry, what the tiles show,
and the errors, on a tiny net with weights written here and on Caffe's trained LeNet."""
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from netc.compile import compile_net
from netc.runtime.weight_files import load_weights, save_weights
from netc.viz import mosaic
from netc.viz.activations import activations_picture
from netc.viz.filters import filters_picture

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
LENET_CAFFEMODEL = SHARED / "pretrained" / "lenet_iter_10000.caffemodel"
LENET_DEPLOY = SHARED / "caffe_models" / "examples" / "mnist" / "lenet.prototxt"
MNIST_TEST = SHARED / "mnist" / "t10k-images-idx3-ubyte.gz"
needs_lenet = pytest.mark.skipif(not (LENET_CAFFEMODEL.is_file() and LENET_DEPLOY.is_file()),
                                 reason="Caffe's LeNet (shared/) is not beside the checkout")

# conv1 sees 3 channels (RGB tiles), conv2 sees 6 (grey strips); `flat` is a map of 1×1
TINY = """\
net Tiny
input data [2, 3, 9, 9]
conv1: Convolution(7, kernel=3)
conv2: Convolution(5, kernel=3)
flat:  InnerProduct(4)
"""

SEP_FILTERS = 1
SEP_MAPS = 2


def netc(*args, cwd=None):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "netc", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


def expected_size(count, cols, tile_h, tile_w, sep):
    """(width, height) as PIL reports it, worked out from the layout rule."""
    rows = -(-count // cols)
    return cols * tile_w + (cols - 1) * sep, rows * tile_h + (rows - 1) * sep


def tile(pixels, i, cols, tile_h, tile_w, sep):
    r, c = divmod(i, cols)
    y, x = r * (tile_h + sep), c * (tile_w + sep)
    return pixels[y:y + tile_h, x:x + tile_w]


@pytest.fixture
def tiny(tmp_path):
    """The tiny net and an .npz of weights with deliberate kernels in conv1:
    0 and 1 identical, 2 = 10×0 + 3 (the same picture), 3 and 4 different, 5 zero,
    6 only in input channel 0."""
    net_path = tmp_path / "tiny.net"
    net_path.write_text(TINY)
    net = compile_net(str(net_path))
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(7, 3, 3, 3)).astype(np.float32)
    w1[1] = w1[0]
    w1[2] = 10 * w1[0] + 3
    w1[5] = 0
    w1[6] = 0
    w1[6, 0] = 1.0
    weights = {"conv1": [w1, np.zeros(7, np.float32)],
               "conv2": [rng.normal(size=(5, 7, 3, 3)).astype(np.float32), np.zeros(5, np.float32)],
               "flat": [rng.normal(size=(4, 5 * 5 * 5)).astype(np.float32), np.zeros(4, np.float32)]}
    weights_path = tmp_path / "tiny.npz"
    save_weights(weights_path, net, weights)
    return net_path, weights_path, weights


# --- filters ---------------------------------------------------------------------

def test_rgb_kernels_make_a_square_grid_of_colour_tiles(tiny, tmp_path):
    net_path, weights_path, _ = tiny
    out = tmp_path / "conv1.png"
    res = netc("viz", "filters", weights_path, "--net", net_path, "--layer", "conv1", "-o", out)
    assert res.returncode == 0, res.stderr
    scale = math.ceil(40 / 3)                      # the default: tiles of at least 40 px
    with Image.open(out) as img:
        assert img.mode == "RGB"
        assert img.size == expected_size(7, 3, 3 * scale, 3 * scale, SEP_FILTERS)


def test_grey_strips_one_row_per_kernel_for_many_input_channels(tiny, tmp_path):
    net_path, weights_path, _ = tiny
    out = tmp_path / "conv2.png"
    res = netc("viz", "filters", weights_path, "--net", net_path, "--layer", "conv2", "-o", out, "--scale", "4")
    assert res.returncode == 0, res.stderr
    with Image.open(out) as img:
        assert img.mode == "L"
        strip_w = 7 * 12 + 6 * SEP_FILTERS           # 7 input channels side by side
        assert img.size == expected_size(5, 1, 12, strip_w, SEP_FILTERS)


def test_tiles_show_each_kernel_normalised_on_its_own(tiny):
    _, _, weights = tiny
    pixels = filters_picture(weights["conv1"][0], scale=2)
    tiles = [tile(pixels, i, 3, 6, 6, SEP_FILTERS) for i in range(7)]
    assert np.array_equal(tiles[0], tiles[1])              # identical kernels, identical tiles
    assert np.array_equal(tiles[0], tiles[2])              # ×10 + 3 changes nothing after normalising
    assert not np.array_equal(tiles[0], tiles[3])
    assert not np.array_equal(tiles[3], tiles[4])
    assert tiles[0].min() == 0 and tiles[0].max() == 255    # stretched over the full range
    assert not tiles[5].any()                               # a zero kernel has no contrast: black


def test_three_channel_kernels_are_read_as_bgr_unless_told(tiny):
    _, _, weights = tiny
    kernels = weights["conv1"][0]
    bgr = tile(filters_picture(kernels, scale=1), 6, 3, 3, 3, SEP_FILTERS)
    rgb = tile(filters_picture(kernels, scale=1, channel_order="rgb"), 6, 3, 3, 3, SEP_FILTERS)
    assert (bgr[..., 2] == 255).all() and not bgr[..., :2].any()   # channel 0 is blue in Caffe's order
    assert (rgb[..., 0] == 255).all() and not rgb[..., 1:].any()


def test_a_strip_is_normalised_over_the_whole_kernel():
    kernel = np.zeros((1, 2, 1, 1), np.float32)
    kernel[0, 1] = 4.0                         # channel 0 is the kernel's min, channel 1 its max
    pixels = filters_picture(np.concatenate([kernel, kernel * 10]), scale=1)
    assert pixels.shape == (2 * 1 + SEP_FILTERS, 2 * 1 + SEP_FILTERS)
    assert pixels[0, 0] == 0 and pixels[0, 2] == 255
    assert np.array_equal(pixels[0], pixels[2])


@needs_lenet
def test_caffes_lenet_conv1_20_kernels(tmp_path):
    out = tmp_path / "lenet_conv1.png"
    res = netc("viz", "filters", LENET_CAFFEMODEL, "--net", LENET_DEPLOY, "--layer", "conv1", "-o", out)
    assert res.returncode == 0, res.stderr
    assert "20 kernels" in res.stderr
    with Image.open(out) as img:
        assert img.mode == "L"
        assert img.size == expected_size(20, 5, 40, 40, SEP_FILTERS)    # 5×5 kernels ×8
        pixels = np.asarray(img)
    kernels = load_weights(str(LENET_CAFFEMODEL), compile_net(str(LENET_DEPLOY)))["conv1"][0]
    for i in (0, 7, 19):
        k = kernels[i, 0].astype(np.float64)
        want = np.rint((k - k.min()) / (k.max() - k.min()) * 255).astype(np.uint8)
        assert np.array_equal(tile(pixels, i, 5, 40, 40, SEP_FILTERS)[::8, ::8], want)
    tiles = {tile(pixels, i, 5, 40, 40, SEP_FILTERS).tobytes() for i in range(20)}
    assert len(tiles) == 20                      # trained kernels all differ


@needs_lenet
def test_caffes_lenet_conv2_strips(tmp_path):
    out = tmp_path / "lenet_conv2.png"
    res = netc("viz", "filters", LENET_CAFFEMODEL, "--net", LENET_DEPLOY, "--layer", "conv2", "-o", out)
    assert res.returncode == 0, res.stderr
    with Image.open(out) as img:
        assert img.size == expected_size(50, 1, 40, 20 * 40 + 19 * SEP_FILTERS, SEP_FILTERS)


@pytest.mark.parametrize("args, message", [
    (("--layer", "conv3"), "no layer 'conv3'"),
    (("--layer", "flat"), "InnerProduct, not a convolution"),
])
def test_filters_errors_in_the_layer(tiny, tmp_path, args, message):
    net_path, weights_path, _ = tiny
    res = netc("viz", "filters", weights_path, "--net", net_path, "-o", tmp_path / "x.png", *args)
    assert res.returncode == 1
    assert message in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "x.png").exists()


def test_filters_unknown_layer_suggests_a_name(tiny, tmp_path):
    net_path, weights_path, _ = tiny
    res = netc("viz", "filters", weights_path, "--net", net_path, "-o", tmp_path / "x.png", "--layer", "conv_1")
    assert res.returncode == 1 and "did you mean 'conv1'?" in res.stderr


def test_filters_layer_absent_from_the_weights_file(tiny, tmp_path):
    net_path, _, weights = tiny
    partial = tmp_path / "partial.npz"
    np.savez(partial, **{"conv2/0": weights["conv2"][0], "conv2/1": weights["conv2"][1]})
    res = netc("viz", "filters", partial, "--net", net_path, "--layer", "conv1", "-o", tmp_path / "x.png")
    assert res.returncode == 1
    assert "has no weights for layer 'conv1'" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("weights_name, output_name, message", [
    ("missing.npz", "x.png", "does not exist"),
    ("weights.pkl", "x.png", "unknown weights format"),
    ("tiny.npz", "x.jpg", "pictures are written as .png"),
])
def test_filters_file_errors(tiny, tmp_path, weights_name, output_name, message):
    net_path, _, _ = tiny
    (tmp_path / "weights.pkl").write_bytes(b"x")
    res = netc("viz", "filters", tmp_path / weights_name, "--net", net_path, "--layer", "conv1",
               "-o", tmp_path / output_name)
    assert res.returncode == 1
    assert message in res.stderr and "Traceback" not in res.stderr


# --- activations -----------------------------------------------------------------

def test_heat_map_starts_black_and_rises_in_luminance():
    table = mosaic.heat_table()
    assert tuple(table[0]) == (0, 0, 0)
    assert np.all(np.diff(mosaic.luma(table)) > 0)
    assert mosaic.luma(table[-1]) > 240


def test_feature_maps_tile_count_and_colours():
    rng = np.random.default_rng(1)
    maps = rng.normal(size=(10, 5, 7))
    maps[3] = 2.5                                  # a constant map
    pixels = activations_picture(maps)
    scale = math.ceil(32 / 7)
    cols = 4                                       # ceil(sqrt(10))
    assert pixels.shape[:2][::-1] == expected_size(10, cols, 5 * scale, 7 * scale, SEP_MAPS)
    assert not tile(pixels, 3, cols, 5 * scale, 7 * scale, SEP_MAPS).any()      # constant: black
    # within a tile a larger value is never darker
    got = mosaic.luma(tile(pixels, 0, cols, 5 * scale, 7 * scale, SEP_MAPS)[::scale, ::scale])
    order = np.argsort(maps[0], axis=None, kind="stable")
    assert np.all(np.diff(got.reshape(-1)[order]) >= 0)
    assert got.max() > got.min()


def test_activations_cli_on_the_tiny_net(tiny, tmp_path):
    net_path, weights_path, weights = tiny
    x = np.random.default_rng(2).normal(size=(2, 3, 9, 9)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "maps.png"
    res = netc("viz", "activations", net_path, "--weights", weights_path, "--input", f"data={tmp_path / 'x.npy'}",
               "--layer", "conv1", "-o", out)
    assert res.returncode == 0, res.stderr
    assert "conv1: 7 maps of 7x7" in res.stderr
    scale = math.ceil(32 / 7)
    with Image.open(out) as img:
        assert img.mode == "RGB"
        assert img.size == expected_size(7, 3, 7 * scale, 7 * scale, SEP_MAPS)
        pixels = np.asarray(img)
    # kernel 5 is zero and the bias 0: conv1's map 5 is constant, so black
    assert not tile(pixels, 5, 3, 7 * scale, 7 * scale, SEP_MAPS).any()
    # map 6 is the first example's channel 0 summed over 3×3 windows: its brightest
    # pixel is where that sum peaks
    sums = np.lib.stride_tricks.sliding_window_view(x[0, 0], (3, 3)).sum(axis=(2, 3))
    got = mosaic.luma(tile(pixels, 6, 3, 7 * scale, 7 * scale, SEP_MAPS)[::scale, ::scale])
    assert np.unravel_index(np.argmax(got), got.shape) == np.unravel_index(np.argmax(sums), sums.shape)
    assert np.unravel_index(np.argmin(got), got.shape) == np.unravel_index(np.argmin(sums), sums.shape)


def test_activations_without_weights_says_so(tiny, tmp_path):
    net_path, _, _ = tiny
    np.save(tmp_path / "x.npy", np.ones((1, 3, 9, 9), np.float32))
    res = netc("viz", "activations", net_path, "--input", f"data={tmp_path / 'x.npy'}", "--layer", "conv2",
               "-o", tmp_path / "m.png")
    assert res.returncode == 0, res.stderr
    assert "no --weights" in res.stderr and "5 maps of 5x5" in res.stderr


@pytest.mark.parametrize("layer, message", [
    ("flat", "no feature maps to draw"),
    ("conv7", "no layer or blob 'conv7'"),
])
def test_activations_errors(tiny, tmp_path, layer, message):
    net_path, weights_path, _ = tiny
    np.save(tmp_path / "x.npy", np.ones((1, 3, 9, 9), np.float32))
    res = netc("viz", "activations", net_path, "--weights", weights_path, "--input", f"data={tmp_path / 'x.npy'}",
               "--layer", layer, "-o", tmp_path / "m.png")
    assert res.returncode == 1
    assert message in res.stderr and "Traceback" not in res.stderr


@needs_lenet
@pytest.mark.skipif(not MNIST_TEST.is_file(), reason="MNIST test images are not in shared/")
def test_lenet_feature_maps_of_a_digit_image(tmp_path):
    import gzip
    with gzip.open(MNIST_TEST, "rb") as f:
        digit = np.frombuffer(f.read(16 + 28 * 28)[16:], dtype=np.uint8).reshape(28, 28)
    Image.fromarray(digit).save(tmp_path / "digit.png")
    out = tmp_path / "conv1_maps.png"
    res = netc("viz", "activations", LENET_DEPLOY, "--weights", LENET_CAFFEMODEL,
               "--input", f"data={tmp_path / 'digit.png'}", "--layer", "conv1", "-o", out)
    assert res.returncode == 0, res.stderr
    with Image.open(out) as img:
        assert img.size == expected_size(20, 5, 48, 48, SEP_MAPS)     # 24×24 maps ×2

