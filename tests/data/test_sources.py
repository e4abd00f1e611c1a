"""Readers: IDX (raw, gzipped, truncated, bad), CIFAR-10 records, image lists, .npy/.npz,
where data is looked for (NETC_DATA) and what the errors say. Expected values come
from the arrays the tests wrote, never from netc."""
import gzip
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from netc.compile import compile_net
from netc.data import DataError, open_source

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datafiles import idx_bytes, write_idx, write_mnist  # noqa: E402

FASHION = Path("/usr/share/datasets/fashion-mnist")


def first_batch(layer, phase="test", seed=0):
    with open_source(layer, phase, seed) as src:
        return src, src.next_batch()


# --- IDX -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, data_layer, gz):
    train_x, train_y, test_x, test_y = write_mnist(tmp_path / "m", gz=gz)
    layer = data_layer('d: IDXData(source="m", split=TEST, batch=6) -> data, label', "test")
    src, batch = first_batch(layer)
    assert src.num_examples == 6 and src.tops == ("data", "label")
    assert batch["data"].dtype == np.float32 and batch["data"].shape == (6, 1, 4, 5)
    np.testing.assert_array_equal(batch["data"][:, 0], test_x.astype(np.float32))
    np.testing.assert_array_equal(batch["label"], test_y.astype(np.float32))
    layer = data_layer('d: IDXData(source="m", batch=10, shuffle=false) -> data, label', "train")
    _, batch = first_batch(layer, "train")
    np.testing.assert_array_equal(batch["data"][:, 0], train_x)
    np.testing.assert_array_equal(batch["label"], train_y)


def test_idx_explicit_file_colour_and_data_only(tmp_path, data_layer):
    images = np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3)   # N, H, W, C
    write_idx(tmp_path / "imgs-images-idx3-ubyte", images)
    layer = data_layer('d: IDXData(source="imgs-images-idx3-ubyte", batch=2) -> data', "test")
    _, batch = first_batch(layer)
    assert list(batch) == ["data"]
    np.testing.assert_array_equal(batch["data"], images.transpose(0, 3, 1, 2))


def test_idx_labels_found_beside_explicit_file(tmp_path, data_layer):
    write_idx(tmp_path / "x-images-idx3-ubyte", np.zeros((3, 2, 2), np.uint8))
    write_idx(tmp_path / "x-labels-idx1-ubyte", np.array([7, 8, 9], np.uint8))
    _, batch = first_batch(data_layer('d: IDXData(source="x-images-idx3-ubyte", batch=3)', "test"))
    np.testing.assert_array_equal(batch["label"], [7, 8, 9])


def test_idx_truncated_gzip_says_how_many(tmp_path, data_layer):
    write_mnist(tmp_path / "m", n_train=50)
    path = tmp_path / "m" / "train-images-idx3-ubyte.gz"
    raw = gzip.compress(idx_bytes(np.ones((50, 4, 5), np.uint8)), compresslevel=0)
    path.write_bytes(raw[: 16 + 20 * 20 + 30])   # header + 20 images + a little, stream cut
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz' ends after 2\d of 50 images") as err:
        open_source(data_layer('d: IDXData(source="m", batch=4)'), "train", 0)
    assert "download it again" in err.value.hint
    assert err.value.span is not None and err.value.span.line == 1


def test_idx_truncated_raw(tmp_path, data_layer):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(np.ones((10, 4, 4), np.uint8))[:-20])
    with pytest.raises(DataError, match="ends after 8 of 10 images"):
        open_source(data_layer('d: IDXData(source="m", split=TEST, batch=4) -> data', "test"), "test", 0)


def test_idx_bad_magic(tmp_path, data_layer):
    (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x03" + b"\0" * 40)
    with pytest.raises(DataError, match=r"'.*bad' is not an IDX file \(bad magic number 12340803"):
        open_source(data_layer('d: IDXData(source="bad", batch=4) -> data'), "train", 0)


def test_idx_count_mismatch(tmp_path, data_layer):
    write_mnist(tmp_path / "m")
    write_idx(tmp_path / "m" / "train-labels-idx1-ubyte.gz", np.zeros(9, np.uint8), gz=True)
    with pytest.raises(DataError, match=r"holds 10 examples but '.*train-labels-idx1-ubyte.gz' holds 9 labels"):
        open_source(data_layer('d: IDXData(source="m", batch=4)'), "train", 0)


def test_idx_folder_without_images(tmp_path, data_layer):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no train-images-idx3-ubyte"):
        open_source(data_layer('d: IDXData(source="empty", batch=4)'), "train", 0)


# --- where data is found -------------------------------------------------------------------------
def test_missing_fashion_mnist_says_how_to_get_it(data_layer):
    layer = data_layer('d: IDXData(source="/nowhere/fashion-mnist", batch=4)')
    with pytest.raises(DataError) as err:
        open_source(layer, "train", 0)
    assert "'/nowhere/fashion-mnist' does not exist" in err.value.message
    assert "NETC_DATA is not set" in err.value.message
    assert "sudo apt-get install dataset-fashion-mnist" in err.value.hint
    assert "$NETC_DATA/fashion-mnist" in err.value.hint


def test_missing_everywhere_names_both_places(tmp_path, monkeypatch, data_layer):
    monkeypatch.setenv("NETC_DATA", str(tmp_path / "store"))
    with pytest.raises(DataError) as err:
        open_source(data_layer('d: CIFAR10Data(source="/nowhere/cifar10", batch=4)'), "train", 0)
    assert f"neither '/nowhere/cifar10' nor '{tmp_path / 'store' / 'cifar10'}' exists" in err.value.message
    assert "cifar-10-binary.tar.gz" in err.value.hint


def test_netc_data_fallback_for_loader_and_check(tmp_path, monkeypatch, data_layer):
    _, _, test_x, _ = write_mnist(tmp_path / "store" / "fashion-mnist", size=(6, 7))
    monkeypatch.setenv("NETC_DATA", str(tmp_path / "store"))
    line = 'd: IDXData(source="/nowhere/fashion-mnist", split=TEST, batch=2)'
    _, batch = first_batch(data_layer(line, "test"))
    np.testing.assert_array_equal(batch["data"][:, 0], test_x[:2])
    (tmp_path / "t.net").write_text(line + "\n")
    net = compile_net(str(tmp_path / "t.net"), "test")   # shape inference reads the same header
    assert net.blob_shapes["data"] == (2, 1, 6, 7)


def test_named_path_wins_over_netc_data(tmp_path, monkeypatch, data_layer):
    _, _, here, _ = write_mnist(tmp_path / "m", seed=1)
    write_mnist(tmp_path / "store" / "m", seed=2)
    monkeypatch.setenv("NETC_DATA", str(tmp_path / "store"))
    _, batch = first_batch(data_layer('d: IDXData(source="m", split=TEST, batch=2) -> data', "test"))
    np.testing.assert_array_equal(batch["data"][:, 0], here[:2])


def test_check_without_data_names_places(tmp_path):
    (tmp_path / "t.net").write_text('d: IDXData(source="/nowhere/fashion-mnist", batch=2)\n')
    with pytest.raises(DataError, match="does not exist.*apt-get install dataset-fashion-mnist"):
        compile_net(str(tmp_path / "t.net"), "train")


def test_lmdb_data_layer_is_refused(data_layer):
    layer = data_layer('d: Data(source="train_lmdb", backend=LMDB, batch=4, shape=[3, 8, 8])')
    with pytest.raises(DataError, match="cannot read Caffe's LMDB") as err:
        open_source(layer, "train", 0)
    assert "IDXData" in err.value.hint and "ImageData" in err.value.hint and "NpyData" in err.value.hint


def test_declared_shape_must_match(tmp_path, data_layer):
    write_mnist(tmp_path / "m")
    with pytest.raises(DataError, match=r"shape=\[1, 28, 28\] but the examples of 'm' are \[1, 4, 5\]"):
        open_source(data_layer('d: IDXData(source="m", batch=2, shape=[1, 28, 28])'), "train", 0)


# --- CIFAR-10 ------------------------------------------------------------------------------------
def cifar_file(path, labels, rng):
    """Records of 1 label byte then 3072 bytes (R, G, B planes of 32x32); returns the images."""
    images = rng.integers(0, 256, (len(labels), 3, 32, 32), dtype=np.uint8)
    path.write_bytes(b"".join(bytes([y]) + img.tobytes() for y, img in zip(labels, images)))
    return images


def test_cifar10_records(tmp_path, data_layer):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar" / "cifar-10-batches-bin"   # as the archive unpacks
    folder.mkdir(parents=True)
    train = [cifar_file(folder / f"data_batch_{i}.bin", [i, 9 - i], rng) for i in range(1, 6)]
    test = cifar_file(folder / "test_batch.bin", [3, 1, 4], rng)
    _, batch = first_batch(data_layer('d: CIFAR10Data(source="cifar", split=TEST, batch=3)', "test"))
    np.testing.assert_array_equal(batch["data"], test)
    np.testing.assert_array_equal(batch["label"], [3, 1, 4])
    layer = data_layer('d: CIFAR10Data(source="cifar", batch=10, shuffle=false)')
    src, batch = first_batch(layer, "train")
    assert src.num_examples == 10
    np.testing.assert_array_equal(batch["data"], np.concatenate(train))
    np.testing.assert_array_equal(batch["label"], [1, 8, 2, 7, 3, 6, 4, 5, 5, 4])
    # the red plane of the first record is bytes 1..1024 of the file
    raw = (folder / "data_batch_1.bin").read_bytes()
    np.testing.assert_array_equal(batch["data"][0, 0].ravel(), np.frombuffer(raw[1:1025], np.uint8))


def test_cifar10_truncated_and_missing(tmp_path, data_layer):
    rng = np.random.default_rng(0)
    (tmp_path / "c").mkdir()
    cifar_file(tmp_path / "c" / "test_batch.bin", [1, 2], rng)
    with pytest.raises(DataError, match=r"lacks data_batch_1.bin, .*data_batch_5.bin"):
        open_source(data_layer('d: CIFAR10Data(source="c", batch=2)'), "train", 0)
    raw = (tmp_path / "c" / "test_batch.bin").read_bytes()
    (tmp_path / "c" / "test_batch.bin").write_bytes(raw[:-100])
    with pytest.raises(DataError, match="ends inside record 2"):
        open_source(data_layer('d: CIFAR10Data(source="c", split=TEST, batch=2)', "test"), "test", 0)


# --- image lists ---------------------------------------------------------------------------------
def test_image_list_colour_grey_and_resize(tmp_path, data_layer):
    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    rgb = [rng.integers(0, 256, (6, 8, 3), dtype=np.uint8) for _ in range(3)]
    for i, pixels in enumerate(rgb):
        Image.fromarray(pixels, "RGB").save(tmp_path / "imgs" / f"im {i}.png")
    (tmp_path / "list.txt").write_text("im 0.png 4\n\nim 1.png 0\nim 2.png 2\n")
    line = 'd: ImageData(source="list.txt", root_folder="imgs", batch=3{})'
    _, batch = first_batch(data_layer(line.format(""), "test"))
    # Caffe decodes with OpenCV: channels come out blue, green, red
    np.testing.assert_array_equal(batch["data"], np.stack([p[:, :, ::-1].transpose(2, 0, 1) for p in rgb]))
    np.testing.assert_array_equal(batch["label"], [4, 0, 2])
    _, batch = first_batch(data_layer(line.format(", is_color=false"), "test"))
    grey = [np.asarray(Image.fromarray(p, "RGB").convert("L")) for p in rgb]
    np.testing.assert_array_equal(batch["data"][:, 0], np.stack(grey))
    assert batch["data"].shape == (3, 1, 6, 8)
    _, batch = first_batch(data_layer(line.format(", new_height=3, new_width=5"), "test"))
    assert batch["data"].shape == (3, 3, 3, 5)
    small = np.asarray(Image.fromarray(rgb[1], "RGB").resize((5, 3), Image.BILINEAR))
    np.testing.assert_array_equal(batch["data"][1], small[:, :, ::-1].transpose(2, 0, 1))


def test_image_list_errors(tmp_path, data_layer):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "bad.txt").write_text("a.png 1\na.png one\n")
    with pytest.raises(DataError, match="line 2 of .*bad.txt' is not 'path label'"):
        open_source(data_layer('d: ImageData(source="bad.txt", batch=1)'), "test", 0)
    (tmp_path / "gone.txt").write_text("a.png 1\nmissing.png 2\n")
    src = open_source(data_layer('d: ImageData(source="gone.txt", batch=1)'), "test", 0)
    try:
        src.next_batch()
        with pytest.raises(DataError, match=r"missing.png' \(line 2 of .*gone.txt'\) does not exist"):
            src.next_batch()
    finally:
        src.close()
    Image.fromarray(np.zeros((5, 4), np.uint8)).save(tmp_path / "b.png")
    (tmp_path / "sizes.txt").write_text("a.png 1\nb.png 2\n")
    with pytest.raises(DataError, match="is 4x5 but the first is 4x4") as err:
        first_batch(data_layer('d: ImageData(source="sizes.txt", batch=2, is_color=false)'))
    assert "new_height" in err.value.hint


# --- .npy / .npz ---------------------------------------------------------------------------------
def test_npy_with_label_source(tmp_path, data_layer):
    x = np.random.default_rng(0).normal(size=(5, 2, 3, 3))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.arange(5)[:, None])
    src, batch = first_batch(data_layer('d: NpyData(source="x.npy", label_source="y.npy", batch=5)', "test"))
    np.testing.assert_array_equal(batch["data"], x.astype(np.float32))
    np.testing.assert_array_equal(batch["label"], np.arange(5))
    with pytest.raises(DataError, match="no label_source"):
        open_source(data_layer('d: NpyData(source="x.npy", batch=5)'), "test", 0)


def test_npz_keys_and_pickles(tmp_path, data_layer):
    x = np.arange(4 * 6, dtype=np.uint8).reshape(4, 1, 2, 3)
    np.savez(tmp_path / "d.npz", images=x, classes=np.array([3, 2, 1, 0]))
    _, batch = first_batch(data_layer('d: NpyData(source="d.npz", data_key="images", label_key="classes", '
                                      'batch=4)', "test"))
    np.testing.assert_array_equal(batch["data"], x)
    np.testing.assert_array_equal(batch["label"], [3, 2, 1, 0])
    with pytest.raises(DataError, match=r"has no array 'label' \(it has: images, classes\)"):
        open_source(data_layer('d: NpyData(source="d.npz", data_key="images", batch=4)'), "test", 0)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="holds Python objects"):
        open_source(data_layer('d: NpyData(source="obj.npy", batch=1) -> data'), "test", 0)


# --- the real Fashion-MNIST ----------------------------------------------------------------------
@pytest.mark.skipif(not (FASHION / "t10k-labels-idx1-ubyte.gz").exists(),
                    reason="Fashion-MNIST is not installed (sudo apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist_test_split(data_layer):
    with gzip.open(FASHION / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read()[8:], np.uint8)
    layer = data_layer(f'd: IDXData(source="{FASHION}", split=TEST, batch=100, scale=0.00390625)', "test")
    with open_source(layer, "test", 0) as src:
        assert src.num_examples == 10000 == len(labels)
        batch = src.next_batch()
    assert batch["data"].shape == (100, 1, 28, 28)
    np.testing.assert_array_equal(batch["label"], labels[:100])
    assert 0 <= batch["data"].min() and batch["data"].max() <= 255 / 256
    assert os.path.isdir(FASHION)
