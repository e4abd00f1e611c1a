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
from gradcheck import record_layers  # noqa: E402

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


def compiled(tmp_path, text: str, phase: str):
    """The net of `text`, checked for `phase`, and float64 weights from its fillers."""
    from netc.compile import compile_net
    from netc.runtime.weights import init_weights

    path = tmp_path / "net.net"
    path.write_text(text)
    net = compile_net(str(path), phase)
    return net, init_weights(net, 0, kc.np.float64)


WHOLE_NET = """net Small
input data [2, 4, 13, 13]
input label [2]
conv1: Convolution(data, 6, kernel=3, pad=1, stride=2, group=2, weight=gaussian(std=0.3), bias=gaussian(std=0.1))
relu1: ReLU!
norm1: LRN(local_size=3, alpha=0.5, beta=0.75)
pool1: Pooling(MAX, kernel=3, stride=2)
conv2: Convolution(5, kernel=2, stride=1, dilation=2, weight=gaussian(std=0.3), bias=gaussian(std=0.1))
pool2: Pooling(AVE, kernel=2, stride=1, pad=1)
ip: InnerProduct(7, weight=gaussian(std=0.3), bias=gaussian(std=0.1))
loss: SoftmaxWithLoss(ip, label)
"""


@pytest.mark.parametrize("memory", ["arena", "separate"])
def test_a_whole_net_through_the_kernels_matches_the_array_code(launcher, tmp_path, memory):
    """The layers' binding of the kernels (what --device cuda runs): the same net, weights
    and batch through kernels/*.cu (on the host) and through the NumPy code, in float64:
    every output, the loss and every gradient agree; in the arena the kernels write
    into the plan's places."""
    np = kc.np
    from netc.runtime.backend import Backend
    from netc.runtime.executor import Executor

    net, weights = compiled(tmp_path, WHOLE_NET, "train")
    rng = np.random.default_rng(5)
    feeds = {"data": rng.normal(size=(2, 4, 13, 13)), "label": np.array([3.0, 6.0])}
    runs = []
    for backend in (Backend("cpu", np), Backend("host kernels", np, kernels=launcher)):
        ex = Executor(net, weights, backend=backend, dtype=np.float64, memory=memory)
        ex.force_backward = True
        ex.poison_dead = memory == "arena"
        seen = record_layers(ex)
        ex.forward(feeds)
        grads = ex.backward()
        runs.append((seen, ex.loss, grads, {k: np.array(v) for k, v in ex.diffs.items()}))
    (arrays, loss, grads, diffs), (k_arrays, k_loss, k_grads, k_diffs) = runs
    assert set(arrays) == set(k_arrays) and ("conv1", "backward") in arrays
    # relu1 is fused into conv1's kernel (netc.passes.fuse): conv1's output is relu1's
    assert (arrays[("conv1", "forward")][0] < 0).any()
    arrays[("conv1", "forward")] = arrays[("relu1", "forward")]
    for key, values in arrays.items():
        for want, got in zip(values, k_arrays[key]):
            assert (want is None) == (got is None), key
            if want is not None:
                kc.assert_close(got, want, np.float64, f"{key}")
    assert abs(k_loss - loss) <= 1e-12 * abs(loss)
    for name in grads:
        for want, got in zip(grads[name], k_grads[name]):
            kc.assert_close(got, want, np.float64, f"∂{name}")
    kc.assert_close(k_diffs["data"], diffs["data"], np.float64, "∂data")
    launched = {kernel for kernel, _, _ in launcher.launched}
    assert {"conv_forward_f64", "lrn_across_forward_f64", "max_pool_forward_f64", "ave_pool_backward_f64",
            "softmax_loss_backward_f64", "conv_backward_data_f64", "conv_backward_data_unit_f64"} <= launched


IN_THE_ARENA = """net InTheArena
input data [2, 4, 26, 26]
input label [2]
conv1: Convolution(data, 3, kernel=3, weight=gaussian(std=0.3), bias=gaussian(std=0.1)) ReLU!
norm1: LRN(local_size=3, alpha=0.5, beta=0.75)
pool1: Pooling(MAX, kernel=3, stride=2) -> pooled, mask
pool2: Pooling(pooled, AVE, kernel=2, stride=2)
ip: InnerProduct(7, weight=gaussian(std=0.3), bias=gaussian(std=0.1))
loss: SoftmaxWithLoss(ip, label)
prob: Softmax(ip)
"""


class CountingLauncher:
    """A launcher that notes every array it is asked to make."""

    def __init__(self, inner):
        self.inner, self.xp, self.made = inner, inner.xp, []

    def empty(self, shape, dtype):
        self.made.append(tuple(shape))
        return self.inner.empty(shape, dtype)

    def scratch(self, shape, dtype, slot):
        return self.inner.scratch(shape, dtype, slot)

    def __call__(self, *args, **kwargs):
        return self.inner(*args, **kwargs)


def test_the_kernels_run_inside_the_arena(launcher, tmp_path):
    """What --device cuda runs makes no array of its own: every kernel writes into the
    plan's places, its kept state (MAX's arg-max, LRN's scale, the probabilities and
    labels) and temporaries (the weight gradient's split sums, the loss terms) into
    the room the plan gave the layer for the kernels (LayerType.kernel_bytes), the
    weight gradients into the executor's diffs; and the results are those of the
    array code."""
    np = kc.np
    from netc.passes.memory import plan_memory
    from netc.runtime.backend import Backend
    from netc.runtime.executor import Executor

    net, weights = compiled(tmp_path, IN_THE_ARENA, "train")
    rng = np.random.default_rng(3)
    feeds = {"data": rng.normal(size=(2, 4, 26, 26)), "label": np.array([1.0, 5.0])}
    assert kc.cuda_kernels.conv_weight_partials_shape((2, 4, 26, 26), dict(net.layers[2].params)) is not None

    reference = Executor(net, weights, dtype=np.float64)
    want_blobs = {name: np.array(b) for name, b in reference.forward(feeds).items()}
    want = {name: [np.array(g) for g in grads] for name, grads in reference.backward().items()}

    counting = CountingLauncher(launcher)
    ex = Executor(net, weights, backend=Backend("host kernels", np, kernels=counting), dtype=np.float64)
    assert ex.plan.planned_bytes != plan_memory(net, dtype_bytes=8).planned_bytes   # the kernels' own plan
    for _ in range(2):
        counting.made.clear()
        blobs = {name: np.array(b) for name, b in ex.forward(feeds).items()}
        grads = ex.backward()
    assert counting.made == [], "a kernel made arrays of its own"
    assert ex.unplanned == {}
    assert abs(ex.loss - reference.loss) <= 1e-12 * abs(reference.loss)
    for name, values in want.items():
        for w, g in zip(values, grads[name]):
            kc.assert_close(g, w, np.float64, f"∂{name}")
    assert {"prob", "mask"} <= set(want_blobs)
    for name, value in want_blobs.items():
        kc.assert_close(blobs[name], value, np.float64, name)


def test_verify_checks_the_kernels_with_the_fused_relu(launcher, tmp_path):
    """`netc run --verify --device cuda` over the kernels: every output and gradient within
    tolerance, conv1's output (rectified by its kernel) against the reference's relu1."""
    from netc.runtime.backend import Backend
    from netc.runtime.verify import verify

    path = tmp_path / "small.net"
    path.write_text(WHOLE_NET)
    report = verify(str(path), Backend("host kernels", kc.np, kernels=launcher), train=True)
    assert report.ok, [row for row in report.rows if not row.ok]
    conv1 = next(row for row in report.rows if row.layer == "conv1" and row.kind == "output")
    assert conv1.name == "conv1 (with relu1, fused)" and conv1.error < 1e-5
    assert not report.notes


INFERENCE = """net Inference
input data [2, 4, 12, 12]
conv1: Convolution(data, 5, kernel=3, weight=gaussian(std=0.3), bias=gaussian(std=0.1)) ReLU!
norm1: LRN(local_size=3, alpha=0.5, beta=0.75)
within: LRN(local_size=3, alpha=0.5, beta=0.75, norm_region=WITHIN_CHANNEL)
pool1: Pooling(MAX, kernel=3, stride=2)
ip: InnerProduct(7, weight=gaussian(std=0.3))
prob: Softmax()
"""


def test_inference_keeps_nothing_for_a_backward(launcher, tmp_path):
    """In the test phase MAX pooling writes no arg-max and LRN no scale (their inference
    kernels), the plan holds no room for them, and the outputs are the array code's."""
    np = kc.np
    from netc.runtime.backend import Backend
    from netc.runtime.executor import Executor

    net, weights = compiled(tmp_path, INFERENCE, "test")
    feeds = {"data": np.random.default_rng(4).normal(size=(2, 4, 12, 12))}
    want = {name: np.array(b) for name, b in Executor(net, weights, dtype=np.float64).forward(feeds).items()}
    counting = CountingLauncher(launcher)
    ex = Executor(net, weights, backend=Backend("host kernels", np, kernels=counting), dtype=np.float64)
    assert not {b.name for b in ex.plan.buffers} & {"norm1:workspace", "within:workspace", "pool1:workspace"}
    launcher.launched.clear()
    for _ in range(2):
        counting.made.clear()
        got = ex.forward(feeds)
    assert counting.made == [] and ex.unplanned == {}
    launched = {kernel for kernel, _, _ in launcher.launched}
    assert {"max_pool_infer_f64", "lrn_across_infer_f64", "lrn_within_infer_f64"} <= launched
    assert not {"max_pool_forward_f64", "lrn_across_forward_f64", "lrn_within_forward_f64"} & launched
    for name, value in want.items():
        kc.assert_close(got[name], value, np.float64, name)


DIVIDER_CHECK = """#include "common.cuh"
extern "C" __global__ void divider_check(long long count, const long long* n, int divisor, int magic, int shift,
                                         long long* quotient) {
    const Divider by = make_divider(divisor, magic, shift);
    for (long long i = first_index(); i < count; i += grid_step()) {
        quotient[i] = by.quotient(n[i]);
    }
}
"""


def test_the_divider_of_common_cuh_divides_like_integer_division(tmp_path):
    """kernels/common.cuh's Divider with cuda_kernels.divider's magic numbers, against
    NumPy's floor division: every divisor shape (1, powers of two and their neighbours,
    the pooling sizes, the largest int) at the edges of each quotient, near 2^31 where
    the multiply-high path ends, and past it where the Divider divides."""
    np = kc.np
    from netc.runtime.cuda_kernels import divider

    source = tmp_path / "divider_check.cu"
    source.write_text(DIVIDER_CHECK)
    (tmp_path / "common.cuh").write_text((kc.KERNELS / "common.cuh").read_text())
    build = tmp_path / "build"
    build.mkdir()
    check = kc.HostLauncher(kc.build_host_libraries([source], build))
    rng = np.random.default_rng(3)
    divisors = {1, 2, 3, 5, 7, 9, 13, 27, 55, 169, 3 * 224 * 224, 2 ** 16 + 1, 2 ** 31 - 1}
    divisors |= {2 ** s + e for s in range(1, 31) for e in (-1, 0, 1)}
    divisors |= set(int(d) for d in rng.integers(1, 2 ** 31, 40))
    for d in sorted(divisors):
        magic, shift = divider(d)
        q = rng.integers(0, (2 ** 31 - 1) // d + 1, 64)
        n = np.concatenate([q * d, q * d + d - 1, q * d - 1, [0, 1, d - 1, d, d + 1],
                            2 ** 31 - 1 - np.arange(8), rng.integers(0, 2 ** 31, 64),
                            [2 ** 31, 2 ** 31 + d, 2 ** 40 + 5]])
        n = n[n >= 0].astype(np.int64)
        out = np.zeros(n.size, dtype=np.int64)
        check("divider_check", "divider_check", n.size,
              (np.int64(n.size), n, np.int32(d), np.int32(magic), np.int32(shift), out))
        wrong = np.flatnonzero(out != n // d)
        assert wrong.size == 0, f"{n[wrong[0]]} / {d}: {out[wrong[0]]}, not {n[wrong[0]] // d}"
