"""Localisation: does a map land on the object? Mass in mask and the pointing game, for the
maps and for maps that know nothing of the model. Imports no torch.

Baselines (all N×h×w on the patch grid):
- `uniform`: every patch alike; its mass in mask is the mask's area, and its pointing game is
  that of a random patch (ties count as a uniformly random choice among the tied peaks).
- `centre`: a centred Gaussian, σ = 2 patches: a fixed centre prior.
- `brightness`: each patch's mean luminance; `edges`: each patch's mean Sobel gradient
  magnitude of the luminance. Image-only maps: they read the pixels, never the model.

Pointing game: the share of images whose peak patch lies on the object (coverage ≥ 0.5);
where several patches tie for the peak, the expected hit of a random pick among them, so a
constant map scores a random patch's chance rather than that of the first patch.
"""
from __future__ import annotations

import numpy as np

from vitscope.plugin.masks import HIT_COVERAGE, mass_in_mask, patch_coverage, pointing  # noqa: F401  (score's localisation API)

CENTRE_SIGMA = 2.0          # patches
BASELINES = ("uniform", "centre", "brightness", "edges")
LUMA = np.array([0.299, 0.587, 0.114], np.float32)   # ITU-R BT.601


def centred_gaussian(grid: tuple[int, int], sigma: float = CENTRE_SIGMA) -> np.ndarray:
    h, w = grid
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    return np.exp(-(((y - (h - 1) / 2) ** 2 + (x - (w - 1) / 2) ** 2) / (2 * sigma ** 2)))


def luminance(images: np.ndarray) -> np.ndarray:
    """N×H×W×3 uint8 -> N×H×W float32 in [0, 1]."""
    return np.asarray(images, np.float32) @ LUMA / 255.0


def pool(pixels: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """N×H×W -> N×h×w means over each patch."""
    n, H, W = pixels.shape
    h, w = grid
    return pixels.reshape(n, h, H // h, w, W // w).mean(axis=(2, 4))


def sobel_magnitude(gray: np.ndarray) -> np.ndarray:
    """N×H×W -> N×H×W gradient magnitude of the 3×3 Sobel operator (edges replicated)."""
    p = np.pad(gray, ((0, 0), (1, 1), (1, 1)), mode="edge")
    gx = (p[:, :-2, 2:] + 2 * p[:, 1:-1, 2:] + p[:, 2:, 2:]
          - p[:, :-2, :-2] - 2 * p[:, 1:-1, :-2] - p[:, 2:, :-2])
    gy = (p[:, 2:, :-2] + 2 * p[:, 2:, 1:-1] + p[:, 2:, 2:]
          - p[:, :-2, :-2] - 2 * p[:, :-2, 1:-1] - p[:, :-2, 2:])
    return np.hypot(gx, gy)


def baseline_maps(images: np.ndarray, grid: tuple[int, int]) -> dict[str, np.ndarray]:
    """The four baselines for N×H×W×3 images, each N×h×w."""
    n = len(images)
    gray = luminance(images)
    return {"uniform": np.ones((n, *grid)),
            "centre": np.broadcast_to(centred_gaussian(grid), (n, *grid)).copy(),
            "brightness": pool(gray, grid),
            "edges": pool(sobel_magnitude(gray), grid)}
