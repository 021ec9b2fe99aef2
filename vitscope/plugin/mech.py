"""What the mechanistic plugins share (logit-lens, logit-attribution, head-stats, probe, cka):
per-image token features of a layer read in chunks, the dump's read-out weights checked, and
intervals for accuracies and means. Imports no torch.

    x = pooled(dump, "blocks.3.out", n, "cls")          # N×D: the CLS token of every image
    p, lo, hi = wilson(correct, total)                  # an accuracy with its 95% interval
"""
from __future__ import annotations

import numpy as np

from vitscope.errors import PluginError
from vitscope.plugin.reading import read_chunks, rows_per_read
from vitscope.plugin.tokens import cls_index

POOLS = ("cls", "mean")   # the CLS token, or the mean over the patch tokens
Z95 = 1.959963984540054


def pool_option(value: str) -> str:
    """An Option converter: 'cls' or 'mean'."""
    value = str(value).strip().lower()
    if value not in POOLS:
        raise ValueError(f"use one of {', '.join(POOLS)}, not {value!r}")
    return value


def pooled(dump, name: str, n: int, pool: str, plugin: str = "this plugin") -> np.ndarray:
    """N×D float32 features of the hook point `name` (N×T×D) for the first n images: the CLS
    token (`cls`) or the mean over the patch tokens (`mean`), read chunk by chunk, so only
    N×D is ever held (HDF5 reads just the CLS row for `cls`)."""
    ds = dump[name]
    layout = dump.layout
    if pool == "cls":
        select = (cls_index(layout, plugin),)
        return np.concatenate([c for _, c in read_chunks(ds, n, select=select)]) if n else \
            np.zeros((0, ds.shape[-1]), np.float32)
    prefix = layout.num_prefix_tokens
    parts = [c[:, prefix:].mean(axis=1) for _, c in read_chunks(ds, n, rows_per_read(ds))]
    return np.concatenate(parts) if parts else np.zeros((0, ds.shape[-1]), np.float32)


def require_readout(dump, plugin: str, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The dump's read-out weights (vitscope.model.readout); PluginError naming what is
    missing: a dump made before they were stored, or a model whose head is not one linear
    map of the CLS token."""
    readout = dump.readout
    missing = [k for k in keys if k not in readout]
    if not missing:
        return readout
    if not readout:
        why = "was made without the model's read-out weights (an older vitscope)"
        fix = "re-create it with `vitscope dump` (or let `vitscope analyze` capture a new one)"
    else:
        why = f"holds no {', '.join(missing)} (the model's head is not one linear map of " \
              f"the final-norm CLS token: pooled, distilled or two-layer heads)"
        fix = "use a model with a linear head on CLS"
    raise PluginError(f"{plugin} needs the model's {', '.join(missing)}, and '{dump.path}' "
                      f"{why}; {fix}.")


def wilson(k, n, z: float = Z95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(k/n, lower, upper): the Wilson score interval of a proportion (95% by default),
    elementwise; NaN where n is 0. Sound at 0% and 100% and for a few images, unlike k/n ± 1.96·se."""
    k, n = np.asarray(k, np.float64), np.asarray(n, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        den = 1 + z * z / n
        centre = (p + z * z / (2 * n)) / den
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return p, centre - half, centre + half


def mean_ci(values: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, lower, upper) over `axis` with a normal 95% interval of the mean (images are
    independent; used for means of many images, where the normal approximation holds)."""
    v = np.asarray(values, np.float64)
    m = v.mean(axis=axis)
    count = v.shape[axis]
    se = v.std(axis=axis, ddof=1) / np.sqrt(count) if count > 1 else np.full_like(m, np.nan)
    return m, m - Z95 * se, m + Z95 * se


class Moments:
    """Mean, spread and a normal 95% interval of per-image values of any shape, accumulated
    chunk by chunk in float64: memory is the shape, whatever the number of images."""

    def __init__(self) -> None:
        self.n = 0
        self.sum: np.ndarray | float = 0.0
        self.sq: np.ndarray | float = 0.0

    def add(self, values: np.ndarray) -> None:
        v = np.asarray(values, np.float64)
        self.n += len(v)
        self.sum = self.sum + v.sum(axis=0)
        self.sq = self.sq + np.square(v).sum(axis=0)

    @property
    def mean(self) -> np.ndarray:
        return np.asarray(self.sum, np.float64) / max(self.n, 1)

    @property
    def std(self) -> np.ndarray:
        """The sample standard deviation over images (ddof 1; NaN for one image)."""
        if self.n < 2:
            return np.full_like(self.mean, np.nan)
        var = (np.asarray(self.sq, np.float64) - self.n * np.square(self.mean)) / (self.n - 1)
        return np.sqrt(np.clip(var, 0, None))

    def ci(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean, lower, upper): mean ± 1.96 standard errors (NaN bounds for one image)."""
        m, se = self.mean, self.std / np.sqrt(max(self.n, 1))
        return m, m - Z95 * se, m + Z95 * se
