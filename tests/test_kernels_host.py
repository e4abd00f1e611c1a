"""The CUDA kernels' logic without a GPU: kernels/*.cu compiled for the host by g++ (a
shim turns each launch into one thread walking every grid-stride loop) and run through
netc.runtime.cuda_kernels' own argument marshalling against the NumPy layers, over the
grid of tests/kernel_cases.py. What this cannot see (concurrency between threads, the
device compiler, CuPy's launch) tests/gpu/test_kernels.py checks on a device."""
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
    return kc.HostLauncher({source.stem: kc.build_host_library(source, folder)
                            for source in sorted(kc.KERNELS.glob("*.cu"))})


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
