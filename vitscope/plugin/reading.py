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


def cls_index(layout, plugin: str) -> int:
    """The CLS token's index along T; PluginError for a model without one (a plugin built on
    the CLS token has nothing to show there)."""
    index = layout.cls_index
    if index is None:
        raise PluginError(f"{plugin} reads the CLS token, and this model has none "
                          f"({layout.describe()}); use a plugin that reads the patch tokens.")
    return index


def other_prefix(layout) -> list[int]:
    """Token indices of the prefix tokens other than CLS (distillation, registers), in order."""
    skip = layout.cls_index
    return [i for i in range(layout.num_prefix_tokens) if i != skip]


def other_prefix_names(layout) -> str:
    """"4 register tokens" or "1 distillation token": the non-CLS prefix, for captions ("" if none)."""
    from vitscope.layout import KIND_NAMES
    parts = [f"{c} {KIND_NAMES.get(k, k)}" for k, c in layout.prefix if k != "cls"]
    if not parts:
        return ""
    n = len(other_prefix(layout))
    return " + ".join(parts) + (" tokens" if n > 1 else " token")


def prefix_note(layout, share: float | None = None, where: str = "the map") -> str:
    """What a CLS-based patch map does with the other prefix tokens, for a figure title:
    "4 register tokens left out of the map (they hold 12.3% of it)"; "" when there are none.
    `share` is the fraction of the row's mass (attention, rollout) that falls on them."""
    names = other_prefix_names(layout)
    if not names:
        return ""
    held = f" (they hold {share:.1%} of the row)" if share is not None and np.isfinite(share) else ""
    return f"{names} left out of {where}{held}"


def to_grid(tokens: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """...×P patch values (row-major, prefix tokens already removed) to ...×h×w."""
    return tokens.reshape(*tokens.shape[:-1], *grid)


# ----------------------------------------------------------------------------- mask metrics

def patch_coverage(masks: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """N×H×W masks to N×h×w: the fraction of each patch's pixels inside the object."""
    n, H, W = masks.shape
    h, w = grid
    if H % h or W % w:
        raise PluginError(f"The masks ({H}×{W}) do not tile the patch grid {h}×{w}; the dump's "
                          f"masks and token layout disagree, so re-capture the dump.")
    m = np.asarray(masks, dtype=np.float32).reshape(n, h, H // h, w, W // w)
    return m.mean(axis=(2, 4))


def mass_in_mask(maps: np.ndarray, coverage: np.ndarray) -> np.ndarray:
    """Fraction of each map's mass on the object: sum(map·coverage) / sum(map).

    maps: N×...×h×w non-negative, coverage: N×h×w. Returns N×... . A map spread uniformly
    scores the mask's area fraction, so compare with `mask_area`.
    """
    cov = coverage.reshape(coverage.shape[0], *([1] * (maps.ndim - 3)), *coverage.shape[1:])
    total = maps.sum(axis=(-2, -1))
    inside = (maps * cov).sum(axis=(-2, -1))
    return np.divide(inside, total, out=np.full_like(total, np.nan, dtype=np.float64),
                     where=total > 0)


def mask_area(coverage: np.ndarray) -> np.ndarray:
    """Fraction of the image covered by the object, per image (N)."""
    return coverage.mean(axis=(-2, -1))


def pointing_hits(maps: np.ndarray, coverage: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Whether each map's peak patch lies on the object (coverage >= threshold). N×... bool."""
    flat = maps.reshape(*maps.shape[:-2], -1)
    peak = flat.argmax(axis=-1)
    cov = coverage.reshape(coverage.shape[0], -1)
    cov = cov.reshape(cov.shape[0], *([1] * (peak.ndim - 1)), cov.shape[1])
    cov = np.broadcast_to(cov, (*peak.shape, cov.shape[-1]))
    return np.take_along_axis(cov, peak[..., None], axis=-1)[..., 0] >= threshold


def mask_summary(maps: np.ndarray, coverage: np.ndarray) -> dict[str, float]:
    """Headline numbers for N×h×w maps: mass inside the mask vs the mask's area, pointing game."""
    return mask_summary_from(mass_in_mask(maps, coverage), mask_area(coverage),
                        pointing_hits(maps, coverage))


def mask_summary_from(inside: np.ndarray, area: np.ndarray, hits: np.ndarray) -> dict[str, float]:
    """mask_summary from the per-image numbers (mass in mask, mask area, pointing hit), which
    chunked computations keep: a few bytes per image."""
    return {
        "mass_in_mask": float(np.nanmean(inside)),
        "mask_area": float(area.mean()),
        "mass_over_area": float(np.nanmean(inside) / max(area.mean(), 1e-12)),
        "pointing_game": float(np.mean(hits)),
    }
