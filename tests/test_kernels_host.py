"""The CUDA kernels' logic without a GPU: kernels/*.cu compiled for the host by g++ (a
shim runs each launch's threads one after another as coroutines, shared memory and
__syncthreads included) and run through netc.runtime.cuda_kernels' own argument
marshalling against the NumPy layers, over the grid of tests/kernel_cases.py. What
this cannot see (truly concurrent threads, the device compiler, CuPy's launch)
tests/gpu/test_kernels.py checks on a device."""
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kernel_cases as kc  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ to build the kernels for the host")


@pytest.fixture(scope="module")
def launcher(tmp_path_factory):
    folder = tmp_path_factory.mktemp("host_kernels")
    return kc.HostLauncher(kc.build_host_libraries(sorted(kc.KERNELS.glob("*.cu")), folder))


def same(a):
    return a


@pytest.mark.parametrize("dtype", kc.DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("case", kc.POOL_CASES, ids=kc.case_id)
def test_pool_kernels_match_the_layer(launcher, case, method, dtype):
    kc.check_pool(case, method, dtype, launcher, same, same)


@pytest.mark.parametrize("dtype", kc.DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("case", kc.LRN_CASES, ids=kc.case_id)
def test_lrn_kernels_match_the_layer(launcher, case, dtype):
    kc.check_lrn(case, dtype, launcher, same, same)


def test_other_dtypes_are_refused(launcher):
    x = kc.np.zeros((1, 1, 4, 4), dtype=kc.np.float16)
    with pytest.raises(TypeError, match="float32 or float64"):
        kc.cuda_kernels.max_pool_forward(x, kc.pool_params("MAX", (2, 2), (2, 2), (0, 0), "CEIL"),
                                         launcher=launcher)


@pytest.mark.parametrize("dtype", kc.DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("case", kc.CONV_CASES, ids=kc.case_id)
def test_conv_kernels_match_the_layer(launcher, case, dtype):
    kc.check_conv(case, dtype, launcher, same, same)


@pytest.mark.parametrize("dtype", kc.DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("case", kc.SOFTMAX_CASES, ids=kc.case_id)
def test_softmax_loss_kernels_match_the_layer(launcher, case, dtype):
    kc.check_softmax_loss(case, dtype, launcher, same, same)


def test_the_tiled_kernels_loop_over_tiles_and_split_the_weight_gradient(launcher):
    """The case with 1152 output pixels runs its 18 forward tiles on the launcher's 3
    blocks and its weight gradient as 2 splits and their sum (what the grid above
    checks), as cuda_kernels decides."""
    launcher.launched.clear()
    kc.check_conv(((2, 4, 26, 26), 3, (3, 3), (1, 1), (0, 0), (1, 1), 1, True), kc.np.float64, launcher,
                  same, same)
    kernels = {kernel: (blocks, threads) for kernel, blocks, threads in launcher.launched}
    assert kernels["conv_forward_f64"] == (3, kc.cuda_kernels.CONV_THREADS)
    assert "conv_reduce_splits_f64" in kernels
    assert kc.cuda_kernels._weight_splits(1, 2 * 24 * 24) == (2, 576)


@pytest.mark.parametrize("case", [kc.CONV_CASES[0], kc.CONV_CASES[4], kc.CONV_CASES[7]], ids=kc.case_id)
def test_many_weight_splits_sum_in_order(launcher, monkeypatch, case):
    """Short splits (one reduction step each where the pixels allow) against the layer."""
    monkeypatch.setattr(kc.cuda_kernels, "SPLIT_MIN_DEPTH", 16)
    launcher.launched.clear()
    kc.check_conv(case, kc.np.float64, launcher, same, same)
    assert any(kernel == "conv_reduce_splits_f64" for kernel, _, _ in launcher.launched)


def test_conv_threads_agree_with_the_kernel():
    """cuda_kernels launches kernels/conv.cu's tiled kernels with its CONV_THREADS, TILE
    and TILE_K; the two files must say the same."""
    source = (kc.KERNELS / "conv.cu").read_text()
    for name, value in (("CONV_THREADS", kc.cuda_kernels.CONV_THREADS), ("TILE", kc.cuda_kernels.CONV_TILE),
                        ("TILE_K", kc.cuda_kernels.CONV_TILE_K)):
        assert f"constexpr int {name} = {value};" in source, name


def test_wrong_shapes_and_outs_are_refused(launcher):
    p, x, w, b, dy = kc.conv_inputs(kc.CONV_CASES[0], kc.np.float32)
    with pytest.raises(ValueError, match="weight"):
        kc.cuda_kernels.conv_forward(x, w[:, :2], b, p, launcher=launcher)
    with pytest.raises(ValueError, match="bias"):
        kc.cuda_kernels.conv_forward(x, w, None, p, launcher=launcher)
    with pytest.raises(ValueError, match="out must be"):
        kc.cuda_kernels.conv_forward(x, w, b, p, launcher=launcher, out=kc.np.empty(dy.shape, kc.np.float64))
    with pytest.raises(ValueError, match="out must be"):
        kc.cuda_kernels.conv_backward_data(dy, w, x.shape, p, launcher=launcher,
                                           out=kc.np.empty(x.shape[::-1], kc.np.float32).T)
    with pytest.raises(TypeError, match="one dtype"):
        kc.cuda_kernels.conv_backward_weights(x, dy.astype(kc.np.float64), w.shape, p, launcher=launcher)


def test_labels_outside_the_classes_are_refused_as_the_layer_refuses_them(launcher):
    from netc.errors import NetcError
    p, x, labels, _ = kc.softmax_inputs(kc.SOFTMAX_CASES[0], kc.np.float64)
    labels[2] = 10
    with pytest.raises(NetcError, match="outside the 10 classes"):
        kc.cuda_kernels.softmax_loss_forward(x, labels, p, launcher=launcher)


def test_the_launcher_checks_arguments_against_the_kernel(launcher):
    """The host build's signatures catch an argument of the wrong C type or count."""
    x = kc.np.zeros(4, dtype=kc.np.float32)
    with pytest.raises(AssertionError, match="declares"):
        launcher("conv", "conv_reduce_splits_f32", 4, (kc.np.int32(4), x, kc.np.int32(1), x))
    with pytest.raises(AssertionError, match="declares"):
        launcher("conv", "conv_reduce_splits_f32", 4, (kc.np.int64(4), x.astype(kc.np.float64), kc.np.int32(1), x))
    with pytest.raises(AssertionError, match="takes 4 arguments"):
        launcher("conv", "conv_reduce_splits_f32", 4, (kc.np.int64(4), x, x))
