"""`shapes`: ten classes of simple silhouettes, generated procedurally with numpy (offline).

Each image holds one shape at a random position, scale, rotation and colour on a background
of a random colour with a sinusoidal texture and pixel noise, so neither colour nor
position tells the class: only the silhouette does. Positions are uniform on the torus (a
shape crossing an edge re-enters on the opposite side, whole): every pixel is equally likely
to be on the object, so no fixed map — a centre prior — localises it (a test checks that a
centred Gaussian scores no better than a uniform map). Models for it suit circular padding
(`model.stem_padding = "circular"`, as in the shapes-quick recipe). The shape is always lighter than its
background (in every channel), which keeps figure and ground separable at 32×32 and makes
the set learnable by a small ViT in a short CPU run. Every image comes with its ground-truth
object mask, which lets an explanation be scored on whether it points at the object.

Generation is vectorised over coordinate grids (no per-pixel Python), at the requested size
(never resized), with 2×2 supersampling for antialiased edges. The same seed always gives
the same images; train and val use different streams of that seed.
"""
from __future__ import annotations

import difflib

import numpy as np

from vitscope.data.base import ImageDataset
from vitscope.errors import DataError

CLASSES = ["disk", "square", "triangle", "cross", "ring", "bar", "star", "crescent", "pair", "triad"]
DEFAULTS = {"train": 20000, "val": 2000}
OPTIONS = ("train", "val", "seed")
SCALE = (0.32, 0.45)     # shape radius as a fraction of the image side
CONTRAST = 0.35          # the shape is at least this much lighter than the background, per channel
TEXTURE = (0.02, 0.06)   # amplitude range of each of the two background gratings
NOISE = 0.02             # std of the Gaussian pixel noise
ROTATION = np.pi         # rotation angles are uniform in [-ROTATION, ROTATION] radians
CHUNK = 1024             # images generated at once (bounds memory at any N)


def parse_options(arg: str, spec: str) -> dict[str, int]:
    """`"train=100,val=50,seed=3"` -> {"train": 100, "val": 50, "seed": 3}."""
    opts: dict[str, int] = {}
    for item in filter(None, (s.strip() for s in arg.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        if key not in OPTIONS:
            close = difflib.get_close_matches(key, OPTIONS, 1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise DataError(f"Unknown option '{key}' in dataset spec '{spec}'{hint}; shapes "
                            f"accepts {', '.join(OPTIONS)}, e.g. shapes:train=20000,val=2000,seed=0.")
        try:
            number = int(value)
        except ValueError:
            number = -1
        if not eq or number < (0 if key == "seed" else 1):
            raise DataError(f"Option '{item}' in dataset spec '{spec}' needs a "
                            f"{'non-negative' if key == 'seed' else 'positive'} integer, "
                            f"e.g. {key}={DEFAULTS.get(key, 0)}.")
        opts[key] = number
    return opts


def generate(split: str, image_size: int = 32, *, train: int = DEFAULTS["train"],
             val: int = DEFAULTS["val"], seed: int = 0, spec: str = "shapes"):
    """The `split` part of shapes: `train` or `val` images, deterministic for `seed`."""

    n = train if split == "train" else val
    rng = np.random.default_rng([seed, 1 if split == "train" else 2])
    labels = rng.permutation(np.arange(n) % len(CLASSES)).astype(np.int64)  # balanced classes
    images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    masks = np.empty((n, image_size, image_size), dtype=bool)
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        images[start:stop], masks[start:stop] = _render(labels[start:stop], image_size, rng)
    return ImageDataset(images=images, labels=labels, classes=list(CLASSES), masks=masks,
                        spec=spec, split=split, paths=None)


def _render(labels: np.ndarray, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n = len(labels)
    f32 = np.float32
    radius = (rng.uniform(*SCALE, n) * size).astype(f32)
    # Centres uniform over the whole image, offsets taken on the torus (an object crossing
    # an edge re-enters on the opposite side): every pixel is equally likely to lie on the
    # object, so no fixed map (a centre prior) can localise it.
    cx = rng.uniform(0, size, n).astype(f32)
    cy = rng.uniform(0, size, n).astype(f32)
    theta = rng.uniform(-ROTATION, ROTATION, n)
    cos, sin = np.cos(theta).astype(f32), np.sin(theta).astype(f32)
    fg, bg = _colours(rng, n)

    # Coverage of each pixel by its shape, from 2x2 sub-pixel samples (antialiased edges).
    # Each class is computed on its own images only, in shape coordinates (u, v) = the pixel
    # offset from the centre, rotated by -theta and divided by the radius.
    coverage = np.zeros((n, size, size), dtype=f32)
    grid = np.arange(size, dtype=f32)
    for k, inside in enumerate(_SHAPES):
        idx = np.flatnonzero(labels == k)
        if not len(idx):
            continue
        c, s, r = cos[idx, None, None], sin[idx, None, None], radius[idx, None, None]
        acc = np.zeros((len(idx), size, size), dtype=f32)
        for oy in (0.25, 0.75):
            for ox in (0.25, 0.75):
                dx = _wrap((grid + f32(ox))[None, None, :] - cx[idx, None, None], size)
                dy = _wrap((grid + f32(oy))[None, :, None] - cy[idx, None, None], size)
                acc += inside((c * dx + s * dy) / r, (c * dy - s * dx) / r)
        coverage[idx] = acc * f32(0.25)
    mask = coverage >= 0.5

    alpha = coverage[..., None]
    image = bg[:, None, None, :] + _texture(rng, n, size)[..., None]
    image += alpha * (fg[:, None, None, :] - image)
    image += rng.standard_normal(image.shape, dtype=f32) * f32(NOISE)
    np.clip(image, 0, 1, out=image)
    return (image * 255 + 0.5).astype(np.uint8), mask


def _wrap(d: np.ndarray, size: int) -> np.ndarray:
    """Offsets on a torus of side `size`: the shortest signed distance, in [-size/2, size/2)."""
    half = np.float32(size / 2)
    return np.mod(d + half, np.float32(size)) - half


def _colours(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Random shape and background colours (float32, 0..1).

    Any hue for both, but the shape is always the lighter one in every channel (by at least
    CONTRAST), so figure and ground separate without the colour saying anything about the class.
    """
    bg = rng.uniform(0, 1 - CONTRAST, (n, 3))
    fg = bg + CONTRAST + rng.uniform(0, 1, (n, 3)) * (1 - CONTRAST - bg)
    return fg.astype(np.float32), bg.astype(np.float32)


def _texture(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """n×size×size brightness texture: two random sinusoidal gratings (zero mean)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = np.zeros((n, size, size), dtype=np.float32)
    for _ in range(2):
        freq = rng.uniform(1, 5, n) * 2 * np.pi
        angle = rng.uniform(0, np.pi, n)
        phase = rng.uniform(0, 2 * np.pi, n).astype(np.float32)[:, None, None]
        amp = rng.uniform(*TEXTURE, n).astype(np.float32)[:, None, None]
        fx = (freq * np.cos(angle)).astype(np.float32)[:, None, None]
        fy = (freq * np.sin(angle)).astype(np.float32)[:, None, None]
        out += amp * np.sin(fx * x + fy * y + phase)
    return out


# Silhouettes in shape coordinates (u, v): the shape fits in the unit disk, centred at 0.
def _regular_polygon(sides: int, inradius: float):
    angles = np.pi / 2 + np.pi / sides + 2 * np.pi * np.arange(sides) / sides  # edge normals
    normals = [(np.cos(a), np.sin(a)) for a in angles]

    def inside(u, v):
        proj = np.max(np.stack([u * c + v * s for c, s in normals]), axis=0)
        return proj < inradius
    return inside


def _disk(u, v):
    return u * u + v * v < 0.85 ** 2


def _square(u, v):
    return np.maximum(np.abs(u), np.abs(v)) < 0.7


def _cross(u, v):
    au, av = np.abs(u), np.abs(v)
    return ((au < 0.26) & (av < 0.95)) | ((av < 0.26) & (au < 0.95))


def _ring(u, v):
    rr = u * u + v * v
    return (rr < 0.95 ** 2) & (rr > 0.55 ** 2)


def _bar(u, v):
    return (np.abs(u) < 0.95) & (np.abs(v) < 0.22)


def _star(u, v):
    # Five points: the radius limit falls linearly from 1 at each tip to 0.4 between tips.
    t = np.mod(np.arctan2(v, u) * (5 / (2 * np.pi)) + 0.25, 1.0)
    return np.sqrt(u * u + v * v) < 0.4 + 0.6 * np.abs(2 * t - 1)


def _crescent(u, v):
    return (u * u + v * v < 0.9 ** 2) & ((u - 0.45) ** 2 + v * v > 0.72 ** 2)


def _pair(u, v):
    return np.minimum((u - 0.55) ** 2, (u + 0.55) ** 2) + v * v < 0.36 ** 2


def _triad(u, v):
    # three dots on the corners of an equilateral triangle
    d = [(u - 0.6 * np.cos(a)) ** 2 + (v - 0.6 * np.sin(a)) ** 2
         for a in np.pi / 2 + np.arange(3) * 2 * np.pi / 3]
    return np.minimum(np.minimum(d[0], d[1]), d[2]) < 0.33 ** 2


_SHAPES = [_disk, _square, _regular_polygon(3, 0.5), _cross, _ring, _bar, _star, _crescent,
           _pair, _triad]
