"""Decode one image file of any format and size into a uint8 RGB array the model's size.

The resize policy (shared by folder datasets and `vitscope predict`, so a model sees files the
same way in both): apply the EXIF orientation, convert to RGB (alpha is dropped, palettes and
greyscale expanded, the first frame of an animation is used), resize so the SHORTER side equals
`size` (bicubic, antialiased when shrinking), then crop the centre `size`×`size` square.

An imported model (timm, torchvision, Hugging Face) brings its family's own policy as a
`Preprocess` in its checkpoint (`train_config["preprocess"]`): resize to cover a size keeping
the aspect ratio, or squash to it exactly, with the family's interpolation, then a centre crop
(e.g. timm's 224 px models: cover 248×248 bicubic, crop 224×224). Wherever a size is taken,
an int means the default policy above and a Preprocess means its own.

Only numpy and PIL are imported here: decoding workers import this module alone.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

INTERPOLATIONS = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
                  "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}


@dataclass(frozen=True)
class Preprocess:
    """How a file becomes the model's input: resize, then centre-crop (module docstring)."""

    resize: tuple[int, int]          # (height, width) the image is resized to
    crop: tuple[int, int]            # (height, width) of the centre crop: the model's input
    mode: str = "cover"              # "cover": keep the aspect ratio, cover `resize` (rounded);
    #                                  "shorter": shorter side to resize[0], the longer one
    #                                  truncated (torchvision's Resize(int), HF shortest_edge);
    #                                  "squash": exactly `resize`, the aspect ratio not kept
    interpolation: str = "bicubic"   # one of INTERPOLATIONS

    def __post_init__(self) -> None:
        for name in ("resize", "crop"):
            v = getattr(self, name)
            v = (v, v) if isinstance(v, int) else tuple(int(x) for x in v)
            if len(v) != 2 or min(v) < 1:
                raise ValueError(f"preprocess {name} must be a positive (height, width), got {v!r}")
            object.__setattr__(self, name, v)
        if self.mode not in ("cover", "shorter", "squash"):
            raise ValueError(f"preprocess mode must be 'cover', 'shorter' or 'squash', got "
                             f"{self.mode!r}")
        if self.mode == "shorter" and self.resize[0] != self.resize[1]:
            raise ValueError(f"preprocess mode 'shorter' takes one size, got {self.resize}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"preprocess interpolation must be one of "
                             f"{', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")
        if self.crop[0] > self.resize[0] or self.crop[1] > self.resize[1]:
            raise ValueError(f"preprocess crop {self.crop} is larger than the resize {self.resize}")

    @classmethod
    def square(cls, size: int) -> "Preprocess":
        """vitscope's own policy: shorter side to `size`, bicubic, centre square."""
        return cls((size, size), (size, size))

    @classmethod
    def of(cls, size: "int | Preprocess") -> "Preprocess":
        return size if isinstance(size, Preprocess) else cls.square(int(size))

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(tuple(d["resize"]), tuple(d["crop"]), str(d.get("mode", "cover")),
                   str(d.get("interpolation", "bicubic")))

    def to_dict(self) -> dict:
        return {"resize": list(self.resize), "crop": list(self.crop), "mode": self.mode,
                "interpolation": self.interpolation}

    @property
    def out_size(self) -> tuple[int, int]:
        return self.crop

    def key(self) -> str:
        """A cache-key fragment: the plain size for the default policy (old caches stay valid)."""
        if self == Preprocess.square(self.crop[0]):
            return str(self.crop[0])
        return f"{self.resize[0]}x{self.resize[1]}-{self.mode}-{self.interpolation}-" \
               f"{self.crop[0]}x{self.crop[1]}"

    def describe(self) -> str:
        crop = f"centre crop {self.crop[0]}×{self.crop[1]}"
        if self.mode == "shorter":
            return f"shorter side to {self.resize[0]} ({self.interpolation}), {crop}"
        how = "squashed" if self.mode == "squash" else "keeping the aspect ratio"
        return f"resize to {self.resize[0]}×{self.resize[1]} ({self.interpolation}, {how}), {crop}"

    def resized_size(self, h: int, w: int) -> tuple[int, int]:
        """(height, width) after the resize step, for an h×w input."""
        th, tw = self.resize
        if self.mode == "squash":
            return th, tw
        if self.mode == "shorter":   # torchvision's arithmetic: int(), not round()
            return (th, int(th * w / h)) if h <= w else (int(th * h / w), th)
        scale = max(th / h, tw / w)
        return max(th, round(h * scale)), max(tw, round(w * scale))

    def apply(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        new_h, new_w = self.resized_size(h, w)
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), INTERPOLATIONS[self.interpolation])
        ch, cw = self.crop
        left, top = (new_w - cw) // 2, (new_h - ch) // 2
        return img.crop((left, top, left + cw, top + ch))

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


def decode_image(path: str | Path, size: "int | Preprocess") -> np.ndarray:
    """H×W×3 uint8 at `size` (an int: size×size by the default policy; a Preprocess: its crop
    size by its policy; see the module docstring); raises on unreadable files."""
    pp = Preprocess.of(size)
    with Image.open(path) as img:
        if img.format == "JPEG":  # let libjpeg decode at a reduced scale still >= the resize
            img.draft("RGB", (pp.resize[1], pp.resize[0]))
        return prepare_image(img, pp)


def prepare_image(img: Image.Image, size: "int | Preprocess") -> np.ndarray:
    """An opened PIL image as H×W×3 uint8 at `size`, by the same policy as files (EXIF
    orientation, RGB, resize, centre crop)."""
    img = _to_rgb(ImageOps.exif_transpose(img))
    return np.asarray(Preprocess.of(size).apply(img), dtype=np.uint8).copy()


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


def decode_many(paths: list[str], size: "int | Preprocess") -> tuple[np.ndarray, list[str | None]]:
    """Decode a list of files: (k×H×W×3 uint8, per-file error or None).

    Runs in pool workers; a failed file leaves zeros and its reason, never an exception.
    """
    h, w = Preprocess.of(size).out_size
    out = np.zeros((len(paths), h, w, 3), dtype=np.uint8)
    errors: list[str | None] = []
    for i, path in enumerate(paths):
        try:
            out[i] = decode_image(path, size)
            errors.append(None)
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBomb...
            errors.append(describe_error(e))
    return out, errors
