"""The training data pipeline: readers (sources), Caffe's transforms (transform),
and open_source (loader), which serves a data layer's batches from a prefetch thread.

    with open_source(layer, "train", seed) as src:
        batch = src.next_batch()        # {"data": [N, C, H, W], "label": [N]}, float32
        saved = src.position()          # JSON-able; src.seek(saved) resumes bit-identically
"""
from netc.data.loader import Source, open_source
from netc.errors import NetcError as DataError

__all__ = ["DataError", "Source", "open_source"]
