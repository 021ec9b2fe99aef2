"""`shapes:distractors`: a class shape beside distractor shapes that are never a class, so
that only a map that follows the model's evidence can point at the right object.

On `shapes` brightness alone wins the pointing game (the one object is always the lighter
thing in the image), so localisation cannot tell an explanation from "where it is bright".
Here every image holds one shape of its class (disk, square, triangle, cross or ring) and
DISTRACTORS more shapes drawn from the other five silhouettes (bar, star, crescent, pair,
triad), which never name a class. Every object, class or distractor, takes its size, rotation,
colour (lighter than the background by the same rule) and position from the same
distributions, on the same textured background with pixel noise; objects do not overlap. The
mask covers the class shape only. So brightness, edges, a centre prior or a uniform map can
point at the class shape only about as often as chance among the objects (a test measures
it), while the model must find the class shape to classify.

Positions are uniform on the torus, as in `shapes` (a shape crossing an edge re-enters on the
opposite side). Same seeds, same images; train and val use different streams.
"""
from __future__ import annotations

import numpy as np

from vitscope.data import shapes as S
from vitscope.data.base import ImageDataset

CLASSES = ["disk", "triangle", "ring", "bar", "star"]
DISTRACTOR_SHAPES = ["square", "cross", "crescent", "pair", "triad"]
DISTRACTORS = 1              # distractor shapes per image
SCALE = (0.18, 0.25)         # object radius as a fraction of the image side (two must fit)
GAP = 1.0                    # pixels between two objects' enclosing circles: no overlap
DEFAULTS = {"train": 10000, "val": 1000}


def generate(split: str, image_size: int = 32, *, train: int = DEFAULTS["train"],
             val: int = DEFAULTS["val"], seed: int = 0, spec: str = "shapes:distractors"):
    """The `split` part of shapes:distractors, deterministic for `seed`."""
    n = train if split == "train" else val
    rng = np.random.default_rng([seed, 11 if split == "train" else 12])
    labels = rng.permutation(np.arange(n) % len(CLASSES)).astype(np.int64)
    images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    masks = np.empty((n, image_size, image_size), dtype=bool)
    for start in range(0, n, S.CHUNK):
        stop = min(n, start + S.CHUNK)
        images[start:stop], masks[start:stop] = _render(labels[start:stop], image_size, rng)
    return ImageDataset(images=images, labels=labels, classes=list(CLASSES), masks=masks,
                        spec=spec, split=split, paths=None)


def _render(labels: np.ndarray, size: int, rng: np.random.Generator):
    n, f32 = len(labels), np.float32
    k = 1 + DISTRACTORS
    # object 0 is the class shape; the others are distractors (indices into shapes' _SHAPES)
    kinds = np.empty((n, k), np.int64)
    kinds[:, 0] = [S.CLASSES.index(CLASSES[c]) for c in labels]
    for j in range(1, k):
        kinds[:, j] = [S.CLASSES.index(DISTRACTOR_SHAPES[d])
                       for d in rng.integers(0, len(DISTRACTOR_SHAPES), n)]
    radius = (rng.uniform(*SCALE, (n, k)) * size).astype(f32)
    centres = _place(rng, radius, size)                                         # n×k×2
    theta = rng.uniform(-S.ROTATION, S.ROTATION, (n, k))
    image = rng.uniform(0, 1 - S.CONTRAST, (n, 3)).astype(f32)[:, None, None, :] \
        + S._texture(rng, n, size)[..., None]
    bg = image.copy()
    class_mask = np.zeros((n, size, size), bool)
    grid = np.arange(size, dtype=f32)
    for j in range(k):
        # the same colour rule for every object: lighter than the background in each channel
        base = bg.mean(axis=(1, 2))                                              # n×3
        fg = (base + S.CONTRAST + rng.uniform(0, 1, (n, 3)) * (1 - S.CONTRAST - base)).astype(f32)
        fg = np.clip(fg, 0, 1)
        cov = np.zeros((n, size, size), f32)
        c, s = np.cos(theta[:, j]).astype(f32), np.sin(theta[:, j]).astype(f32)
        for shape in np.unique(kinds[:, j]):
            idx = np.flatnonzero(kinds[:, j] == shape)
            inside = S._SHAPES[shape]
            cc, ss, r = c[idx, None, None], s[idx, None, None], radius[idx, j, None, None]
            acc = np.zeros((len(idx), size, size), f32)
            for oy in (0.25, 0.75):
                for ox in (0.25, 0.75):
                    dx = S._wrap((grid + f32(ox))[None, None, :] - centres[idx, j, 0, None, None], size)
                    dy = S._wrap((grid + f32(oy))[None, :, None] - centres[idx, j, 1, None, None], size)
                    acc += inside((cc * dx + ss * dy) / r, (cc * dy - ss * dx) / r)
            cov[idx] = acc * f32(0.25)
        image += cov[..., None] * (fg[:, None, None, :] - image)
        if j == 0:
            class_mask = cov >= 0.5
    image += rng.standard_normal(image.shape, dtype=f32) * f32(S.NOISE)
    np.clip(image, 0, 1, out=image)
    return (image * 255 + 0.5).astype(np.uint8), class_mask


def _place(rng: np.random.Generator, radius: np.ndarray, size: int) -> np.ndarray:
    """n×k×2 centres, uniform on the torus, the enclosing circles of every pair GAP apart
    (a centre that is too close is drawn again)."""
    n, k = radius.shape
    out = rng.uniform(0, size, (n, k, 2)).astype(np.float32)
    for j in range(1, k):
        todo = np.arange(n)
        while len(todo):
            d = S._wrap(out[todo, j, None, :] - out[todo, :j, :], size)          # t×j×2
            gap = radius[todo, j, None] + radius[todo, :j] + GAP
            far = (np.sqrt((d ** 2).sum(-1)) >= gap).all(axis=1)
            todo = todo[~far]
            out[todo, j] = rng.uniform(0, size, (len(todo), 2))
    return out
