"""kernels/*.cu on a CUDA device, through netc.runtime.cuda_kernels and CuPy, against the
NumPy layers (float64) over the grid of tests/kernel_cases.py: random inputs, odd sizes,
stride > kernel, padding, ceil edges, global pooling, batch 1, 1/3/17 channels; every
output poisoned with NaN (the mask with an impossible index) before each launch, so an
element a kernel fails to write fails the comparison. Relative error < 1e-5 in float32."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import kernel_cases as kc  # noqa: E402

from netc.runtime import cuda_kernels  # noqa: E402

pytestmark = pytest.mark.gpu
cupy = pytest.importorskip("cupy")


def _has_device() -> bool:
    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except cupy.cuda.runtime.CUDARuntimeError:
        return False


if not _has_device():
    pytest.skip("no CUDA device", allow_module_level=True)


class PoisoningLauncher(cuda_kernels.CupyLauncher):
    """The default launcher, its outputs filled with NaN (or an impossible index) first."""

    def empty(self, shape, dtype):
        return kc.poisoned(cupy, shape, dtype)

    def __call__(self, source, kernel, count, args):
        super().__call__(source, kernel, count, args)
        cupy.cuda.get_current_stream().synchronize()   # a launch failure names its kernel


@pytest.fixture(scope="module")
def launcher():
    return PoisoningLauncher()


@pytest.mark.parametrize("dtype", kc.DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("case", kc.POOL_CASES, ids=kc.case_id)
def test_pool_kernels_match_the_layer(launcher, case, method, dtype):
    kc.check_pool(case, method, dtype, launcher, cupy.asarray, cupy.asnumpy)


@pytest.mark.parametrize("dtype", kc.DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("case", kc.LRN_CASES, ids=kc.case_id)
def test_lrn_kernels_match_the_layer(launcher, case, dtype):
    kc.check_lrn(case, dtype, launcher, cupy.asarray, cupy.asnumpy)


def test_grid_stride_loops_cover_more_items_than_threads(monkeypatch, launcher):
    """A grid capped below the work: each thread must take several items."""
    monkeypatch.setattr(cuda_kernels, "MAX_BLOCKS", 2)
    case = ((3, 17, 19, 21), (3, 3), (2, 2), (1, 1), "CEIL")
    kc.check_pool(case, "MAX", np.float32, launcher, cupy.asarray, cupy.asnumpy)
    kc.check_lrn(((3, 17, 19, 21), 5, 1.0, 0.75, 1.0, "ACROSS_CHANNELS"), np.float32, launcher,
                 cupy.asarray, cupy.asnumpy)
    kc.check_lrn(((3, 17, 19, 21), 5, 1.0, 0.75, 1.0, "WITHIN_CHANNEL"), np.float32, launcher,
                 cupy.asarray, cupy.asnumpy)


def test_the_default_launcher_returns_device_arrays():
    x = cupy.asarray(np.random.default_rng(0).normal(size=(1, 3, 5, 5)).astype(np.float32))
    top, mask = cuda_kernels.max_pool_forward(x, kc.pool_params("MAX", (2, 2), (2, 2), (0, 0), "CEIL"))
    assert isinstance(top, cupy.ndarray) and mask.dtype == np.int32 and top.shape == (1, 3, 3, 3)
