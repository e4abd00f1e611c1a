"""The reference nets in nets/*.net: they check cleanly, and they are Caffe's nets.

Three kinds of evidence, each independent of the others:

1. Hand arithmetic. `Arch` below walks an architecture with the textbook formulas
   (Caffe's floor for convolutions, ceil for pooling) and adds up parameters and
   multiply-accumulates; nothing of netc is used. Well-known totals (LeNet 431,080,
   AlexNet 60,965,224, GoogLeNet deploy 6,998,552) are also written out as numbers.
2. Caffe's own prototxt files under shared/caffe_models, compiled by netc's prototxt
   front end with the same batch: equal totals, equal sorted blob shapes per phase, and
   layer-by-layer equal parameters (fillers, lr_mult, decay_mult, loss_weight) and solver.
3. Every net compiles in both phases with no warnings.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import struct
from pathlib import Path

import pytest

from netc.compile import compile_net
from netc.ir import Filler
from netc.report import to_json

REPO = Path(__file__).resolve().parents[1]
NETS = REPO / "nets"
MODELS = REPO.parent / "shared" / "caffe_models"
PHASES = ("train", "test")
ALL_NETS = ("lenet", "alexnet", "caffenet", "zfnet", "nin", "googlenet", "cifar10_quick")

needs_models = pytest.mark.skipif(not MODELS.is_dir(), reason="shared/caffe_models missing")
needs_prototxt = pytest.mark.skipif(importlib.util.find_spec("netc.caffe.prototxt") is None,
                                    reason="netc.caffe.prototxt (prototxt support) has not landed yet")


def net_path(name: str) -> str:
    return str(NETS / f"{name}.net")


def compiled(name: str, phase: str) -> dict:
    return to_json(compile_net(net_path(name), phase))


# ---------------------------------------------------------------------------------------
# Hand arithmetic: an architecture walked with the formulas, nothing from netc
# ---------------------------------------------------------------------------------------

def conv_out(size: int, k: int, s: int = 1, p: int = 0) -> int:
    return (size + 2 * p - k) // s + 1


def pool_out(size: int, k: int, s: int, p: int = 0) -> int:
    out = -(-(size + 2 * p - k) // s) + 1          # ceil
    if p > 0 and (out - 1) * s >= size + p:
        out -= 1
    return out


class Arch:
    """A single path through a CNN: shape, parameters and MACs for a batch of n."""

    def __init__(self, n: int, c: int, h: int, w: int):
        self.n, self.c, self.h, self.w = n, c, h, w
        self.params = 0
        self.macs = 0
        self.shapes: dict[str, list[int]] = {}

    @property
    def shape(self) -> list[int]:
        return [self.n, self.c, self.h, self.w]

    def at(self, c: int, h: int, w: int) -> "Arch":
        """A branch starting from another point of the net (same batch, shared totals)."""
        branch = Arch(self.n, c, h, w)
        branch.shapes = self.shapes
        return branch

    def conv(self, name: str, cout: int, k: int, s: int = 1, p: int = 0, group: int = 1) -> "Arch":
        cin = self.c
        self.h, self.w = conv_out(self.h, k, s, p), conv_out(self.w, k, s, p)
        self.params += cout * (cin // group) * k * k + cout
        self.macs += self.n * cout * self.h * self.w * (cin // group) * k * k
        self.c = cout
        self.shapes[name] = self.shape
        return self

    def pool(self, name: str, k: int, s: int, p: int = 0) -> "Arch":
        self.h, self.w = pool_out(self.h, k, s, p), pool_out(self.w, k, s, p)
        self.shapes[name] = self.shape
        return self

    def fc(self, name: str, cout: int) -> "Arch":
        cin = self.c * self.h * self.w
        self.params += cin * cout + cout
        self.macs += self.n * cin * cout
        self.c, self.h, self.w = cout, 1, 1
        self.shapes[name] = [self.n, cout]
        return self


def lenet(n: int) -> Arch:
    a = Arch(n, 1, 28, 28)
    a.conv("conv1", 20, 5).pool("pool1", 2, 2).conv("conv2", 50, 5).pool("pool2", 2, 2)
    return a.fc("ip1", 500).fc("ip2", 10)


def alexnet(n: int) -> Arch:
    """AlexNet and CaffeNet: LRN keeps shapes, so the order of pool and norm changes nothing here."""
    a = Arch(n, 3, 227, 227)
    a.conv("conv1", 96, 11, s=4).pool("pool1", 3, 2)
    a.conv("conv2", 256, 5, p=2, group=2).pool("pool2", 3, 2)
    a.conv("conv3", 384, 3, p=1).conv("conv4", 384, 3, p=1, group=2).conv("conv5", 256, 3, p=1, group=2)
    a.pool("pool5", 3, 2)
    return a.fc("fc6", 4096).fc("fc7", 4096).fc("fc8", 1000)


def zfnet(n: int) -> Arch:
    a = Arch(n, 3, 224, 224)
    a.conv("conv1", 96, 7, s=2, p=1).pool("pool1", 3, 2)
    a.conv("conv2", 256, 5, s=2).pool("pool2", 3, 2)
    a.conv("conv3", 384, 3, p=1).conv("conv4", 384, 3, p=1).conv("conv5", 256, 3, p=1)
    a.pool("pool5", 3, 2)
    return a.fc("fc6", 4096).fc("fc7", 4096).fc("fc8", 1000)


def cifar10_quick(n: int) -> Arch:
    a = Arch(n, 3, 32, 32)
    a.conv("conv1", 32, 5, p=2).pool("pool1", 3, 2)
    a.conv("conv2", 32, 5, p=2).pool("pool2", 3, 2)
    a.conv("conv3", 64, 5, p=2).pool("pool3", 3, 2)
    return a.fc("ip1", 64).fc("ip2", 10)


def nin(n: int) -> Arch:
    a = Arch(n, 3, 32, 32)
    for block, (c, m1, m2, k, p) in enumerate([(192, 160, 96, 5, 2), (192, 192, 192, 5, 2),
                                               (192, 192, 10, 3, 1)], start=1):
        a.conv(f"mlp{block}/conv", c, k, p=p).conv(f"mlp{block}/cccp1", m1, 1).conv(f"mlp{block}/cccp2", m2, 1)
        if block == 1:
            a.pool("pool1", 3, 2)
        elif block == 2:
            a.pool("pool2", 3, 2)
    a.pool("pool3", a.h, 1)                        # global average pooling
    return a


INCEPTIONS = {  # name: (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj), the GoogLeNet paper's Table 1
    "inception_3a": (64, 96, 128, 16, 32, 32),
    "inception_3b": (128, 128, 192, 32, 96, 64),
    "inception_4a": (192, 96, 208, 16, 48, 64),
    "inception_4b": (160, 112, 224, 24, 64, 64),
    "inception_4c": (128, 128, 256, 24, 64, 64),
    "inception_4d": (112, 144, 288, 32, 64, 64),
    "inception_4e": (256, 160, 320, 32, 128, 128),
    "inception_5a": (256, 160, 320, 32, 128, 128),
    "inception_5b": (384, 192, 384, 48, 128, 128),
}


def googlenet(n: int) -> tuple[Arch, int, int]:
    """The main path (an Arch) and the auxiliary heads' parameters and MACs."""
    a = Arch(n, 3, 224, 224)
    branches: list[Arch] = []

    def incept(name: str) -> None:
        c, h, w = a.c, a.h, a.w
        c1, c3r, c3, c5r, c5, pp = INCEPTIONS[name]
        parts = [a.at(c, h, w) for _ in range(4)]
        parts[0].conv(f"{name}/1x1", c1, 1)
        parts[1].conv(f"{name}/3x3_reduce", c3r, 1).conv(f"{name}/3x3", c3, 3, p=1)
        parts[2].conv(f"{name}/5x5_reduce", c5r, 1).conv(f"{name}/5x5", c5, 5, p=2)
        parts[3].pool(f"{name}/pool", 3, 1, p=1).conv(f"{name}/pool_proj", pp, 1)
        branches.extend(parts)
        a.c = c1 + c3 + c5 + pp
        a.h, a.w = parts[0].h, parts[0].w
        assert all((p.h, p.w) == (a.h, a.w) for p in parts)
        a.shapes[f"{name}/output"] = a.shape

    heads: list[Arch] = []

    def head(name: str) -> None:
        h = a.at(a.c, a.h, a.w)
        h.pool(f"{name}/ave_pool", 5, 3).conv(f"{name}/conv", 128, 1).fc(f"{name}/fc", 1024)
        h.fc(f"{name}/classifier", 1000)
        heads.append(h)

    a.conv("conv1/7x7_s2", 64, 7, s=2, p=3).pool("pool1/3x3_s2", 3, 2)
    a.conv("conv2/3x3_reduce", 64, 1).conv("conv2/3x3", 192, 3, p=1).pool("pool2/3x3_s2", 3, 2)
    incept("inception_3a")
    incept("inception_3b")
    a.pool("pool3/3x3_s2", 3, 2)
    incept("inception_4a")
    head("loss1")
    for name in ("inception_4b", "inception_4c", "inception_4d"):
        incept(name)
    head("loss2")
    incept("inception_4e")
    a.pool("pool4/3x3_s2", 3, 2)
    incept("inception_5a")
    incept("inception_5b")
    a.pool("pool5/7x7_s1", 7, 1)
    a.fc("loss3/classifier", 1000)
    a.params += sum(b.params for b in branches)
    a.macs += sum(b.macs for b in branches)
    return a, sum(h.params for h in heads), sum(h.macs for h in heads)


# The batch each phase reads (Caffe's data layers), and the hand models.
BATCH = {"lenet": (64, 100), "alexnet": (256, 50), "caffenet": (256, 50), "zfnet": (128, 50),
         "nin": (128, 100), "googlenet": (32, 50), "cifar10_quick": (100, 100)}
HAND = {"lenet": lenet, "alexnet": alexnet, "caffenet": alexnet, "zfnet": zfnet, "nin": nin,
        "cifar10_quick": cifar10_quick}


def batch(name: str, phase: str) -> int:
    return BATCH[name][PHASES.index(phase)]


# ---------------------------------------------------------------------------------------
# Every net checks cleanly
# ---------------------------------------------------------------------------------------

def test_the_reference_nets_are_all_there():
    assert sorted(p.stem for p in NETS.glob("*.net")) == sorted(ALL_NETS)


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("name", ALL_NETS)
def test_net_checks_without_warnings(name, phase):
    net = compile_net(net_path(name), phase)
    assert net.warnings == (), [str(w) for w in net.warnings]
    assert net.solver is not None
    j = to_json(net)
    assert j["phase"] == phase
    assert j["blobs"]["data"][0] == batch(name, phase)
    assert j["blobs"]["label"] == [batch(name, phase)]


@pytest.mark.parametrize("name", ALL_NETS)
def test_accuracy_only_in_test_and_losses_in_both(name):
    for phase in PHASES:
        layers = compile_net(net_path(name), phase).layers
        types = [l.type for l in layers]
        assert "SoftmaxWithLoss" in types
        assert ("Accuracy" in types) == (phase == "test")


def test_googlenet_fits_in_120_lines():
    lines = (NETS / "googlenet.net").read_text().splitlines()
    assert len(lines) <= 120, len(lines)


def test_googlenet_writes_inception_once_as_a_module_with_a_shape_promise():
    text = (NETS / "googlenet.net").read_text()
    assert text.count("module inception(") == 1
    assert "-> [c1 + c3 + c5 + pp, H, W]" in text
    net = compile_net(net_path("googlenet"), "test")
    assert sorted(c.instance for c in net.contracts if c.module == "inception") == sorted(INCEPTIONS)


def test_nin_writes_mlpconv_as_a_module():
    text = (NETS / "nin.net").read_text()
    assert "module mlpconv(" in text
    net = compile_net(net_path("nin"), "test")
    assert sorted(c.instance for c in net.contracts) == ["mlp1", "mlp2", "mlp3"]


# ---------------------------------------------------------------------------------------
# Hand arithmetic
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("name", sorted(HAND))
def test_params_macs_and_shapes_match_hand_arithmetic(name, phase):
    n = batch(name, phase)
    hand = HAND[name](n)
    j = compiled(name, phase)
    assert j["total_params"] == hand.params
    assert j["total_macs"] == hand.macs
    for blob, shape in hand.shapes.items():
        assert j["blobs"][blob] == shape, blob


def test_known_totals():
    # LeNet: conv1 20·1·5·5+20, conv2 50·20·5·5+50, ip1 500·(50·4·4)+500, ip2 10·500+10
    assert 520 + 25_050 + 400_500 + 5_010 == 431_080
    assert lenet(1).params == 431_080
    assert alexnet(1).params == 60_965_224
    main, aux_params, _ = googlenet(1)
    assert main.params == 6_998_552        # bvlc_googlenet deploy.prototxt, widely quoted
    # each auxiliary head: 1x1 conv to 128, fc 128·4·4 → 1024, classifier 1024 → 1000
    assert aux_params == (512 * 128 + 128) + (528 * 128 + 128) + 2 * (2048 * 1024 + 1024 + 1024 * 1000 + 1000)
    for phase in PHASES:
        assert compiled("lenet", phase)["total_params"] == 431_080
        assert compiled("alexnet", phase)["total_params"] == 60_965_224
        assert compiled("caffenet", phase)["total_params"] == 60_965_224
        assert compiled("googlenet", phase)["total_params"] == 6_998_552 + aux_params == 13_378_280


@pytest.mark.parametrize("phase", PHASES)
def test_alexnet_and_caffenet_pool5(phase):
    n = batch("alexnet", phase)
    for name in ("alexnet", "caffenet"):
        j = compiled(name, phase)
        assert j["blobs"]["pool5"] == [n, 256, 6, 6]
        assert j["blobs"]["data"] == [n, 3, 227, 227]


def test_caffenet_pools_before_it_normalises_and_alexnet_after():
    def order(name):
        return [l.name for l in compile_net(net_path(name), "test").layers if l.name[:4] in ("norm", "pool")]
    assert order("alexnet") == ["norm1", "pool1", "norm2", "pool2", "pool5"]
    assert order("caffenet") == ["pool1", "norm1", "pool2", "norm2", "pool5"]
    caffenet = to_json(compile_net(net_path("caffenet"), "test"))["blobs"]
    assert caffenet["norm1"] == [50, 96, 27, 27] and caffenet["norm2"] == [50, 256, 13, 13]


@pytest.mark.parametrize("phase", PHASES)
def test_googlenet_against_hand_arithmetic(phase):
    n = batch("googlenet", phase)
    main, aux_params, aux_macs = googlenet(n)
    j = compiled("googlenet", phase)
    assert j["total_params"] == main.params + aux_params
    assert j["total_macs"] == main.macs + aux_macs
    assert j["blobs"]["inception_5b/output"] == [n, 1024, 7, 7]
    assert j["blobs"]["pool5/7x7_s1"] == [n, 1024, 1, 1]
    assert j["blobs"]["loss1/ave_pool"] == [n, 512, 4, 4]
    assert j["blobs"]["loss2/ave_pool"] == [n, 528, 4, 4]
    for blob, shape in main.shapes.items():
        assert j["blobs"][blob] == shape, blob


def test_googlenet_heads_and_loss_weights():
    for phase in PHASES:
        net = compile_net(net_path("googlenet"), phase)
        losses = {l.name: l.loss_weight for l in net.layers if l.type == "SoftmaxWithLoss"}
        assert losses == {"loss1/loss": (0.3,), "loss2/loss": (0.3,), "loss3/loss3": (1.0,)}
        accuracies = sorted((l.name, l.params["top_k"]) for l in net.layers if l.type == "Accuracy")
        if phase == "test":
            assert accuracies == sorted((f"loss{i}/top-{k}", k) for i in (1, 2, 3) for k in (1, 5))
        else:
            assert accuracies == []


@pytest.mark.parametrize("phase", PHASES)
def test_nin_shapes(phase):
    # 32 → mlp1 (5x5 pad 2) 32 → pool 3/2: ceil(29/2)+1 = 16 → mlp2 16 → pool 3/2: ceil(13/2)+1 = 8
    #    → mlp3 (3x3 pad 1) 8 → global average pool 1
    n = batch("nin", phase)
    j = compiled("nin", phase)
    assert j["blobs"]["mlp1/cccp2"] == [n, 96, 32, 32]
    assert j["blobs"]["pool1"] == [n, 96, 16, 16]
    assert j["blobs"]["mlp2/cccp2"] == [n, 192, 16, 16]
    assert j["blobs"]["pool2"] == [n, 192, 8, 8]
    assert j["blobs"]["mlp3/cccp2"] == [n, 10, 8, 8]
    assert j["blobs"]["pool3"] == [n, 10, 1, 1]
    # conv 3·25·192, 192·160, 160·96; 96·25·192, 192·192 twice; 192·9·192, 192·192, 192·10; plus biases
    weights = (3 * 25 * 192 + 192 * 160 + 160 * 96 + 96 * 25 * 192 + 2 * 192 * 192
               + 192 * 9 * 192 + 192 * 192 + 192 * 10)
    biases = 192 + 160 + 96 + 3 * 192 + 192 + 192 + 10
    assert j["total_params"] == weights + biases == 966_986


@pytest.mark.parametrize("phase", PHASES)
def test_zfnet_shapes(phase):
    # conv1 7x7/2 pad 1: (224+2-7)//2+1 = 110; pool 3/2: ceil(107/2)+1 = 55;
    # conv2 5x5/2: (55-5)//2+1 = 26; pool 3/2: ceil(23/2)+1 = 13; conv3-5 3x3 pad 1: 13;
    # pool5 3/2: ceil(10/2)+1 = 6
    n = batch("zfnet", phase)
    j = compiled("zfnet", phase)
    expected = {"data": [n, 3, 224, 224], "conv1": [n, 96, 110, 110], "pool1": [n, 96, 55, 55],
                "norm1": [n, 96, 55, 55], "conv2": [n, 256, 26, 26], "pool2": [n, 256, 13, 13],
                "norm2": [n, 256, 13, 13], "conv3": [n, 384, 13, 13], "conv4": [n, 384, 13, 13],
                "conv5": [n, 256, 13, 13], "pool5": [n, 256, 6, 6], "fc6": [n, 4096], "fc7": [n, 4096],
                "fc8": [n, 1000]}
    for blob, shape in expected.items():
        assert j["blobs"][blob] == shape, blob
    # dense conv3-5 (no groups): 256·9·384 + 384·9·384 + 384·9·256 weights
    convs = (3 * 49 * 96 + 96) + (96 * 25 * 256 + 256) + (256 * 9 * 384 + 384) + (384 * 9 * 384 + 384) \
        + (384 * 9 * 256 + 256)
    fcs = (9216 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 1000 + 1000)
    assert j["total_params"] == convs + fcs


# ---------------------------------------------------------------------------------------
# Against Caffe's own files
# ---------------------------------------------------------------------------------------

PROTOTXT = {
    "lenet": ("examples/mnist/lenet_train_test.prototxt", (1, 28, 28), "examples/mnist/lenet_solver.prototxt"),
    "alexnet": ("models/bvlc_alexnet/train_val.prototxt", (3, 227, 227), "models/bvlc_alexnet/solver.prototxt"),
    "caffenet": ("models/bvlc_reference_caffenet/train_val.prototxt", (3, 227, 227),
                 "models/bvlc_reference_caffenet/solver.prototxt"),
    "googlenet": ("models/bvlc_googlenet/train_val.prototxt", (3, 224, 224),
                  "models/bvlc_googlenet/quick_solver.prototxt"),
    "cifar10_quick": ("examples/cifar10/cifar10_quick_train_test.prototxt", (3, 32, 32), None),
}


def caffe_net(name: str, phase: str):
    """Caffe's prototxt for the same phase; its Data layers get the .net's batch and crop."""
    path, chw, _ = PROTOTXT[name]
    return compile_net(str(MODELS / path), phase, {"data": (batch(name, phase),) + chw})


def f32(value):
    """Caffe keeps floats as float32: compare through that rounding."""
    if isinstance(value, bool) or not isinstance(value, (float, tuple, Filler)):
        return value
    if isinstance(value, float):
        return struct.unpack("f", struct.pack("f", value))[0]
    if isinstance(value, tuple):
        return tuple(f32(v) for v in value)
    return dataclasses.replace(value, **{f.name: f32(getattr(value, f.name)) for f in dataclasses.fields(value)})


@needs_models
@needs_prototxt
@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("name", sorted(PROTOTXT))
def test_totals_and_blob_shapes_equal_caffes(name, phase):
    ours = compiled(name, phase)
    theirs = to_json(caffe_net(name, phase))
    assert ours["total_params"] == theirs["total_params"]
    assert ours["total_macs"] == theirs["total_macs"]
    assert sorted(ours["blobs"].values()) == sorted(theirs["blobs"].values())


@needs_models
@needs_prototxt
@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("name", sorted(PROTOTXT))
def test_layers_equal_caffes_layer_by_layer(name, phase):
    """Same layer names, types and parameters (fillers, lr_mult, decay_mult, loss_weight).

    Data layers differ where they must: the source, and (for LeNet and CIFAR-10) the
    reader; their transform parameters and batch are Caffe's.
    """
    ours = {l.name: l for l in compile_net(net_path(name), phase).layers}
    theirs = {l.name: l for l in caffe_net(name, phase).layers}
    assert sorted(ours) == sorted(theirs)
    for lname, t in theirs.items():
        o = ours[lname]
        if not t.bottoms:        # the data source
            for key in ("batch_size", "scale", "mirror", "crop_size", "mean_file", "mean_value"):
                assert f32(o.params[key]) == f32(t.params[key]), (lname, key)
            continue
        assert o.type == t.type, lname
        assert {k: f32(v) for k, v in o.params.items()} == {k: f32(v) for k, v in t.params.items()}, lname
        assert o.param_specs == t.param_specs, lname
        assert f32(o.loss_weight) == f32(t.loss_weight), lname
        assert len(o.bottoms) == len(t.bottoms), lname


@needs_models
@needs_prototxt
@pytest.mark.parametrize("name", [n for n, v in PROTOTXT.items() if v[2]])
def test_solver_equals_caffes(name):
    from netc.caffe.prototxt import solver_from_prototxt
    theirs = dict(solver_from_prototxt(str(MODELS / PROTOTXT[name][2])).fields)
    ours = dict(compile_net(net_path(name), "train").solver.fields)
    # where snapshots go is ours to choose: Caffe's paths assume its source tree
    theirs.pop("snapshot_prefix", None), ours.pop("snapshot_prefix", None)
    assert {k: f32(v) for k, v in ours.items()} == {k: f32(v) for k, v in theirs.items()}


@needs_models
@needs_prototxt
def test_googlenet_main_path_equals_caffes_deploy():
    deploy = to_json(compile_net(str(MODELS / "models/bvlc_googlenet/deploy.prototxt"), "test"))
    assert deploy["total_params"] == 6_998_552
    _, aux_params, _ = googlenet(1)
    assert compiled("googlenet", "test")["total_params"] == deploy["total_params"] + aux_params
