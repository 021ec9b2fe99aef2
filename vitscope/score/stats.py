"""Statistics over images: intervals of means, of paired differences and of proportions, the
two-level interval over weight draws and images, and Spearman correlations of two maps per
image. Imports no torch.

Intervals come from scipy where it has them: `scipy.stats.bootstrap` (BCa, BOOTSTRAP
resamples, seeded) for means and, with `paired=True`, for per-image differences. What scipy
lacks is here:
- `wilson`: the Wilson score interval of a proportion whose "successes" may be fractional
  (the pointing game counts a tied peak as the expected hit of a random pick; scipy's
  `binomtest(k, n).proportion_ci("wilson")` needs an integer k). A percentile bootstrap of
  0/1 values collapses to [1, 1] when every image hits; Wilson's does not.
- `two_level`: a mean over a draws × images grid (the randomisation test), with an interval
  from resampling draws and images, each with replacement (a crossed two-way bootstrap: the
  same images are used in every draw), so the interval covers both the images and the
  independent weight draws; BCa is not defined for it, so it is a percentile interval.
- `spearman`: ρ per image over flattened maps, NaN for a constant map.

Images are the unit of replication; a method is said to beat a baseline only when the
interval of the paired per-image difference lies entirely on the better side of 0.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

BOOTSTRAP = 1000
LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    """A mean over images with its 95% interval; `n` images had a defined value."""
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


def _finite(values) -> np.ndarray:
    v = np.asarray(values, np.float64).ravel()
    return v[np.isfinite(v)]


def _scipy_interval(data: tuple, statistic, seed: int, paired: bool) -> tuple[float, float]:
    from scipy.stats import bootstrap as scipy_bootstrap
    with warnings.catch_warnings():
        # BCa on a sample with few distinct values warns and may give NaN: handled below
        warnings.simplefilter("ignore")
        res = scipy_bootstrap(data, statistic, n_resamples=BOOTSTRAP, confidence_level=LEVEL,
                              method="BCa", paired=paired, vectorized=True,
                              random_state=np.random.default_rng(seed))
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (np.isfinite(lo) and np.isfinite(hi)):    # degenerate: fall back to percentiles
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = scipy_bootstrap(data, statistic, n_resamples=BOOTSTRAP,
                                  confidence_level=LEVEL, method="percentile", paired=paired,
                                  vectorized=True, random_state=np.random.default_rng(seed))
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return lo, hi


def _mean(x, axis=-1):
    return np.mean(x, axis=axis)


def bootstrap(values: np.ndarray, seed: int = 0, resamples: int = BOOTSTRAP) -> Estimate:
    """Mean of the finite values with a BCa bootstrap 95% interval (scipy.stats.bootstrap);
    NaN rows are left out. All values equal: the interval is that value; one value: none."""
    v = _finite(values)
    if len(v) == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    mean = float(v.mean())
    if len(v) == 1:
        return Estimate(mean, float("nan"), float("nan"), 1)
    if np.ptp(v) == 0:
        return Estimate(mean, mean, mean, int(len(v)))
    lo, hi = _scipy_interval((v,), _mean, seed, paired=False)
    return Estimate(mean, lo, hi, int(len(v)))


def paired(a: np.ndarray, b: np.ndarray, seed: int = 0) -> Estimate:
    """The mean per-image difference a − b with its paired BCa bootstrap interval (images
    where either is NaN are left out)."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    d = a - b
    if len(d) < 2 or np.ptp(d) == 0:
        return bootstrap(d, seed)
    lo, hi = _scipy_interval((a, b), lambda x, y, axis=-1: np.mean(x - y, axis=axis), seed,
                             paired=True)
    return Estimate(float(d.mean()), lo, hi, int(len(d)))


def wilson(values: np.ndarray, level: float = LEVEL) -> Estimate:
    """A proportion: the mean of per-image values in [0, 1] (1 = hit; a fraction = the expected
    hit of a random pick among ties), with the Wilson score interval for sum(values) successes
    in n trials."""
    v = _finite(values)
    n = len(v)
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    from scipy.stats import norm
    z = float(norm.ppf(0.5 + level / 2))
    p = float(v.mean())
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return Estimate(p, float(max(0.0, centre - half)), float(min(1.0, centre + half)), n)


@dataclass(frozen=True)
class DrawEstimate:
    """A mean over draws × images with its two-level interval, and the spread across draws."""
    estimate: Estimate          # n: image values that were defined, over all draws
    draws: list[float]          # the mean of each draw (over its images)
    per_draw_n: list[int]       # images with a defined value in each draw

    def to_dict(self) -> dict:
        d = self.estimate.to_dict()
        finite = [x for x in self.draws if np.isfinite(x)]
        d.update({"draws": self.draws, "per_draw_n": self.per_draw_n,
                  "draw_range": [min(finite), max(finite)] if finite else [None, None]})
        return d


def two_level(values: np.ndarray, seed: int = 0, resamples: int = BOOTSTRAP) -> DrawEstimate:
    """Mean of a D×N grid (D independent weight draws of the same N images; NaN = undefined)
    with a percentile interval from resampling draws and images independently, each with
    replacement (crossed two-way bootstrap), and each draw's own mean."""
    v = np.asarray(values, np.float64)
    if v.ndim == 1:
        v = v[None]
    d, n = v.shape
    ok = np.isfinite(v)
    per_draw = [float(np.nanmean(row)) if np.isfinite(row).any() else float("nan") for row in v]
    counts = [int(c) for c in ok.sum(axis=1)]
    if not ok.any():
        return DrawEstimate(Estimate(float("nan"), float("nan"), float("nan"), 0), per_draw, counts)
    mean = float(v[ok].mean())
    rng = np.random.default_rng(seed)
    filled = np.where(ok, v, 0.0)
    means = np.empty(resamples)
    for r in range(resamples):      # resamples × (D + N) indices: cheap at any realistic size
        rows = rng.integers(0, d, d)
        cols = rng.integers(0, n, n)
        w = ok[np.ix_(rows, cols)]
        s = w.sum()
        means[r] = filled[np.ix_(rows, cols)].sum() / s if s else np.nan
    a = (1 - LEVEL) / 2
    lo, hi = np.nanquantile(means, [a, 1 - a])
    return DrawEstimate(Estimate(mean, float(lo), float(hi), int(ok.sum())), per_draw, counts)


def better(diff: Estimate, higher_is_better: bool) -> bool:
    """Whether a paired difference (method − baseline) shows the method better: its interval
    lies entirely above 0 (or below, where lower is better)."""
    if diff.n == 0 or not np.isfinite(diff.lo):
        return False
    return diff.lo > 0 if higher_is_better else diff.hi < 0


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks along the last axis, ties given their average rank."""
    from scipy.stats import rankdata
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


def constant(maps: np.ndarray) -> np.ndarray:
    """N bool: which maps hold one value everywhere (their ρ with anything is undefined)."""
    flat = np.asarray(maps, np.float64).reshape(len(maps), -1)
    return np.ptp(flat, axis=1) == 0


def tie_fraction(maps: np.ndarray) -> np.ndarray:
    """N: per map, the share of patches whose value another patch of the same map shares (the
    patches a relevance order must put in random order)."""
    flat = np.sort(np.asarray(maps, np.float64).reshape(len(maps), -1), axis=1)
    same = flat[:, 1:] == flat[:, :-1]
    tied = np.zeros(flat.shape, bool)
    tied[:, 1:] |= same
    tied[:, :-1] |= same
    return tied.mean(axis=1)
