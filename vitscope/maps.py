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


def read_chunks(dataset, n: int, batch: int = 256) -> Iterator[tuple[int, np.ndarray]]:
    """(start, float32 array) over the first n rows, `batch` rows at a time (bounded memory)."""
    for start in range(0, n, batch):
        yield start, np.asarray(dataset[start:min(n, start + batch)], dtype=np.float32)


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
    inside = mass_in_mask(maps, coverage)
    area = mask_area(coverage)
    return {
        "mass_in_mask": float(np.nanmean(inside)),
        "mask_area": float(area.mean()),
        "mass_over_area": float(np.nanmean(inside) / max(area.mean(), 1e-12)),
        "pointing_game": float(pointing_hits(maps, coverage).mean()),
    }
