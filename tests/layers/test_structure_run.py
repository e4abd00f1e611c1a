"""Concat, Slice, Split, Flatten, Reshape, Eltwise, Silence and DummyData running: values
against hand-built arrays, backward by gradcheck, Eltwise's tie and zero semantics."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gradcheck import build_executor as build, gradcheck  # noqa: E402

from netc.layers import REGISTRY  # noqa: E402
from netc.runtime.backend import NUMPY, RunContext  # noqa: E402




def ctx(phase="train"):
    return RunContext(NUMPY, phase, np.float64)


def params(type_name, **given):
    spec = REGISTRY[type_name]
    values = {p.name: given.pop(p.name, p.default) for p in spec.params}
    assert not given
    return spec.normalize(values)


# --- Concat and Slice -------------------------------------------------------------------------

def test_concat_channels_by_hand(tmp_path):
    ex = build("input a [1, 1, 2]\ninput b [1, 2, 2]\nc: Concat(a, b)\n", tmp_path)
    a = np.array([[[1.0, 2.0]]])
    b = np.array([[[3.0, 4.0], [5.0, 6.0]]])
    y = ex.forward({"a": a, "b": b})["c"]
    np.testing.assert_array_equal(y, [[[1, 2], [3, 4], [5, 6]]])
    ex.backward(seeds={"c": np.array([[[10.0, 20.0], [30.0, 40.0], [50.0, 60.0]]])})
    np.testing.assert_array_equal(ex.diffs["a"], [[[10, 20]]])
    np.testing.assert_array_equal(ex.diffs["b"], [[[30, 40], [50, 60]]])


@pytest.mark.parametrize("shapes, axis", [(([2, 3, 2], [2, 1, 2], [2, 2, 2]), 1), (([1, 3], [2, 3]), 0),
                                          (([2, 2, 1], [2, 2, 3]), -1)])
def test_gradcheck_concat(tmp_path, shapes, axis):
    names = "abc"[:len(shapes)]
    text = "".join(f"input {n} {s}\n" for n, s in zip(names, shapes))
    gradcheck(text + f"cat: Concat({', '.join(names)}, axis={axis})\n", tmp_path)


def test_slice_by_hand(tmp_path):
    ex = build("input a [1, 5]\ns: Slice(a, slice_point=[1, 3]) -> x, y, z\n", tmp_path)
    blobs = ex.forward({"a": np.array([[1.0, 2.0, 3.0, 4.0, 5.0]])})
    np.testing.assert_array_equal(blobs["x"], [[1]])
    np.testing.assert_array_equal(blobs["y"], [[2, 3]])
    np.testing.assert_array_equal(blobs["z"], [[4, 5]])
    ex.backward(seeds={"x": np.array([[7.0]]), "z": np.array([[8.0, 9.0]])})   # y's gradient: none
    np.testing.assert_array_equal(ex.diffs["a"], [[7, 0, 0, 8, 9]])


def test_slice_evenly_when_told_the_number_of_tops():
    spec = REGISTRY["Slice"]
    x = np.arange(12.0).reshape(2, 6)
    tops = spec.forward(params("Slice", axis=1), [x], [], ctx(), {"ntops": 3})
    assert [t.tolist() for t in tops] == [[[0, 1], [6, 7]], [[2, 3], [8, 9]], [[4, 5], [10, 11]]]


@pytest.mark.parametrize("axis, points", [(1, "[1, 3]"), (0, "[2]"), (-1, "[1]")])
def test_gradcheck_slice(tmp_path, axis, points):
    n = points.count(",") + 2
    outs = ", ".join(f"t{i}" for i in range(n))
    gradcheck(f"input a [3, 4, 2]\ns: Slice(a, axis={axis}, slice_point={points}) -> {outs}\n", tmp_path)


# --- Split ------------------------------------------------------------------------------------

def test_split_sums_gradients(tmp_path):
    ex = build("input a [2, 2]\ns: Split(a) -> p, q\n", tmp_path)
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    blobs = ex.forward({"a": a})
    np.testing.assert_array_equal(blobs["p"], a)
    np.testing.assert_array_equal(blobs["q"], a)
    ex.backward(seeds={"p": np.array([[1.0, 1.0], [1.0, 1.0]]), "q": np.array([[0.5, 1.0], [2.0, 4.0]])})
    np.testing.assert_array_equal(ex.diffs["a"], [[1.5, 2.0], [3.0, 5.0]])


def test_gradcheck_split_feeding_two_branches(tmp_path):
    gradcheck("input a [3, 4]\ns: Split(a) -> p, q, r\nu: InnerProduct(p, 2)\nv: Sigmoid(q)\n"
              "w: Eltwise(q, r, PROD)\n", tmp_path)


# --- Flatten and Reshape ----------------------------------------------------------------------

def test_flatten_and_reshape_values(tmp_path):
    ex = build("input a [2, 3, 2]\nf: Flatten(a)\nr: Reshape(a, shape=[0, -1, 3])\n", tmp_path)
    a = np.arange(12.0).reshape(2, 3, 2)
    blobs = ex.forward({"a": a})
    assert blobs["f"].tolist() == [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]]
    assert blobs["r"].tolist() == [[[0, 1, 2], [3, 4, 5]], [[6, 7, 8], [9, 10, 11]]]


@pytest.mark.parametrize("layer", ["Flatten(a)", "Flatten(a, axis=2)", "Flatten(a, axis=0, end_axis=1)",
                                   "Reshape(a, shape=[0, -1])", "Reshape(a, shape=[4, 3, 2])",
                                   "Reshape(a, shape=[2, 2], axis=1, num_axes=1)"])
def test_gradcheck_flatten_reshape(tmp_path, layer):
    gradcheck(f"input a [2, 4, 3]\nl: {layer}\n", tmp_path)


# --- Eltwise ----------------------------------------------------------------------------------

def test_eltwise_sum_with_coefficients(tmp_path):
    ex = build("input a [1, 2]\ninput b [1, 2]\ne: Eltwise(a, b, SUM, coeff=[2, -0.5])\n", tmp_path)
    y = ex.forward({"a": np.array([[1.0, 2.0]]), "b": np.array([[4.0, 8.0]])})["e"]
    np.testing.assert_array_equal(y, [[0.0, 0.0]])
    ex.backward(seeds={"e": np.array([[1.0, 3.0]])})
    np.testing.assert_array_equal(ex.diffs["a"], [[2.0, 6.0]])
    np.testing.assert_array_equal(ex.diffs["b"], [[-0.5, -1.5]])


def test_eltwise_prod_stable_gradient_through_a_zero():
    spec = REGISTRY["Eltwise"]
    p = params("Eltwise", operation="PROD")
    a, b, c = np.array([0.0, 2.0]), np.array([3.0, 0.0]), np.array([5.0, 7.0])
    state: dict = {}
    tops = spec.forward(p, [a, b, c], [], ctx(), state)
    np.testing.assert_array_equal(tops[0], [0.0, 0.0])
    dy = np.array([1.0, 2.0])
    diffs, _ = spec.backward(p, [a, b, c], tops, [dy], [], ctx(), state, [True, True, True])
    np.testing.assert_array_equal(diffs[0], [3 * 5, 0.0])          # ∂/∂a = b·c
    np.testing.assert_array_equal(diffs[1], [0.0, 2 * 2 * 7])      # ∂/∂b = a·c
    np.testing.assert_array_equal(diffs[2], [0.0, 0.0])


def test_eltwise_prod_unstable_gradient_divides():
    spec = REGISTRY["Eltwise"]
    p = params("Eltwise", operation="PROD", stable_prod_grad=False)
    a, b = np.array([2.0, 0.0]), np.array([3.0, 4.0])
    tops = spec.forward(p, [a, b], [], ctx(), {})
    with np.errstate(invalid="ignore", divide="ignore"):
        diffs, _ = spec.backward(p, [a, b], tops, [np.ones(2)], [], ctx(), {}, [True, True])
    assert diffs[0][0] == 3.0 and np.isnan(diffs[0][1])        # Caffe's top/bottom: 0/0
    np.testing.assert_array_equal(diffs[1], [2.0, 0.0])


def test_eltwise_max_ties_as_caffe():
    """Caffe's CPU MAX: bottom 1 wins a tie with bottom 0; a later bottom must be strictly greater."""
    spec = REGISTRY["Eltwise"]
    p = params("Eltwise", operation="MAX")
    a = np.array([1.0, 5.0, 2.0, 3.0])
    b = np.array([1.0, 4.0, 2.0, 9.0])
    c = np.array([0.0, 5.0, 2.0, 9.0])
    state: dict = {}
    tops = spec.forward(p, [a, b, c], [], ctx(), state)
    np.testing.assert_array_equal(tops[0], [1.0, 5.0, 2.0, 9.0])
    diffs, _ = spec.backward(p, [a, b, c], tops, [np.array([1.0, 2.0, 3.0, 4.0])], [], ctx(), state,
                             [True, True, True])
    np.testing.assert_array_equal(diffs[0], [0.0, 2.0, 0.0, 0.0])
    np.testing.assert_array_equal(diffs[1], [1.0, 0.0, 3.0, 4.0])
    np.testing.assert_array_equal(diffs[2], [0.0, 0.0, 0.0, 0.0])


@pytest.mark.parametrize("layer, inputs", [
    ("Eltwise(a, b, c)", "abc"), ("Eltwise(a, b, c, coeff=[1, -2, 0.5])", "abc"), ("Eltwise(a, b, c, PROD)", "abc"),
    ("Eltwise(a, b, PROD, stable_prod_grad=false)", "ab"), ("Eltwise(a, b, c, MAX)", "abc"),
    ("Eltwise(a, b, MAX)", "ab")])
def test_gradcheck_eltwise(tmp_path, layer, inputs):
    gradcheck(f"input a [3, 4]\ninput b [3, 4]\ninput c [3, 4]\ne: {layer}\nsil: Silence(a, b, c)\n",
              tmp_path, check_inputs=tuple(inputs))


# --- Silence and DummyData --------------------------------------------------------------------

def test_silence_runs_and_has_no_output(tmp_path):
    ex = build("input a [2, 2]\nip: InnerProduct(a, 3)\nsil: Silence(ip)\n", tmp_path)
    ex.forward({"a": np.ones((2, 2))})
    assert REGISTRY["Silence"].forward({}, [np.ones(2)], [], ctx(), {}) == []
    ex.backward()


def test_dummy_data_default_is_zero(tmp_path):
    ex = build("d: DummyData(shape=[[2, 3], [2]]) -> x, y\nsil: Silence(x, y)\n", tmp_path, dtype=np.float32)
    blobs = ex.forward({})
    assert blobs["x"].shape == (2, 3) and blobs["y"].shape == (2,)
    assert blobs["x"].dtype == np.float32
    assert not blobs["x"].any() and not blobs["y"].any()


def test_dummy_data_filler(tmp_path):
    ex = build("d: DummyData(shape=[200, 100], data_filler=gaussian(std=2, mean=1))\nsil: Silence(d)\n",
               tmp_path, seed=3)
    x = np.array(ex.forward({})["d"])
    assert abs(x.mean() - 1.0) < 0.05 and abs(x.std() - 2.0) < 0.05
    ex2 = build("d: DummyData(shape=[200, 100], data_filler=gaussian(std=2, mean=1))\nsil: Silence(d)\n",
                tmp_path, seed=3, name="b.net")
    np.testing.assert_array_equal(ex2.forward({})["d"], x)


def test_dummy_data_constant_and_one_shape_for_two_tops(tmp_path):
    ex = build("d: DummyData(shape=[2, 2], data_filler=constant(0.5)) -> x, y\nsil: Silence(x, y)\n", tmp_path)
    blobs = ex.forward({})
    np.testing.assert_array_equal(blobs["x"], np.full((2, 2), 0.5))
    np.testing.assert_array_equal(blobs["y"], np.full((2, 2), 0.5))


def test_dummy_data_feeds_a_net(tmp_path):
    gradcheck("d: DummyData(shape=[3, 4], data_filler=uniform(min=-1, max=1))\nip: InnerProduct(d, 2)\n",
              tmp_path)
