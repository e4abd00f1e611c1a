"""open_source: a data layer's batches, transformed, read ahead on a background thread.

Every batch is a pure function of (seed, epoch, index in the epoch where it starts):
the epoch's order comes from `default_rng([seed, epoch])` and the batch's crops,
flips and colour weights from `default_rng([seed, epoch, index, 1])`. So position()
is simply where the consumer stands, and seek() reproduces the stream exactly however
far the prefetcher had read ahead.

A batch that reaches the end of an epoch takes the remaining examples and goes on
from the start of the next epoch (in its new order), as Caffe's data layers do.
"""
from __future__ import annotations

import queue
import threading
import weakref

import numpy as np

from netc.data import sources
from netc.data.transform import PCA_SAMPLE, Transform, colour_pca
from netc.errors import NetcError
from netc.ir import Layer

PREFETCH = 4                 # batches kept ready
IMAGE_PCA_SAMPLE = 1_000     # image lists decode each sampled file, so sample fewer
_POLL = 0.05                 # seconds between checks of the stop flag while blocked

NOT_FILES = {
    "DummyData": "DummyData is synthetic: the executor fills it itself",
    "MemoryData": "MemoryData is filled by a program, not read from files",
    "Input": "an Input layer is fed by the caller",
}


def open_source(layer: Layer, phase: str, seed: int, prefetch: int = PREFETCH) -> "Source":
    """The batches of a data-source layer in `phase` ("train" or "test")."""
    phase = phase.lower()
    if phase not in ("train", "test"):
        raise ValueError(f"phase is 'train' or 'test', not {phase!r}")
    p = layer.params
    if layer.type == "Data":
        raise NetcError(f"netc cannot read Caffe's {p.get('backend', 'LMDB')} databases "
                        f"(Data layer '{layer.name}')", layer.span,
                        "convert the data to IDX files (IDXData), an image list (ImageData) "
                        "or .npy/.npz arrays (NpyData)")
    if layer.type not in sources.READERS:
        why = NOT_FILES.get(layer.type, f"{layer.type} is not a data source")
        raise NetcError(f"layer '{layer.name}' has no files to read: {why}", layer.span)
    want_labels = len(layer.tops) > 1
    examples = sources.READERS[layer.type](p, layer.span, want_labels)
    what = f"'{p['source']}'"
    if not len(examples):
        raise NetcError(f"{what} holds no examples", layer.span)
    shape = tuple(examples.example_shape)
    if p.get("shape") and tuple(p["shape"]) != shape:
        raise NetcError(f"shape={list(p['shape'])} but the examples of {what} are {list(shape)}", layer.span,
                        f"write shape={list(shape)}, or leave it out to take the source's own")
    train = phase == "train"
    mean_image = None
    if p.get("mean_file"):
        mean_path = sources.found(p["mean_file_path"], "mean_file", layer.span)
        from netc.caffe.blobproto import read_blobproto   # protobuf only when a mean file is used

        mean_image = read_blobproto(mean_path, "mean file")
        if tuple(mean_image.shape) != shape:
            raise NetcError(f"the mean file '{mean_path}' is {list(mean_image.shape)} but the examples of "
                            f"{what} are {list(shape)}", layer.span,
                            "the mean image must have the examples' size before cropping")
    pca = None
    if train and p.get("pca_color", 0) > 0:
        if len(shape) != 3:
            raise NetcError(f"pca_color needs [C, H, W] examples; {what} holds {list(shape)}", layer.span)
        limit = IMAGE_PCA_SAMPLE if isinstance(examples, sources.ImageList) else PCA_SAMPLE
        pca = colour_pca(examples, limit, seed)
    transform = Transform(p, train, shape, mean_image=mean_image, pca=pca, pixel_unit=examples.pixel_unit,
                          span=layer.span, what=what)
    shuffle = p.get("shuffle")
    if shuffle is None:
        shuffle = train
    start = 0
    if p.get("rand_skip"):
        # Caffe's ImageData skips rand() % rand_skip lines once, at the very start
        start = int(np.random.default_rng([seed, 0x5C1B]).integers(p["rand_skip"])) % len(examples)
    return Source(examples, transform, p["batch_size"], tuple(layer.tops), seed, shuffle,
                  name=layer.name, start=start, prefetch=prefetch)


class Source:
    """A stream of batches; see the module docstring for how it is ordered."""

    def __init__(self, examples, transform: Transform, batch_size: int, tops: tuple[str, ...], seed: int,
                 shuffle: bool, *, name: str = "data", start: int = 0, prefetch: int = PREFETCH):
        self.examples = examples
        self.transform = transform
        self.batch_size = batch_size
        self.tops = tops
        self.seed = int(seed) % 2**63    # SeedSequence takes non-negative entropy
        self.shuffle = shuffle
        self.name = name
        self.prefetch = max(1, prefetch)
        self._epoch, self._index = 0, start
        self._orders: dict[int, np.ndarray] = {}
        self._orders_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._closed = False
        self._start_thread()

    @property
    def num_examples(self) -> int:
        return len(self.examples)

    # --- the stream as a pure function ---------------------------------------------------------
    def order(self, epoch: int) -> np.ndarray:
        """The example indices of an epoch, in the order they are served."""
        with self._orders_lock:
            order = self._orders.get(epoch)
            if order is None:
                n = len(self.examples)
                order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
                if len(self._orders) >= 2:   # the producer needs at most this epoch and the next
                    self._orders.pop(min(self._orders))
                self._orders[epoch] = order
            return order

    def make_batch(self, epoch: int, index: int) -> tuple[dict[str, np.ndarray], tuple[int, int]]:
        """The batch starting at (epoch, index) and the position after it."""
        rng = np.random.default_rng([self.seed, epoch, index, 1])
        n = len(self.examples)
        picked, need, e, i = [], self.batch_size, epoch, index
        while need:
            part = self.order(e)[i:i + need]
            picked.append(part)
            need -= len(part)
            i += len(part)
            if i == n:
                e, i = e + 1, 0
        data, labels = self.examples.take(np.concatenate(picked))
        batch = {self.tops[0]: self.transform(data, rng)}
        if len(self.tops) > 1:
            batch[self.tops[1]] = labels
        return batch, (e, i)

    # --- consumer side -------------------------------------------------------------------------
    def next_batch(self) -> dict[str, np.ndarray]:
        """The next batch: top name -> float32 array. Errors met while reading ahead
        are raised here."""
        if self._closed:
            raise RuntimeError(f"data source '{self.name}' is closed")
        if self._error is not None:
            raise self._error
        while True:
            try:
                item = self._queue.get(timeout=_POLL)
                break
            except queue.Empty:
                if self._thread is None or not self._thread.is_alive():
                    if self._queue.empty():
                        raise RuntimeError(f"the prefetch thread of '{self.name}' stopped") from None
        if isinstance(item, BaseException):
            self._error = item
            raise item
        batch, (self._epoch, self._index) = item
        return batch

    def position(self) -> dict:
        """Where the consumer stands: the batch next_batch() returns next starts here."""
        return {"epoch": self._epoch, "index": self._index}

    def seek(self, position: dict) -> None:
        """Continue from a position() of this source (same data, batch size and seed)."""
        try:
            epoch, index = int(position["epoch"]), int(position["index"])
        except (KeyError, TypeError, ValueError):
            raise NetcError(f"data position {position!r} of '{self.name}' is not "
                            "{'epoch': E, 'index': I}") from None
        if epoch < 0 or not 0 <= index < len(self.examples):
            raise NetcError(f"data position {position!r} of '{self.name}' is outside its "
                            f"{len(self.examples)} examples", None,
                            "resume with the same data set the snapshot was taken with")
        self._stop_thread()
        self._epoch, self._index = epoch, index
        self._error = None
        self._start_thread()

    def close(self) -> None:
        """Stop reading ahead; the thread is joined before this returns."""
        self._closed = True
        self._stop_thread()

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- producer side -------------------------------------------------------------------------
    def _start_thread(self) -> None:
        self._stop = threading.Event()
        self._queue = queue.Queue(maxsize=self.prefetch)
        # the thread holds the source weakly, so a source dropped without close() still stops it
        self._thread = threading.Thread(target=_produce, args=(weakref.ref(self), (self._epoch, self._index),
                                                               self._queue, self._stop),
                                        name=f"netc-data-{self.name}", daemon=True)
        self._thread.start()

    def _stop_thread(self) -> None:
        self._stop.set()
        if self._thread is not None:
            if self._thread is not threading.current_thread():
                self._thread.join()
            self._thread = None

    def __del__(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()


def _produce(source_ref, position: tuple[int, int], out: queue.Queue, stop: threading.Event) -> None:
    # queue and flag are this thread's own, so a seek() never sees a stale batch
    try:
        while not stop.is_set():
            source = source_ref()
            if source is None:
                return
            batch, position = source.make_batch(*position)
            del source
            if not _put(out, (batch, position), stop):
                return
    except BaseException as err:   # handed to the consumer, raised by next_batch()
        _put(out, err, stop)


def _put(out: queue.Queue, item, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            out.put(item, timeout=_POLL)
            return True
        except queue.Full:
            continue
    return False
