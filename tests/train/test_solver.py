"""Caffe's solvers: every lr policy and update rule against its formula written out
here in plain Python floats, the order clip → normalize → regularize → update,
shared and frozen blobs, snapshots of the history, steps that allocate nothing the
size of a blob (long blobs updated slice by slice, bit for bit as whole), and the
settings a user can get wrong."""
from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

from netc.errors import NetcError, Span
from netc.ir import Layer, Net, ParamSpec, SolverSpec, frozen
from netc.lang.parser import parse_text
from netc.passes.expand import expand
from netc.train import solver as solver_module
from netc.train.solver import Solver, learning_rate, scratch_bytes, solver_settings


def layer(name, type="InnerProduct", specs=()):
    return Layer(name, type, (), (), frozen(), param_specs=tuple(specs))


def make_net(*layers):
    return Net("t", "train", tuple(layers), "t.net")


def spec(type="SGD", **fields):
    return SolverSpec(type, frozen(fields), Span("t.net", 9, 1))


def settings(**fields):
    return solver_settings(spec(**fields))


# ---------------------------------------------------------------------------
# Learning-rate policies
# ---------------------------------------------------------------------------

LR_CASES = [
    (dict(lr_policy="fixed", base_lr=0.1), {0: 0.1, 7: 0.1, 10**6: 0.1}),
    (dict(lr_policy="step", base_lr=0.1, gamma=0.5, stepsize=3),
     {0: 0.1, 2: 0.1, 3: 0.05, 5: 0.05, 6: 0.025, 10: 0.0125}),
    (dict(lr_policy="exp", base_lr=0.1, gamma=0.9), {0: 0.1, 1: 0.09, 2: 0.081, 5: 0.1 * 0.9 ** 5}),
    (dict(lr_policy="inv", base_lr=0.01, gamma=1e-4, power=0.75),
     {0: 0.01, 100: 0.01 * 1.01 ** -0.75, 10000: 0.01 * 2.0 ** -0.75}),
    (dict(lr_policy="multistep", base_lr=1.0, gamma=0.1, stepvalue=(2, 5, 9)),
     {0: 1.0, 1: 1.0, 2: 0.1, 4: 0.1, 5: 0.01, 8: 0.01, 9: 0.001, 1000: 0.001}),
    (dict(lr_policy="poly", base_lr=0.2, power=2.0, max_iter=10), {0: 0.2, 5: 0.05, 9: 0.002, 10: 0.0}),
    (dict(lr_policy="poly", base_lr=0.2, power=0.5, max_iter=100), {0: 0.2, 75: 0.1, 100: 0.0}),
    (dict(lr_policy="sigmoid", base_lr=0.4, gamma=0.5, stepsize=10),
     {10: 0.2, 8: 0.4 / (1 + math.e), 12: 0.4 / (1 + 1 / math.e), 0: 0.4 / (1 + math.e ** 5)}),
    (dict(lr_policy="sigmoid", base_lr=0.4, gamma=-0.5, stepsize=10), {10: 0.2, 12: 0.4 / (1 + math.e)}),
]


@pytest.mark.parametrize("fields, expected", LR_CASES, ids=[f"{c[0]['lr_policy']}-{i}" for i, c in enumerate(LR_CASES)])
def test_lr_policy(fields, expected):
    s = settings(**fields)
    for iteration, rate in expected.items():
        assert learning_rate(s, iteration) == pytest.approx(rate, rel=1e-12, abs=1e-15), iteration


def test_settings_fill_defaults_and_keep_the_user_values():
    s = settings(base_lr=0.5, momentum=0.9)
    assert s["type"] == "SGD"
    assert (s["base_lr"], s["momentum"], s["momentum2"], s["delta"], s["rms_decay"]) == (0.5, 0.9, 0.999, 1e-8, 0.99)
    assert (s["lr_policy"], s["regularization_type"], s["iter_size"], s["clip_gradients"]) == ("fixed", "L2", 1, -1.0)


def test_settings_from_a_net_solver_block():
    net = expand(parse_text("input data [1, 3]\n"
                            "solver SGD(base_lr=0.01, momentum=0.9, weight_decay=5e-4, "
                            "lr_policy=inv(gamma=1e-4, power=0.75), max_iter=10000)\n", "/w/l.net"), "train")
    s = solver_settings(net.solver)
    assert (s["momentum"], s["weight_decay"], s["max_iter"]) == (0.9, 5e-4, 10000)
    assert learning_rate(s, 5000) == pytest.approx(0.01 * 1.5 ** -0.75, rel=1e-12)


# ---------------------------------------------------------------------------
# Update rules against the formulas, element by element in Python floats
# ---------------------------------------------------------------------------

def step_lr(it):
    """The policy every rule test uses: step, base 0.1, γ 0.5 every 2 iterations."""
    return 0.1 * 0.5 ** (it // 2)


def sign(x):
    return (x > 0) - (x < 0)


def sgd_ref(h, g, rate, s, t):
    h[0] = s["momentum"] * h[0] + rate * g
    return h[0]


def nesterov_ref(h, g, rate, s, t):
    old = h[0]
    h[0] = s["momentum"] * h[0] + rate * g
    return (1 + s["momentum"]) * h[0] - s["momentum"] * old


def adagrad_ref(h, g, rate, s, t):
    h[0] += g * g
    return rate * g / (math.sqrt(h[0]) + s["delta"])


def rmsprop_ref(h, g, rate, s, t):
    h[0] = s["rms_decay"] * h[0] + (1 - s["rms_decay"]) * g * g
    return rate * g / (math.sqrt(h[0]) + s["delta"])


def adadelta_ref(h, g, rate, s, t):
    rho, d = s["momentum"], s["delta"]
    h[0] = rho * h[0] + (1 - rho) * g * g
    dx = g * math.sqrt((h[1] + d) / (h[0] + d))
    h[1] = rho * h[1] + (1 - rho) * dx * dx
    return rate * dx


def adam_ref(h, g, rate, s, t):
    b1, b2 = s["momentum"], s["momentum2"]
    h[0] = b1 * h[0] + (1 - b1) * g
    h[1] = b2 * h[1] + (1 - b2) * g * g
    return rate * math.sqrt(1 - b2 ** t) / (1 - b1 ** t) * h[0] / (math.sqrt(h[1]) + s["delta"])


RULES = {
    "SGD": (sgd_ref, dict(momentum=0.9), ("velocity",)),
    "Nesterov": (nesterov_ref, dict(momentum=0.8), ("velocity",)),
    "AdaGrad": (adagrad_ref, dict(delta=1e-3), ("grad_sq_sum",)),
    "RMSProp": (rmsprop_ref, dict(rms_decay=0.9, delta=1e-3), ("grad_sq_mean",)),
    "AdaDelta": (adadelta_ref, dict(momentum=0.95, delta=1e-4), ("grad_sq_mean", "update_sq_mean")),
    "Adam": (adam_ref, dict(momentum=0.9, momentum2=0.99, delta=1e-3), ("m", "v")),
}

# (regularization, weight_decay, clip_gradients, iter_size). The gradients below have
# a global norm of about 10, so clip 4 rescales them and clip 1000 does not.
VARIANTS = {
    "L2-noclip-iter2": ("L2", 0.05, 1000.0, 2),
    "L1-clipped": ("L1", 0.05, 4.0, 1),
    "nodecay-clipped-iter3": ("L2", 0.0, 4.0, 3),
}

# Blobs and their (lr_mult, decay_mult): a weight, a Caffe-style bias (2, 0), a
# second layer's weight (0.5, 2).
MULTS = [(1.0, 1.0), (2.0, 0.0), (0.5, 2.0)]
SHAPES = [(2, 3), (2,), (3, 2)]


def rule_setup(rule, variant, dtype=np.float64):
    reg, wd, clip, iter_size = VARIANTS[variant]
    fields = dict(base_lr=0.1, lr_policy="step", gamma=0.5, stepsize=2, regularization_type=reg,
                  weight_decay=wd, clip_gradients=clip, iter_size=iter_size, **RULES[rule][1])
    net = make_net(layer("ip1", specs=[ParamSpec(lr_mult=1.0, decay_mult=1.0), ParamSpec(lr_mult=2.0, decay_mult=0.0)]),
                   layer("relu", "ReLU"),
                   layer("ip2", specs=[ParamSpec(lr_mult=0.5, decay_mult=2.0)]))
    rng = np.random.default_rng(7)
    initial = [rng.normal(size=shape) for shape in SHAPES]
    initial[0][0, 0] = 0.0          # sign(0) = 0 under L1
    grads = [[rng.normal(scale=3.0, size=shape) for shape in SHAPES] for _ in range(4)]
    return fields, net, initial, grads


def as_weights(blobs, dtype=np.float64):
    return {"ip1": [blobs[0].astype(dtype), blobs[1].astype(dtype)], "ip2": [blobs[2].astype(dtype)]}


def as_grads(blobs):
    return {"ip1": [blobs[0], blobs[1]], "ip2": [blobs[2]]}


def reference(rule, fields, initial, grad_seq):
    """The weights and history after each iteration, in Python floats."""
    s = solver_settings(spec(rule, **fields))
    update_of = RULES[rule][0]
    w = [list(map(float, a.ravel())) for a in initial]
    hist = [[[0.0, 0.0] for _ in blob] for blob in w]
    rates = []
    for it, grads in enumerate(grad_seq):
        lr = step_lr(it)
        rates.append(lr)
        flat = [list(map(float, g.ravel())) for g in grads]
        norm = math.sqrt(sum(x * x for blob in flat for x in blob))
        clip = s["clip_gradients"]
        scale = clip / norm if 0 < clip < norm else 1.0
        for b, (lr_mult, decay_mult) in enumerate(MULTS):
            for j in range(len(w[b])):
                g = flat[b][j] * scale / s["iter_size"]
                decay = s["weight_decay"] * decay_mult
                g += decay * (w[b][j] if s["regularization_type"] == "L2" else sign(w[b][j]))
                w[b][j] -= update_of(hist[b][j], g, lr * lr_mult, s, it + 1)
    return w, hist, rates


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("rule", RULES)
def test_rule_follows_its_formula(rule, variant):
    fields, net, initial, grad_seq = rule_setup(rule, variant)
    weights = as_weights(initial)
    solver = Solver(spec(rule, **fields), net, weights)
    rates = [solver.step(as_grads(g), it) for it, g in enumerate(grad_seq)]
    w_ref, hist_ref, rates_ref = reference(rule, fields, initial, grad_seq)
    assert rates == pytest.approx(rates_ref, rel=1e-15)
    got = [weights["ip1"][0], weights["ip1"][1], weights["ip2"][0]]
    for b, array in enumerate(got):
        np.testing.assert_allclose(array.ravel(), w_ref[b], rtol=1e-12, atol=1e-14)
    state = solver.state()
    keys = ["ip1/0", "ip1/1", "ip2/0"]
    names = RULES[rule][2]
    assert set(state) == {f"{k}/{n}" for k in keys for n in names}
    for b, key in enumerate(keys):
        for i, name in enumerate(names):
            np.testing.assert_allclose(state[f"{key}/{name}"].ravel(), [h[i] for h in hist_ref[b]],
                                       rtol=1e-12, atol=1e-14)


def test_clipping_really_happens_in_the_clipped_variants():
    fields, net, initial, grad_seq = rule_setup("SGD", "L1-clipped")
    norms = [math.sqrt(sum(float((g * g).sum()) for g in grads)) for grads in grad_seq]
    assert min(norms) > fields["clip_gradients"] * 1.5
    fields, net, initial, grad_seq = rule_setup("SGD", "L2-noclip-iter2")
    assert max(norms) < fields["clip_gradients"]


@pytest.mark.parametrize("rule", RULES)
def test_float32_weights_stay_float32(rule):
    fields, net, initial, grad_seq = rule_setup(rule, "L2-noclip-iter2")
    weights = as_weights(initial, np.float32)
    ids = [id(a) for a in weights["ip1"] + weights["ip2"]]
    solver = Solver(spec(rule, **fields), net, weights)
    for it, grads in enumerate(grad_seq):
        solver.step(as_grads([g.astype(np.float32) for g in grads]), it)
    assert [id(a) for a in weights["ip1"] + weights["ip2"]] == ids      # updated in place
    assert all(a.dtype == np.float32 for a in weights["ip1"] + weights["ip2"])
    assert all(a.dtype == np.float32 for a in solver.state().values())
    w_ref, _, _ = reference(rule, fields, [a.astype(np.float32).astype(np.float64) for a in initial],
                            [[g.astype(np.float32).astype(np.float64) for g in grads] for grads in grad_seq])
    np.testing.assert_allclose(weights["ip1"][0].ravel(), w_ref[0], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------
# Single steps small enough to check by hand
# ---------------------------------------------------------------------------

def one_blob(value, lr_mult=1.0, decay_mult=1.0, dtype=np.float64):
    net = make_net(layer("ip", specs=[ParamSpec(lr_mult=lr_mult, decay_mult=decay_mult)]))
    return net, {"ip": [np.array(value, dtype=dtype)]}


@pytest.mark.parametrize("clip, expected", [(1.0, [-0.6, -0.8]), (5.0, [-3.0, -4.0]), (10.0, [-3.0, -4.0]),
                                            (-1.0, [-3.0, -4.0])])
def test_clip_scales_to_the_threshold_only_above_it(clip, expected):
    net, weights = one_blob([0.0, 0.0])
    Solver(spec(base_lr=1.0, clip_gradients=clip), net, weights).step({"ip": [np.array([3.0, 4.0])]}, 0)
    np.testing.assert_allclose(weights["ip"][0], expected, rtol=1e-15)


def test_clip_norm_is_global_over_blobs_and_comes_before_iter_size():
    net = make_net(layer("a"), layer("b"))
    weights = {"a": [np.zeros(1)], "b": [np.zeros(1)]}
    solver = Solver(spec(base_lr=1.0, clip_gradients=1.0, iter_size=2), net, weights)
    grads = {"a": [np.array([3.0])], "b": [np.array([4.0])]}
    solver.step(grads, 0)
    # norm 5 (not 2.5 after dividing by iter_size): scale 1/5, then /2
    np.testing.assert_allclose([weights["a"][0][0], weights["b"][0][0]], [-0.3, -0.4], rtol=1e-15)
    np.testing.assert_array_equal(grads["a"][0], [3.0])       # the caller's gradients are left alone


def test_iter_size_divides_the_summed_gradient():
    net, weights = one_blob([1.0])
    Solver(spec(base_lr=1.0, iter_size=4), net, weights).step({"ip": [np.array([2.0])]}, 0)
    assert weights["ip"][0][0] == 0.5


def test_regularization_l2_and_l1_with_decay_mult():
    net, weights = one_blob([2.0, -3.0, 0.0], decay_mult=0.5)
    Solver(spec(base_lr=1.0, weight_decay=0.2), net, weights).step({"ip": [np.zeros(3)]}, 0)
    np.testing.assert_allclose(weights["ip"][0], [2.0 - 0.2, -3.0 + 0.3, 0.0], rtol=1e-15)
    net, weights = one_blob([2.0, -3.0, 0.0], decay_mult=0.5)
    Solver(spec(base_lr=1.0, weight_decay=0.2, regularization_type="L1"), net, weights).step(
        {"ip": [np.zeros(3)]}, 0)
    np.testing.assert_allclose(weights["ip"][0], [2.0 - 0.1, -3.0 + 0.1, 0.0], rtol=1e-15)


def test_sgd_velocity_holds_the_learning_rate():
    # lr 1 then 0.1, μ 0.5, g 1: Caffe's V = 1, then 0.5·1 + 0.1·1 = 0.6, so W = −1.6.
    # (PyTorch's form, V = 0.5·1 + 1 and W −= 0.1·V, would give −1.15.)
    net, weights = one_blob([0.0])
    solver = Solver(spec(base_lr=1.0, momentum=0.5, lr_policy="step", gamma=0.1, stepsize=1), net, weights)
    assert solver.step({"ip": [np.array([1.0])]}, 0) == 1.0
    assert solver.step({"ip": [np.array([1.0])]}, 1) == pytest.approx(0.1)
    assert weights["ip"][0][0] == pytest.approx(-1.6, rel=1e-15)


def test_adam_first_step_moves_by_the_rate():
    # t = 1: m = (1−β1)g, v = (1−β2)g², correction √(1−β2)/(1−β1): update ≈ lr·sign(g)
    net, weights = one_blob([0.0, 0.0])
    Solver(spec("Adam", base_lr=0.01, momentum=0.9, delta=1e-12), net, weights).step(
        {"ip": [np.array([5.0, -0.001])]}, 0)
    np.testing.assert_allclose(weights["ip"][0], [-0.01, 0.01], rtol=1e-6)


# ---------------------------------------------------------------------------
# Which blobs are updated
# ---------------------------------------------------------------------------

def test_shared_blob_is_updated_once_with_the_owners_multipliers():
    shared = np.array([1.0, 2.0])
    net = make_net(layer("a", specs=[ParamSpec("w", lr_mult=2.0, decay_mult=0.0)]),
                   layer("b", specs=[ParamSpec("w", lr_mult=5.0, decay_mult=1.0)]))
    weights = {"a": [shared], "b": [shared]}
    total = np.array([1.0, 1.0])           # the executor gives every user the summed gradient
    solver = Solver(spec(base_lr=0.1, weight_decay=0.5), net, weights)
    solver.step({"a": [total], "b": [total]}, 0)
    np.testing.assert_allclose(shared, [1.0 - 0.2, 2.0 - 0.2], rtol=1e-15)
    assert list(solver.state()) == ["a/0/velocity"]


def test_shared_blob_takes_its_gradient_from_whichever_user_has_one():
    shared = np.array([1.0])
    net = make_net(layer("a", specs=[ParamSpec("w")]), layer("b", specs=[ParamSpec("w")]))
    solver = Solver(spec(base_lr=1.0), net, {"a": [shared], "b": [shared]})
    solver.step({"a": [None], "b": [np.array([0.25])]}, 0)
    assert shared[0] == 0.75


def test_frozen_blobs_batchnorm_statistics_and_missing_gradients_are_untouched():
    net = make_net(layer("bn", "BatchNorm"),
                   layer("frozen", specs=[ParamSpec(lr_mult=0.0), ParamSpec()]),
                   layer("nograd"), layer("nonelist"), layer("noentry"), layer("live"))
    weights = {"bn": [np.ones(2), np.ones(2), np.ones(1)], "frozen": [np.ones(2), np.ones(2)],
               "nograd": [np.ones(2)], "nonelist": [np.ones(2)], "noentry": [np.ones(2)], "live": [np.zeros(1)]}
    before = {k: [a.copy() for a in v] for k, v in weights.items()}
    huge = np.full(2, 1e6)
    grads = {"bn": [huge, huge, np.full(1, 1e6)], "frozen": [huge, np.array([3.0, 0.0])],
             "nograd": [None], "nonelist": None, "live": [np.array([4.0])]}
    solver = Solver(spec(base_lr=1.0, momentum=0.9, weight_decay=0.1, clip_gradients=1.0), net, weights)
    solver.step(grads, 0)
    for name in ("bn", "nograd", "nonelist", "noentry"):
        for a, b in zip(weights[name], before[name]):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(weights["frozen"][0], before["frozen"][0])
    # the clip norm counts only updated blobs: √(3² + 4²) = 5, not the frozen 1e6
    np.testing.assert_allclose(weights["frozen"][1], [1.0 - 0.6 - 0.1, 1.0 - 0.1], rtol=1e-15)
    np.testing.assert_allclose(weights["live"][0], [-0.8], rtol=1e-15)
    assert sorted(solver.state()) == ["frozen/1/velocity", "live/0/velocity"]


def test_with_the_executors_gradients_of_a_compiled_net(tmp_path):
    from netc.compile import compile_net
    from netc.runtime.executor import Executor
    from netc.runtime.weights import init_weights
    path = tmp_path / "n.net"
    path.write_text("input data [2, 2, 4, 4]\ninput frozen_target [2, 3, 2, 2]\n"
                    "left: Convolution(data, 3, kernel=3, weight=xavier, share=[w, b])\n"
                    "right: Convolution(data, 3, kernel=3, weight=xavier, share=[w, b], lr_mult=[4, 4])\n"
                    "both: Eltwise(left, right, SUM)\n"
                    "bn: BatchNorm()!\n"
                    "frozen: Convolution(3, kernel=1, weight=xavier, lr_mult=[0, 1])\n"
                    "e: EuclideanLoss(frozen, frozen_target)\n")
    net = compile_net(str(path), phase="train")
    executor = Executor(net, init_weights(net, seed=3, dtype=np.float64), dtype=np.float64)
    rng = np.random.default_rng(0)
    executor.forward({"data": rng.normal(size=(2, 2, 4, 4)), "frozen_target": rng.normal(size=(2, 3, 2, 2))})
    grads = executor.backward()
    weights = executor.weights
    assert weights["left"][0] is weights["right"][0]
    before = {k: [a.copy() for a in v] for k, v in weights.items()}
    solver = Solver(spec(base_lr=0.5), net, weights)
    solver.step(grads, 0)
    # shared: once, with the owner's lr_mult 1 and the gradient summed over both users
    np.testing.assert_allclose(weights["left"][0], before["left"][0] - 0.5 * grads["left"][0], rtol=1e-13)
    np.testing.assert_allclose(weights["frozen"][1], before["frozen"][1] - 0.5 * grads["frozen"][1], rtol=1e-13)
    for name, i in [("bn", 0), ("bn", 1), ("bn", 2), ("frozen", 0)]:
        np.testing.assert_array_equal(weights[name][i], before[name][i])
    assert sorted(solver.state()) == ["frozen/1/velocity", "left/0/velocity", "left/1/velocity"]


# ---------------------------------------------------------------------------
# No allocation inside the training loop
# ---------------------------------------------------------------------------

STEADY_VARIANTS = {
    "L2": dict(weight_decay=5e-4),
    "L1": dict(weight_decay=5e-4, regularization_type="L1"),
    "clipped": dict(clip_gradients=1.0),        # the gradients' norm is some hundreds
}


def traced_steps(solver, grads, iterations):
    """Per step, the tracemalloc peak beyond what was allocated when it began, and
    what it left allocated."""
    peaks, kept = [], []
    tracemalloc.start()
    try:
        for it in range(iterations):
            tracemalloc.reset_peak()
            began = tracemalloc.get_traced_memory()[0]
            solver.step(grads, it)
            current, peak = tracemalloc.get_traced_memory()
            peaks.append(peak - began)
            kept.append(current - began)
    finally:
        tracemalloc.stop()
    return peaks, kept


@pytest.mark.parametrize("slice_elements", [None, 4096], ids=["whole", "sliced"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant", STEADY_VARIANTS)
@pytest.mark.parametrize("rule", RULES)
def test_steps_after_the_first_allocate_nothing_blob_sized(rule, variant, dtype, slice_elements, monkeypatch):
    # Three blobs of 256 KiB and a small one: one temporary of a blob's size would
    # peak at 256 KiB, four times the bound. With SLICE at 4096 elements they are
    # updated in 16 or 32 slices.
    if slice_elements:
        monkeypatch.setattr(solver_module, "SLICE", slice_elements)
    shapes = [(256, 1024 // np.dtype(dtype).itemsize), (64, 64, 64 // np.dtype(dtype).itemsize),
              (256 * 1024 // np.dtype(dtype).itemsize,), (10,)]
    net = make_net(layer("ip1", specs=[ParamSpec(), ParamSpec(lr_mult=2.0, decay_mult=0.0)]),
                   layer("ip2", specs=[ParamSpec(), ParamSpec(lr_mult=2.0, decay_mult=0.0)]))
    rng = np.random.default_rng(3)
    blobs = [rng.normal(size=shape).astype(dtype) for shape in shapes]
    blobs[0][0, :8] = 0.0                       # sign(0) under L1
    weights = {"ip1": blobs[:2], "ip2": blobs[2:]}
    grads = {"ip1": [rng.normal(size=s).astype(dtype) for s in shapes[:2]],
             "ip2": [rng.normal(size=s).astype(dtype) for s in shapes[2:]]}
    before = {name: [g.copy() for g in arrays] for name, arrays in grads.items()}
    fields = dict(RULES[rule][1], base_lr=0.01, **STEADY_VARIANTS[variant])
    solver = Solver(spec(rule, **fields), net, weights)
    peaks, _ = traced_steps(solver, grads, 4)
    assert max(peaks[1:]) < 64 * 1024, peaks
    for name in grads:                          # the caller's gradients are left alone
        for g, kept in zip(grads[name], before[name]):
            np.testing.assert_array_equal(g, kept)
    assert all(np.isfinite(a).all() for a in blobs)


# Blobs longer than a slice of 256 elements (one of 11 slices, one of 2 with a short
# last slice, one a slice and one element long), one exactly a slice, a short one.
SLICED_SHAPES = [(40, 70), (300,), (257,), (256,), (5, 7)]
SLICED_VARIANTS = dict(VARIANTS, plain=("L2", 0.0, -1.0, 1))


def steps_with_slice(monkeypatch, slice_elements, rule, variant, dtype, order="C"):
    """Weights and history after 4 steps on SLICED_SHAPES, with SLICE as given."""
    monkeypatch.setattr(solver_module, "SLICE", slice_elements)
    reg, wd, clip, iter_size = SLICED_VARIANTS[variant]
    fields = dict(base_lr=0.1, lr_policy="step", gamma=0.5, stepsize=2, regularization_type=reg,
                  weight_decay=wd, clip_gradients=clip, iter_size=iter_size, **RULES[rule][1])
    mults = [(1.0, 1.0), (2.0, 0.0), (0.5, 2.0), (1.0, 1.0), (1.0, 1.0)]
    net = make_net(*(layer(f"ip{i}", specs=[ParamSpec(lr_mult=lr, decay_mult=decay)])
                     for i, (lr, decay) in enumerate(mults)))
    rng = np.random.default_rng(5)
    weights = {f"ip{i}": [np.asarray(rng.normal(size=shape), dtype, order=order)]
               for i, shape in enumerate(SLICED_SHAPES)}
    weights["ip0"][0][0, :3] = 0.0              # sign(0) under L1
    solver = Solver(spec(rule, **fields), net, weights)
    for it in range(4):
        # the norm is some 70 per step: clip 4 rescales
        solver.step({f"ip{i}": [rng.normal(scale=0.5, size=shape).astype(dtype)]
                     for i, shape in enumerate(SLICED_SHAPES)}, it)
    return weights, solver.state()


def assert_same_bits(got, expected):
    weights, state = got
    weights_expected, state_expected = expected
    for name in weights_expected:
        assert weights[name][0].dtype == weights_expected[name][0].dtype
        assert weights[name][0].tobytes() == weights_expected[name][0].tobytes(), name
    assert state.keys() == state_expected.keys()
    for name in state_expected:
        assert state[name].tobytes() == state_expected[name].tobytes(), name


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant", SLICED_VARIANTS)
@pytest.mark.parametrize("rule", RULES)
def test_slices_update_bit_for_bit_as_whole_blobs(rule, variant, dtype, monkeypatch):
    # Every rule is elementwise, and the clip norm's sums of squares are split where
    # NumPy's pairwise sum splits the whole gradient: slicing changes no bit.
    whole = steps_with_slice(monkeypatch, 1 << 30, rule, variant, dtype)
    assert_same_bits(steps_with_slice(monkeypatch, 256, rule, variant, dtype), whole)


@pytest.mark.parametrize("rule", RULES)
def test_strided_weights_longer_than_a_slice_are_updated_whole(rule, monkeypatch):
    # A Fortran-ordered weight has no flat view: reshape(-1) would copy it and the
    # update would be lost; it is updated whole, in the same arithmetic.
    contiguous = steps_with_slice(monkeypatch, 256, rule, "L1-clipped", np.float32)
    strided = steps_with_slice(monkeypatch, 256, rule, "L1-clipped", np.float32, order="F")
    assert strided[0]["ip0"][0].flags.f_contiguous and not strided[0]["ip0"][0].flags.c_contiguous
    assert_same_bits(strided, contiguous)


SCRATCH_NET = """\
input data [2, 3, 8, 8]
input target [2, 5]
conv: Convolution(data, 4, kernel=3, weight=xavier, decay_mult=[DECAY, 0])
bn: BatchNorm()
ip: InnerProduct(5, weight=xavier, lr_mult=[0, 1], decay_mult=[1, DECAY])
e: EuclideanLoss(ip, target)
solver SOLVER(base_lr=0.01, weight_decay=WD)
"""


@pytest.mark.parametrize("slice_elements, elements", [(None, 108), (64, 64)], ids=["whole", "sliced"])
@pytest.mark.parametrize("solver_type, weight_decay, decay_mult, arrays", [
    ("SGD", 0.0, 1, 1), ("SGD", 5e-4, 1, 2), ("SGD", 5e-4, 0, 1), ("Nesterov", 0.0, 1, 2),
    ("AdaDelta", 5e-4, 1, 3), ("Adam", 5e-4, 1, 2)])
def test_scratch_bytes_is_what_the_first_step_keeps_beside_the_history(tmp_path, monkeypatch, solver_type,
                                                                         weight_decay, decay_mult, arrays,
                                                                         slice_elements, elements):
    from netc.compile import compile_net
    from netc.runtime.weights import init_weights
    if slice_elements:
        monkeypatch.setattr(solver_module, "SLICE", slice_elements)
    path = tmp_path / "n.net"
    path.write_text(SCRATCH_NET.replace("SOLVER", solver_type).replace("WD", str(weight_decay))
                    .replace("DECAY", str(decay_mult)))
    net = compile_net(str(path), phase="train")
    # the frozen ip weight (5×144) is the largest blob, BatchNorm's statistics are not
    # learned: the scratch is sized by the conv weight (4×3×3×3), or by a shorter SLICE
    assert scratch_bytes(net, 8) == arrays * elements * 8
    weights = init_weights(net, seed=0, dtype=np.float64)
    rng = np.random.default_rng(0)
    grads = {name: [rng.normal(size=a.shape) for a in blobs] for name, blobs in weights.items()}
    solver = Solver(net.solver, net, weights)
    _, kept = traced_steps(solver, grads, 2)
    history = sum(a.nbytes for a in solver.state().values())
    assert 0 <= kept[0] - history - scratch_bytes(net, 8) < 2048      # and some Python objects
    assert kept[1] < 1024


# ---------------------------------------------------------------------------
# Snapshots of the history
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("rule", RULES)
def test_state_round_trip_continues_bit_identically(rule):
    fields, net, initial, grad_seq = rule_setup(rule, "L1-clipped")
    grad_seq = grad_seq + grad_seq[::-1]
    whole = as_weights(initial, np.float32)
    solver = Solver(spec(rule, **fields), net, whole)
    for it, grads in enumerate(grad_seq):
        solver.step(as_grads(grads), it)

    first = as_weights(initial, np.float32)
    half = Solver(spec(rule, **fields), net, first)
    for it, grads in enumerate(grad_seq[:3]):
        half.step(as_grads(grads), it)
    saved = {k: np.array(v) for k, v in half.state().items()}           # as a snapshot would hold them
    resumed_weights = {k: [a.copy() for a in v] for k, v in first.items()}
    resumed = Solver(spec(rule, **fields), net, resumed_weights)
    resumed.load_state(saved)
    for it, grads in enumerate(grad_seq[3:], start=3):
        resumed.step(as_grads(grads), it)
    for name in whole:
        for a, b in zip(resumed_weights[name], whole[name]):
            np.testing.assert_array_equal(a, b)
    for key, value in solver.state().items():
        np.testing.assert_array_equal(resumed.state()[key], value)


def stepped_adam():
    net, weights = one_blob([1.0, 2.0])
    solver = Solver(spec("Adam", momentum=0.9), net, weights)
    solver.step({"ip": [np.array([0.5, 0.5])]}, 0)
    return net, weights, solver.state()


def test_load_state_names_a_missing_entry():
    net, weights, state = stepped_adam()
    del state["ip/0/v"]
    with pytest.raises(NetcError, match="lacks 'ip/0/v'"):
        Solver(spec("Adam", momentum=0.9), net, weights).load_state(state)


def test_load_state_names_a_misshaped_entry():
    net, weights, state = stepped_adam()
    state["ip/0/m"] = np.zeros(3)
    with pytest.raises(NetcError, match=r"'ip/0/m' has shape \(3,\), the blob \(2,\)"):
        Solver(spec("Adam", momentum=0.9), net, weights).load_state(state)


def test_load_state_refuses_another_solvers_history():
    net, weights, state = stepped_adam()
    with pytest.raises(NetcError, match="'ip/0/m' matches no blob this SGD solver updates"):
        Solver(spec("SGD"), net, weights).load_state(state)


def test_load_state_refuses_to_drop_history_it_has():
    net, weights, state = stepped_adam()
    solver = Solver(spec("Adam", momentum=0.9), net, weights)
    solver.step({"ip": [np.array([0.5, 0.5])]}, 0)
    with pytest.raises(NetcError, match="lacks 'ip/0/m'"):
        solver.load_state({})


# ---------------------------------------------------------------------------
# Settings a user can get wrong, each located at the field written
# ---------------------------------------------------------------------------

BAD = [
    ("Adam", dict(momentum=1.0), "momentum", "momentum must be below 1 for Adam"),
    ("SGD", dict(momentum=1.5), "momentum", "momentum must be below 1 for SGD"),
    ("AdaDelta", dict(momentum=1.0), "momentum", "momentum must be below 1 for AdaDelta"),
    ("Adam", dict(momentum2=1.0), "momentum2", "momentum2 must be below 1"),
    ("AdaGrad", dict(momentum=0.9), "momentum", "AdaGrad takes no momentum"),
    ("RMSProp", dict(momentum=0.9), "momentum", "RMSProp takes no momentum"),
    ("RMSProp", dict(rms_decay=1.0), "rms_decay", "rms_decay must be below 1"),
    ("Adam", dict(delta=0.0), "delta", "Adam needs delta > 0"),
    ("SGD", dict(regularization_type="L3"), "regularization_type", "unknown regularization 'L3'"),
    ("SGD", dict(lr_policy="multistep", gamma=0.1, stepvalue=(10, 5)), "stepvalue", "stepvalues must increase"),
    ("SGD", dict(lr_policy="poly", power=1.0), "max_iter", "poly needs max_iter > 0"),
    ("SGD", dict(lr_policy="step", gamma=0.1), "lr_policy", "lr_policy step needs stepsize"),
    ("SGD", dict(lr_policy="cosine"), "lr_policy", "unknown lr_policy 'cosine'"),
    ("SGD", dict(clip_gradients=0.0), "clip_gradients", "clip_gradients 0"),
]


@pytest.mark.parametrize("type, fields, field, message", BAD, ids=[b[3] for b in BAD])
def test_bad_settings_are_located_at_their_field(type, fields, field, message):
    at = Span("t.net", 3, 7)
    with pytest.raises(NetcError, match=message) as err:
        solver_settings(SolverSpec(type, frozen(fields), Span("t.net", 1, 1), frozen({field: at})))
    assert err.value.span == at
    assert err.value.hint
    # without a span for the field, the solver block's own
    with pytest.raises(NetcError) as err:
        solver_settings(SolverSpec(type, frozen(fields), Span("t.net", 1, 1)))
    assert err.value.span == Span("t.net", 1, 1)


# ---------------------------------------------------------------------------
# Where Caffe and PyTorch agree
# ---------------------------------------------------------------------------

def torch_run(optimizer_of, initial, grad_seq):
    torch = pytest.importorskip("torch")
    params = [torch.tensor(a.copy(), dtype=torch.float64, requires_grad=True) for a in initial]
    optimizer = optimizer_of(torch, params)
    for grads in grad_seq:
        for p, g in zip(params, grads):
            p.grad = torch.tensor(g, dtype=torch.float64)
        optimizer.step()
    return [p.detach().numpy() for p in params]


def ours(rule, fields, initial, grad_seq):
    net = make_net(layer("ip1", specs=[ParamSpec(), ParamSpec()]), layer("ip2"))
    weights = as_weights(initial)
    solver = Solver(spec(rule, **fields), net, weights)
    for it, grads in enumerate(grad_seq):
        solver.step(as_grads(grads), it)
    return [weights["ip1"][0], weights["ip1"][1], weights["ip2"][0]]


@pytest.mark.optional
def test_sgd_momentum_matches_torch_at_a_constant_rate():
    # Caffe's V is lr times PyTorch's when lr never changes, so the weights agree.
    _, _, initial, grad_seq = rule_setup("SGD", "L2-noclip-iter2")
    theirs = torch_run(lambda torch, p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.01),
                       initial, grad_seq)
    mine = ours("SGD", dict(base_lr=0.05, momentum=0.9, weight_decay=0.01), initial, grad_seq)
    for a, b in zip(mine, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.optional
def test_adam_matches_torch_when_epsilon_is_negligible():
    # PyTorch adds ε to the corrected √v̂, Caffe to the uncorrected √v: equal as ε → 0.
    _, _, initial, grad_seq = rule_setup("Adam", "L2-noclip-iter2")
    theirs = torch_run(lambda torch, p: torch.optim.Adam(p, lr=0.01, betas=(0.9, 0.99), eps=1e-30,
                                                         weight_decay=0.01), initial, grad_seq)
    mine = ours("Adam", dict(base_lr=0.01, momentum=0.9, momentum2=0.99, delta=1e-30, weight_decay=0.01),
                initial, grad_seq)
    for a, b in zip(mine, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
