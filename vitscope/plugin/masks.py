"""Is a map on the object? Mass in the mask and the pointing game, over patch grids.

The one implementation for the plugins' summaries and for `vitscope score`'s localisation, so
summary.json and score.json report the same numbers for the same maps. Imports no torch.

- coverage: N×h×w, the fraction of each patch's pixels inside the object (`patch_coverage`);
- maps: N×...×h×w (any extra axes, e.g. layers or heads, between N and the grid).
"""
from __future__ import annotations

import numpy as np

from vitscope.errors import PluginError

HIT_COVERAGE = 0.5          # a patch is "on the object" when at least half of it is


def patch_coverage(masks: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """N×H×W masks to N×h×w: the fraction of each patch's pixels inside the object."""
    masks = np.asarray(masks)
    n, H, W = masks.shape
    h, w = grid
    if H % h or W % w:
        raise PluginError(f"The masks ({H}×{W}) do not tile the patch grid {h}×{w}; the dump's "
                          f"masks and token layout disagree, so re-capture the dump.")
    m = masks.astype(np.float32).reshape(n, h, H // h, w, W // w)
    return m.mean(axis=(2, 4))


def _per_image(coverage: np.ndarray, ndim: int) -> np.ndarray:
    """N×h×w coverage shaped to broadcast against N×...×h×w maps of `ndim` axes."""
    return coverage.reshape(coverage.shape[0], *([1] * (ndim - 3)), *coverage.shape[1:])


def mass_in_mask(maps: np.ndarray, coverage: np.ndarray) -> np.ndarray:
    """Share of each map's positive mass on the object: sum(max(map,0)·coverage) / sum(max(map,0)).

    Returns N×... (NaN for a map with no positive mass). Negative values carry no mass. A map
    spread uniformly scores the mask's area fraction, so compare with `mask_area`."""
    m = np.maximum(np.asarray(maps, np.float64), 0)
    total = m.sum(axis=(-2, -1))
    inside = (m * _per_image(coverage, m.ndim)).sum(axis=(-2, -1))
    return np.divide(inside, total, out=np.full_like(total, np.nan), where=total > 0)


def mask_area(coverage: np.ndarray) -> np.ndarray:
    """Fraction of the image covered by the object, per image (N)."""
    return coverage.mean(axis=(-2, -1))


def pointing(maps: np.ndarray, coverage: np.ndarray,
             threshold: float = HIT_COVERAGE) -> np.ndarray:
    """The pointing game, N×...: 1 when the map's peak patch is on the object (coverage >=
    `threshold`), 0 when not, and for tied peaks the share of them on the object (the
    expected hit when one of them is picked at random), so a constant map scores the mask's
    share of patches instead of whatever the first patch happens to be."""
    m = np.asarray(maps, np.float64)
    flat = m.reshape(*m.shape[:-2], -1)
    peak = flat == np.nanmax(flat, axis=-1, keepdims=True)
    hit = _per_image(coverage, m.ndim).reshape(*((coverage.shape[0],) + (1,) * (m.ndim - 3)), -1)
    hit = hit >= threshold
    count = peak.sum(axis=-1)
    return np.divide((peak & hit).sum(axis=-1), count, out=np.full(count.shape, np.nan),
                     where=count > 0)


def mask_summary(maps: np.ndarray, coverage: np.ndarray) -> dict[str, float]:
    """Headline numbers for N×h×w maps: mass inside the mask vs the mask's area, pointing game."""
    return mask_summary_from(mass_in_mask(maps, coverage), mask_area(coverage),
                             pointing(maps, coverage))


def mask_summary_from(inside: np.ndarray, area: np.ndarray, hits: np.ndarray) -> dict[str, float]:
    """mask_summary from the per-image numbers (mass in mask, mask area, pointing), which
    chunked computations keep: a few bytes per image."""
    return {
        "mass_in_mask": float(np.nanmean(inside)),
        "mask_area": float(area.mean()),
        "mass_over_area": float(np.nanmean(inside) / max(area.mean(), 1e-12)),
        "pointing_game": float(np.nanmean(hits)),
    }
