"""Numbers shared by the analyses: layer selection, patch maps, and "is it on the object".

Everything is vectorised over images: maps are N×h×w arrays on the dump's patch grid
(`dump.layout.grid`), masks are the dataset's N×H×W ground-truth object masks.
"""
from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np

from vitscope.errors import PluginError

_NAMED = ("all", "first", "middle", "last")
_RANGE = re.compile(r"^(\d+)-(\d+)$")
# One step of a chunked computation holds at most READ_ROWS images and about READ_BYTES of
# float32 data: what bounds a plugin's memory, whatever the number of images.
READ_BYTES = 8 << 20
READ_ROWS = 1024


def layer_spec(text: str) -> str:
    """Check the syntax of a layer selection ("first,middle,last", "0,5,-1", "2-5", "all").

    Used as an Option type: the depth is known only when rendering (select_layers).
    """
    text = str(text).strip().lower()
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise ValueError("expected layers such as 'first,middle,last', '0,5,-1', '2-5' or 'all'")
    for p in parts:
        if p not in _NAMED and not _RANGE.match(p) and not re.fullmatch(r"-?\d+", p):
            raise ValueError(f"'{p}' is not a layer: use first, middle, last, all, an index "
                             f"(negative counts from the end) or a range like 2-5")
    return ",".join(parts)


def select_layers(spec: str, depth: int, what: str = "layers") -> list[int]:
    """The sorted block indices a layer spec selects among `depth` blocks."""
    out: set[int] = set()
    for p in layer_spec(spec).split(","):
        if p == "all":
            out.update(range(depth))
        elif p == "first":
            out.add(0)
        elif p == "middle":
            out.add(depth // 2)
        elif p == "last":
            out.add(depth - 1)
        elif m := _RANGE.match(p):
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo or hi >= depth:
                raise PluginError(f"The {what} range '{p}' is outside the model's blocks "
                                  f"0–{depth - 1}; pick a range within them.")
            out.update(range(lo, hi + 1))
        else:
            i = int(p)
            if not -depth <= i < depth:
                raise PluginError(f"The {what} index {i} is outside the model's blocks "
                                  f"0–{depth - 1}; pick one within them (negative counts from "
                                  f"the end).")
            out.add(i % depth)
    return sorted(out)


def block_index(spec: int | None, depth: int, default: int, what: str) -> int:
    """One block index (negative counts from the end), or `default` when spec is None."""
    if spec is None:
        return default
    if not -depth <= spec < depth:
        raise PluginError(f"{what}={spec} is outside the model's blocks 0–{depth - 1}; pick one "
                          f"within them (negative counts from the end).")
    return spec % depth


def n_images(dump, limit: int | None) -> int:
    """How many of the dump's images a plugin uses."""
    return len(dump) if limit is None else max(0, min(len(dump), int(limit)))


def rows_for(row_bytes: int, chunk: int = 1) -> int:
    """Images per step so that one step holds about READ_BYTES, and at most READ_ROWS images,
    when an image costs `row_bytes` (both read at call time, so tests can shrink them):
    memory bounded by the step, never by N. A multiple of `chunk` (a dataset's HDF5 chunk
    rows) where larger, so each HDF5 chunk is read from disk once."""
    rows = max(1, min(READ_ROWS, READ_BYTES // max(int(row_bytes), 1)))
    return rows // chunk * chunk if rows >= chunk else rows


def rows_per_read(dataset, select: tuple = ()) -> int:
    """rows_for() one read of `dataset[start:stop, *select]` converted to float32."""
    shape = np.broadcast_to(np.empty((), bool), tuple(dataset.shape[1:]))[select].shape
    chunk = (getattr(dataset, "chunks", None) or (1,))[0]
    return rows_for(4 * int(np.prod(shape, dtype=np.int64)), chunk)


def read_chunks(dataset, n: int, batch: int | None = None, *, select: tuple = (),
                dtype=np.float32) -> Iterator[tuple[int, np.ndarray]]:
    """(start, array) over the first n rows, `batch` rows at a time (default rows_per_read).

    `select` indexes the other axes and is applied by HDF5 while reading, so only that part
    is read into memory and converted to `dtype`: `select=(slice(None), 0)` of an N×H×T×T
    attention dataset is the CLS row of every head (N×H×T), 1/T of the data.
    """
    batch = batch or rows_per_read(dataset, select)
    for start in range(0, n, batch):
        yield start, np.asarray(dataset[(slice(start, min(n, start + batch)), *select)],
                                dtype=dtype)


class ClassMeans:
    """Per-class means of per-image values, accumulated chunk by chunk: memory is C×... for
    the sums, whatever the number of images. Labels < 0 or >= num_classes are ignored."""

    def __init__(self, num_classes: int, shape: tuple[int, ...]) -> None:
        self.sums = np.zeros((num_classes, *shape), np.float64)
        self.counts = np.zeros(num_classes, np.float64)

    def add(self, values: np.ndarray, labels: np.ndarray) -> None:
        C = len(self.counts)
        keep = (labels >= 0) & (labels < C)
        labels = labels[keep]
        if not len(labels):
            return
        order = np.argsort(labels, kind="stable")
        labels = labels[order]
        starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])
        rows = np.asarray(values)[keep][order].reshape(len(labels), -1)
        # one reduction per class present in the chunk, vectorised: no C×N one-hot matrix
        self.sums.reshape(C, -1)[labels[starts]] += np.add.reduceat(rows, starts, axis=0,
                                                                    dtype=np.float64)
        self.counts += np.bincount(labels, minlength=C)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(means C×... float32, counts C); classes without images have mean 0."""
        shape = (len(self.counts),) + (1,) * (self.sums.ndim - 1)
        means = self.sums / np.maximum(self.counts, 1).reshape(shape)
        return means.astype(np.float32), self.counts.copy()


class NanMean:
    """The mean over images (axis 0) of N×... values, ignoring NaN, accumulated chunk by chunk."""

    def __init__(self) -> None:
        self.sum: np.ndarray | float = 0.0
        self.count: np.ndarray | float = 0.0

    def add(self, values: np.ndarray) -> None:
        values = np.asarray(values, np.float64)
        finite = ~np.isnan(values)
        self.sum = self.sum + np.where(finite, values, 0.0).sum(axis=0)
        self.count = self.count + finite.sum(axis=0)

    def result(self) -> np.ndarray:
        count = np.asarray(self.count, np.float64)
        return np.divide(self.sum, count, out=np.full(count.shape, np.nan), where=count > 0)


# ----------------------------------------------------------------------------- mask metrics


