"""Statistics over images: bootstrap CIs of means and of paired differences, and Spearman
correlations of two maps per image. Imports no torch.

Every interval is a percentile bootstrap over images (BOOTSTRAP resamples, seeded): images
are the unit of replication, and a method is said to beat a baseline only when the CI of the
paired per-image difference lies entirely on the better side of 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BOOTSTRAP = 1000
LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    """A mean over images with its bootstrap CI; `n` images had a defined value."""
    mean: float
    lo: float
    hi: float
    n: int

    def to_dict(self) -> dict:
        return {"mean": self.mean, "ci95": [self.lo, self.hi], "n": self.n}

    def text(self, digits: int = 3) -> str:
        if not np.isfinite(self.mean):
            return "—"
        return f"{self.mean:.{digits}f} [{self.lo:.{digits}f}, {self.hi:.{digits}f}]"


def bootstrap(values: np.ndarray, seed: int = 0, resamples: int = BOOTSTRAP) -> Estimate:
    """Mean of the finite values with a percentile bootstrap CI (NaN rows are left out)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(resamples, len(v)))].mean(axis=1)
    a = (1 - LEVEL) / 2
    lo, hi = np.quantile(means, [a, 1 - a])
    return Estimate(float(v.mean()), float(lo), float(hi), int(len(v)))


def paired(a: np.ndarray, b: np.ndarray, seed: int = 0) -> Estimate:
    """The mean per-image difference a − b with its bootstrap CI (images where either is NaN
    are left out)."""
    return bootstrap(np.asarray(a, np.float64) - np.asarray(b, np.float64), seed)


def better(diff: Estimate, higher_is_better: bool) -> bool:
    """Whether a paired difference (method − baseline) shows the method better: its CI lies
    entirely above 0 (or below, where lower is better)."""
    if diff.n == 0 or not np.isfinite(diff.lo):
        return False
    return diff.lo > 0 if higher_is_better else diff.hi < 0


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks along the last axis, ties given their average rank."""
    from scipy.stats import rankdata   # scipy comes with scikit-learn
    return rankdata(np.asarray(x, np.float64), axis=-1)


def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's ρ between a[i] and b[i] (flattened) for every image i; NaN where either map
    is constant (ρ undefined)."""
    ra = ranks(np.asarray(a).reshape(len(a), -1))
    rb = ranks(np.asarray(b).reshape(len(b), -1))
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    den = np.sqrt((ra ** 2).sum(axis=1) * (rb ** 2).sum(axis=1))
    return np.divide((ra * rb).sum(axis=1), den, out=np.full(len(ra), np.nan), where=den > 0)
