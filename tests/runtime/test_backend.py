"""get_backend: the device string, and every way the CUDA backend can be unavailable.

Without a GPU, CuPy is stood in for by fake modules (missing, broken, no driver, one
or two GPUs), so each error path is checked on any machine; a real GPU is tried only
in the `gpu`-marked test.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from netc.errors import NetcError
from netc.runtime import backend as backends
from netc.runtime.backend import NUMPY, Backend, get_backend


def test_cpu_is_the_numpy_backend():
    for text in ("cpu", "CPU", " cpu "):
        assert get_backend(text) is NUMPY
    assert Backend("cpu", np) == NUMPY       # the plain construction still works
    assert NUMPY.device == "cpu" and NUMPY.device_index is None and not NUMPY.is_gpu
    a = NUMPY.asarray([1, 2], np.float32)
    assert a.dtype == np.float32 and NUMPY.to_numpy(a) is a
    NUMPY.synchronize()                      # nothing to wait for
    assert NUMPY.describe().startswith("cpu (NumPy ")


def test_cpu_free_memory_is_what_the_kernel_says_is_available():
    free = NUMPY.free_memory()
    assert isinstance(free, int) and free > 0
    if os.path.exists("/proc/meminfo"):
        with open("/proc/meminfo") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
        assert abs(free - kb * 1024) < 2**30     # it moves a little between the two reads


@pytest.mark.parametrize("bad", ["gpu", "cuda:", "cuda:x", "cuda:-1", "cuda0", "cpu:0", "", "cuda:1:2"])
def test_malformed_device_strings(bad):
    with pytest.raises(NetcError) as err:
        get_backend(bad)
    assert err.value.message == f"unknown device '{bad}'"
    assert "cpu, cuda or cuda:N" in err.value.hint


def test_cuda_without_cupy(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)      # import cupy raises ModuleNotFoundError
    with pytest.raises(NetcError) as err:
        get_backend("cuda")
    assert err.value.message == "device 'cuda' is not available: the CUDA backend needs CuPy, which is not installed"
    assert "pip install 'netc[cuda]'" in err.value.hint


class _BrokenCupy(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """`import cupy` finds a package whose CUDA libraries do not load (CuPy says so with ImportError)."""

    def find_spec(self, name, path=None, target=None):
        if name == "cupy":
            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise ImportError("libcudart.so.12: cannot open shared object file: No such file or directory")


def test_cuda_with_a_cupy_that_cannot_load(monkeypatch):
    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_BrokenCupy()] + sys.meta_path)
    with pytest.raises(NetcError) as err:
        get_backend("cuda")
    assert err.value.message == ("device 'cuda' is not available: the CUDA backend needs CuPy, which cannot be "
                                 "loaded (ImportError: libcudart.so.12: cannot open shared object file: "
                                 "No such file or directory)")
    assert "cupy-cudaXXx" in err.value.hint


def fake_cupy(count=None, error=None):
    """A module with the parts of CuPy get_backend and Backend use, on `count` GPUs."""
    used = []

    class Device:
        def __init__(self, index):
            self.index = index

        def use(self):
            used.append(self.index)

        def synchronize(self):
            used.append(("sync", self.index))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def get_device_count():
        if error is not None:
            raise error
        return count

    runtime = types.SimpleNamespace(
        getDeviceCount=get_device_count,
        memGetInfo=lambda: (3 * 2**30, 80 * 2**30),
        getDeviceProperties=lambda i: {"name": b"Fake GPU"},
    )
    pool = types.SimpleNamespace(free_bytes=lambda: 2**20)
    module = types.ModuleType("cupy")
    module.__version__ = "99.0"
    module.cuda = types.SimpleNamespace(runtime=runtime, Device=Device)
    module.get_default_memory_pool = lambda: pool
    module.asarray = lambda a, dtype=None: ("on gpu", np.asarray(a, dtype=dtype))
    module.asnumpy = lambda a: a[1]
    return module, used


class CUDARuntimeError(RuntimeError):
    pass


def refusal(monkeypatch, device: str, **fake) -> NetcError:
    """The NetcError get_backend(device) raises over fake_cupy(**fake)."""
    module, _ = fake_cupy(**fake)
    monkeypatch.setitem(sys.modules, "cupy", module)
    with pytest.raises(NetcError) as err:
        get_backend(device)
    return err.value


def test_cuda_without_a_driver(monkeypatch):
    err = refusal(monkeypatch, "cuda",
                  error=CUDARuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient"))
    assert err.message == ("device 'cuda' is not available: CUDA is not usable here (CUDARuntimeError: "
                           "cudaErrorInsufficientDriver: CUDA driver version is insufficient)")
    assert "--device cpu" in err.hint


def test_cuda_with_no_gpu(monkeypatch):
    err = refusal(monkeypatch, "cuda:0", count=0)
    assert err.message == "device 'cuda:0' is not available: CUDA found no GPU on this machine"


def test_gpu_index_out_of_range_names_how_many_there_are(monkeypatch):
    err = refusal(monkeypatch, "cuda:1", count=1)
    assert err.message == "device 'cuda:1' is not available: this machine has 1 GPU"
    assert err.hint == "give --device cuda:0"
    err = refusal(monkeypatch, "cuda:7", count=2)
    assert err.message == "device 'cuda:7' is not available: this machine has 2 GPUs"
    assert err.hint == "give --device cuda:0 to cuda:1"


def test_a_cuda_backend_selects_its_gpu_and_uses_cupy(monkeypatch):
    module, used = fake_cupy(count=2)
    monkeypatch.setitem(sys.modules, "cupy", module)
    backend = get_backend("cuda:1")
    assert (backend.name, backend.device_index, backend.device) == ("cuda", 1, "cuda:1")
    assert backend.xp is module and backend.is_gpu
    assert used == [1]                                   # Device(1).use()
    on_gpu = backend.asarray([1.5, 2.5], np.float32)
    assert on_gpu[0] == "on gpu"
    back = backend.to_numpy(on_gpu)
    assert back.dtype == np.float32 and back.tolist() == [1.5, 2.5]
    assert backend.free_memory() == 3 * 2**30 + 2**20    # the device's free memory and the pool's unused
    backend.synchronize()
    assert used[-1] == ("sync", 1)
    assert backend.describe() == "cuda:1 (Fake GPU, CuPy 99.0)"
    assert get_backend("cuda").device_index == 0         # "cuda" is the first GPU


# --- the command line ----------------------------------------------------------------

TINY_NET = "input data [2, 3]\nr: ReLU()\n"


def _without_cupy(tmp_path):
    """An environment in which `import cupy` fails as where it is not installed, even
    on a machine that has it."""
    shadow = tmp_path / "shadow" / "cupy"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'cupy'\", name='cupy')\n")
    path = os.pathsep.join([str(tmp_path / "shadow")] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    return dict(os.environ, PYTHONPATH=path, PYTHONWARNINGS="ignore")


@pytest.mark.parametrize("mode", [[], ["--verify"], ["--infer", "--input", "data=x.npy"]])
def test_cli_device_cuda_without_cupy_exits_1_with_the_hint(tmp_path, mode):
    net = tmp_path / "tiny.net"
    net.write_text(TINY_NET)
    np.save(tmp_path / "x.npy", np.ones((2, 3), np.float32))
    res = subprocess.run([sys.executable, "-m", "netc", "run", str(net), "--device", "cuda", *mode],
                         capture_output=True, text=True, cwd=tmp_path, env=_without_cupy(tmp_path), timeout=120)
    assert res.returncode == 1
    assert "the CUDA backend needs CuPy" in res.stderr
    assert "hint: pip install 'netc[cuda]'" in res.stderr
    assert "Traceback" not in res.stderr and "not built yet" not in res.stderr


def test_cli_malformed_device(tmp_path):
    net = tmp_path / "tiny.net"
    net.write_text(TINY_NET)
    res = subprocess.run([sys.executable, "-m", "netc", "run", str(net), "--device", "gpu0"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    assert "unknown device 'gpu0'" in res.stderr and "cpu, cuda or cuda:N" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.gpu
def test_a_real_gpu():
    backend = get_backend("cuda")
    x = backend.asarray(np.arange(6).reshape(2, 3), np.float32)
    assert type(x).__module__.startswith("cupy")
    np.testing.assert_array_equal(backend.to_numpy(x * 2), np.arange(6).reshape(2, 3) * 2)
    assert backend.free_memory() > 0
    assert "CuPy" in backend.describe()
    count = backends._import_cupy().cuda.runtime.getDeviceCount()
    with pytest.raises(NetcError, match=f"this machine has {count} GPU"):
        get_backend(f"cuda:{count}")
