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
        img = img.convert("RGB")
        w, h = img.size
        scale = size / min(w, h)
        new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
        left, top = (new_w - size) // 2, (new_h - size) // 2
        img = img.crop((left, top, left + size, top + size))
        return np.asarray(img, dtype=np.uint8).copy()


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
