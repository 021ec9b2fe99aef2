"""Decode one image file of any format and size into a square uint8 RGB array.

The resize policy (shared by folder datasets and `vitscope predict`, so a model sees files the
same way in both): apply the EXIF orientation, convert to RGB (alpha is dropped, palettes and
greyscale expanded, the first frame of an animation is used), resize so the SHORTER side equals
`size` (bicubic, antialiased when shrinking), then crop the centre `size`×`size` square.

Only numpy and PIL are imported here: decoding workers import this module alone.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

_EXTENSIONS: frozenset[str] | None = None


def image_extensions() -> frozenset[str]:
    """File extensions PIL can open (".jpg", ".png", ".webp", ...), lower case."""
    global _EXTENSIONS
    if _EXTENSIONS is None:
        Image.init()
        _EXTENSIONS = frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items()
                                if fmt in Image.OPEN)
    return _EXTENSIONS


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in image_extensions()


def decode_image(path: str | Path, size: int) -> np.ndarray:
    """`size`×`size`×3 uint8 (see the module docstring); raises on unreadable files."""
    with Image.open(path) as img:
        if img.format == "JPEG":
            img.draft("RGB", (size, size))  # let libjpeg decode at a reduced scale >= size
        img = ImageOps.exif_transpose(img)
        img = _to_rgb(img)
        w, h = img.size
        scale = size / min(w, h)
        new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
        left, top = (new_w - size) // 2, (new_h - size) // 2
        img = img.crop((left, top, left + size, top + size))
        return np.asarray(img, dtype=np.uint8).copy()


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB, with 16-bit and float images scaled to 8 bits first: PIL's convert() clips them at
    255, which turns a 16-bit greyscale PNG almost white."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        a = np.asarray(img, dtype=np.float64)
        if img.mode == "F":
            lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
            a = (a - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(a)
        else:   # integer samples: their full 16-bit range (or the data's, if wider)
            a = a * (255 / max(65535.0, float(a.max())))
        img = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    return img.convert("RGB")


def describe_error(e: BaseException) -> str:
    """A short reason for a file that failed to decode, e.g. "cannot identify image file"."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if "cannot identify image file" in text:
        text = "not an image PIL can read"
    return f"{text[:120]}" if text else type(e).__name__


def decode_many(paths: list[str], size: int) -> tuple[np.ndarray, list[str | None]]:
    """Decode a list of files: (k×size×size×3 uint8, per-file error or None).

    Runs in pool workers; a failed file leaves zeros and its reason, never an exception.
    """
    out = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    errors: list[str | None] = []
    for i, path in enumerate(paths):
        try:
            out[i] = decode_image(path, size)
            errors.append(None)
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBomb...
            errors.append(describe_error(e))
    return out, errors
