"""Order, epochs, resuming and the prefetch thread of open_source. The examples carry
their own index as label, so the order served can be read off the labels."""
import gc
import json
import threading
import time

import numpy as np
import pytest

from netc.data import DataError, open_source
from netc.data.loader import Source
from netc.data.sources import Examples
from netc.data.transform import Transform


@pytest.fixture
def indexed(tmp_path, data_layer):
    """An NpyData layer over n examples whose label is their index."""
    def build(n=12, batch=4, phase="train", extra=""):
        x = np.random.default_rng(n).integers(0, 256, (n, 3, 6, 6), dtype=np.uint8)
        np.savez(tmp_path / f"d{n}.npz", data=x, label=np.arange(n))
        return data_layer(f'd: NpyData(source="d{n}.npz", batch={batch}{extra})', phase)
    return build


def labels_of(src, batches):
    return [src.next_batch()["label"].astype(int).tolist() for _ in range(batches)]


def test_shuffled_epochs_serve_every_example_once(indexed):
    with open_source(indexed(12, 4), "train", seed=7) as src:
        served = labels_of(src, 9)
        assert src.position() == {"epoch": 3, "index": 0}
    epochs = [sum(served[i:i + 3], []) for i in (0, 3, 6)]
    for order in epochs:
        assert sorted(order) == list(range(12))
    assert len({tuple(order) for order in epochs}) == 3           # a new order each epoch
    assert epochs[0] != list(range(12))
    with open_source(indexed(12, 4), "train", seed=7) as again:
        assert labels_of(again, 9) == served                      # same seed, same stream
    with open_source(indexed(12, 4), "train", seed=8) as other:
        assert labels_of(other, 3) != served[:3]


def test_test_phase_cycles_in_order(indexed):
    with open_source(indexed(10, 4, "test"), "test", seed=7) as src:
        assert labels_of(src, 3) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1]]
        assert src.position() == {"epoch": 1, "index": 2}


def test_batch_wraps_into_the_next_epoch(indexed):
    with open_source(indexed(10, 4), "train", seed=3) as src:
        served = sum(labels_of(src, 5), [])     # 20 labels: epochs 0 and 1 exactly
    first, second = served[:10], served[10:]
    assert sorted(first) == sorted(second) == list(range(10))
    assert first != second
    with open_source(indexed(3, 8), "train", seed=3) as tiny:     # a batch larger than the set
        (batch,) = labels_of(tiny, 1)
    assert sorted(batch[:3]) == sorted(batch[3:6]) == [0, 1, 2] and len(batch) == 8


def test_seek_after_read_ahead_is_bit_identical(indexed):
    layer = indexed(10, 4, extra=", crop_size=4, mirror=true, pca_color=0.1, scale=0.5")
    with open_source(layer, "train", seed=5) as src:
        for _ in range(3):
            src.next_batch()
        time.sleep(0.05)    # let the prefetcher run ahead
        saved = json.loads(json.dumps(src.position()))
        after = [src.next_batch() for _ in range(5)]
        src.seek(saved)
        again = [src.next_batch() for _ in range(5)]
    with open_source(layer, "train", seed=5) as fresh:
        fresh.seek(saved)
        resumed = [fresh.next_batch() for _ in range(5)]
    for a, b, c in zip(after, again, resumed):
        for top in ("data", "label"):
            assert a[top].tobytes() == b[top].tobytes() == c[top].tobytes()
    assert not np.array_equal(after[0]["data"], after[1]["data"])


def test_seek_rejects_a_foreign_position(indexed):
    with open_source(indexed(10, 4), "train", 0) as src:
        with pytest.raises(DataError, match="outside its 10 examples"):
            src.seek({"epoch": 0, "index": 10})
        with pytest.raises(DataError, match="is not"):
            src.seek({"iteration": 3})


class Failing(Examples):
    """Examples whose third read fails, as a disk error would."""

    def __init__(self):
        super().__init__(np.zeros((100, 1, 2, 2), np.uint8), np.zeros(100, np.float32), 255.0)
        self.reads = 0

    def take(self, indices):
        self.reads += 1
        if self.reads == 3:
            raise OSError("disk on fire")
        return super().take(indices)


def test_prefetch_errors_surface_in_next_batch():
    src = Source(Failing(), Transform({}, True, (1, 2, 2)), 4, ("data", "label"), 0, False)
    try:
        src.next_batch()
        src.next_batch()
        with pytest.raises(OSError, match="disk on fire"):
            src.next_batch()
        with pytest.raises(OSError, match="disk on fire"):   # and it stays failed
            src.next_batch()
    finally:
        src.close()


def prefetch_threads():
    return [t for t in threading.enumerate() if t.name.startswith("netc-data-") and t.is_alive()]


def test_close_joins_the_thread_promptly(indexed):
    before = len(prefetch_threads())
    src = open_source(indexed(12, 4), "train", 0)
    thread = src._thread
    time.sleep(0.05)            # the queue fills and the producer blocks
    assert thread.is_alive() and len(prefetch_threads()) == before + 1
    start = time.perf_counter()
    src.close()
    assert time.perf_counter() - start < 1.0
    assert not thread.is_alive() and len(prefetch_threads()) == before
    with pytest.raises(RuntimeError, match="closed"):
        src.next_batch()
    with open_source(indexed(12, 4), "train", 0) as src:
        src.next_batch()
        thread = src._thread
    assert not thread.is_alive()


def test_prefetch_keeps_a_few_batches_ready(indexed):
    with open_source(indexed(40, 2), "train", 0, prefetch=4) as src:
        deadline = time.time() + 2
        while src._queue.qsize() < 4 and time.time() < deadline:
            time.sleep(0.01)
        assert src._queue.qsize() == 4


def test_image_list_rand_skip(tmp_path, data_layer):
    from PIL import Image
    for i in range(5):
        Image.fromarray(np.full((2, 2), i, np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "l.txt").write_text("".join(f"{i}.png {i}\n" for i in range(5)))
    layer = data_layer('d: ImageData(source="l.txt", batch=5, is_color=false, rand_skip=5)', "test")
    starts = set()
    for seed in range(8):
        with open_source(layer, "test", seed) as src:
            (labels,) = labels_of(src, 1)
        assert labels == [(labels[0] + k) % 5 for k in range(5)]   # in list order from the skip
        starts.add(labels[0])
    assert len(starts) > 1


def test_a_dropped_source_stops_its_thread(indexed):
    src = open_source(indexed(12, 4), "train", 0)
    thread = src._thread
    del src
    gc.collect()
    thread.join(timeout=2)
    assert not thread.is_alive()
