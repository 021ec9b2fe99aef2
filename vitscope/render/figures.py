"""Figure helpers shared by plugins: overlays, static files, animated GIFs.

    with style() as plt:                               # the house matplotlib style
        fig, ax = plt.subplots()
        show_overlay(ax, image, heat)                  # heat: h×w patch map over an H×W image
        save_static(fig, out_dir / "rollout", options) # -> rollout.png | .svg | .pdf
    save_gif(frames, out_dir / "layers.gif")
    save_results(out_dir, {"maps": maps}, {"headline": 0.5})   # results.npz + summary.json
    with Results(out_dir) as r: r.append("maps", chunk) ...     # the same, chunk by chunk
    save_html(plotly_fig, out_dir / "rollout.html", options)   # offline (vitscope.render.interactive)

Grids of many image panels: vitscope.render.mosaic. Numpy imaging (`upsample`, `colorize`) is
vectorised over images.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vitscope.render.interactive import save_html  # noqa: F401  (one import for plugin authors)

HEAT_CMAP = "inferno"      # attention and norms: perceptually uniform, readable on photos
HEAT_ALPHA = 0.6
DPI = 150

_RC = {
    "figure.dpi": 100, "savefig.dpi": DPI, "savefig.bbox": "tight", "savefig.pad_inches": 0.08,
    "font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "figure.titlesize": 11,
    "figure.titleweight": "bold", "legend.fontsize": 8, "xtick.labelsize": 8,
    "ytick.labelsize": 8, "axes.spines.top": False, "axes.spines.right": False,
    "svg.fonttype": "none", "image.interpolation": "nearest",
}


# Maps are drawn as their patch grid (what the model sees, and what the HTML shows) unless
# smoothing is asked for: `vitscope analyze --smooth` sets it for a render (`smoothing`);
# show_overlay and vitscope.render.mosaic follow it.
SMOOTH: contextvars.ContextVar[bool] = contextvars.ContextVar("vitscope_smooth", default=False)


@contextlib.contextmanager
def smoothing(on: bool):
    """Within the block, maps are bilinearly smoothed (on) or drawn as patches (off)."""
    token = SMOOTH.set(bool(on))
    try:
        yield
    finally:
        SMOOTH.reset(token)


def pyplot():
    """matplotlib.pyplot on a non-interactive backend (plugins run headless)."""
    import matplotlib
    if "MPLBACKEND" not in os.environ:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


@contextlib.contextmanager
def style() -> Iterator[Any]:
    """The house style for every static figure."""
    plt = pyplot()
    with plt.rc_context(_RC):
        yield plt


def show_overlay(ax, image: np.ndarray | None, heat: np.ndarray, *, alpha: float = HEAT_ALPHA,
                 cmap: str = HEAT_CMAP, vmin: float | None = 0.0, vmax: float | None = None,
                 smooth: bool | None = None):
    """An h×w patch map over an H×W×3 image (or alone when image is None); returns the heat
    AxesImage for a colorbar. Patches, or bilinear (matplotlib at draw time) with `smooth`
    (default: the `smoothing` in effect, off unless `analyze --smooth`)."""
    if smooth is None:
        smooth = SMOOTH.get()
    if image is None:
        return ax.imshow(heat, cmap=cmap, vmin=vmin, vmax=vmax,
                         interpolation="bilinear" if smooth else "nearest")
    H, W = image.shape[:2]
    ax.imshow(image, interpolation="nearest", extent=(0, W, H, 0))
    return ax.imshow(heat, cmap=cmap, alpha=alpha, vmin=vmin, vmax=vmax, extent=(0, W, H, 0),
                     interpolation="bilinear" if smooth else "nearest")


def save_static(fig, stem: Path, options: Any) -> Path:
    """Save as `stem.<options.format>` (png default) and close the figure. A figure may carry
    `vitscope_save` (savefig keyword overrides, e.g. from vitscope.render.mosaic)."""
    fmt = getattr(options, "format", None) or "png"
    path = Path(stem).with_suffix(f".{fmt}")
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {"dpi": DPI, "facecolor": "white", **getattr(fig, "vitscope_save", {})}
    if fmt == "png":  # zlib level 6 (the default) costs seconds on big mosaics for ~15% size
        kwargs["pil_kwargs"] = {"compress_level": 3}
    fig.savefig(path, format=fmt, **kwargs)
    pyplot().close(fig)
    return path


# ---------------------------------------------------------------------------- numpy imaging

def upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of ...×h×w maps to ...×H×W (pixel centres aligned), vectorised."""
    h, w = maps.shape[-2:]
    H, W = size
    return np.einsum("yh,...hw,xw->...yx", _interp_matrix(H, h), maps.astype(np.float32),
                     _interp_matrix(W, w), optimize=True)


def _interp_matrix(out: int, inp: int) -> np.ndarray:
    pos = np.clip((np.arange(out) + 0.5) * inp / out - 0.5, 0, inp - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, inp - 1)
    frac = (pos - lo).astype(np.float32)
    m = np.zeros((out, inp), np.float32)
    m[np.arange(out), lo] += 1 - frac
    m[np.arange(out), hi] += frac
    return m


def colorize(maps01: np.ndarray, cmap: str = HEAT_CMAP) -> np.ndarray:
    """...×H×W values in [0, 1] to ...×H×W×3 uint8 colours: the colour map's own 256-entry
    table, indexed as matplotlib indexes it (floor(x·256), 1.0 into the last entry; NaN black),
    but in uint8 throughout: calling the colour map on the maps builds float64 RGBA, 32 bytes
    a pixel, which at 224 px was a fifth of token-attention's time."""
    lut = _colour_table(cmap)
    x = np.asarray(maps01)
    x = x if x.dtype.kind == "f" else x.astype(np.float32)
    finite = np.isfinite(x)
    index = np.minimum((np.clip(np.where(finite, x, 0), 0, 1) * 256).astype(np.int32), 255)
    out = lut[index]
    if not finite.all():
        out[~finite] = 0
    return out


@functools.lru_cache(maxsize=8)
def _colour_table(cmap: str) -> np.ndarray:
    from matplotlib import colormaps
    table = colormaps[cmap].resampled(256)(np.arange(256))     # 256×4 floats, entry by entry
    return (table[:, :3] * 255).astype(np.uint8)


def enlarge(images: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement of ...×H×W×C images (small inputs read better in GIFs)."""
    return images.repeat(factor, axis=-3).repeat(factor, axis=-2)


# --------------------------------------------------------------------------------------- GIF

def save_gif(frames: Sequence[np.ndarray], path: Path, duration_ms: int = 450) -> Path:
    """An animated GIF that loops forever; frames are H×W×3 uint8 of equal size."""
    from PIL import Image
    if len(frames) < 2:
        raise ValueError("an animated GIF needs at least two frames")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # One palette for every frame, drawn from all of them, and error diffusion: a palette of
    # each frame's own flickers between frames, and without dithering a colour map's smooth
    # ramp breaks into bands.
    picked = [np.asarray(f) for f in frames[::max(1, len(frames) // 16)]]
    # median cut costs in proportion to the pixels it sorts: a sample of about 2^18 of them
    # (every step-th row and column) draws the same palette in a fraction of the time (at 224 px
    # token-attention's 85 frames took 11 s of quantising on all of every other row)
    step = max(1, int(np.sqrt(sum(f.shape[0] * f.shape[1] for f in picked) / (1 << 18))))
    sample = np.concatenate([f[::step, ::step] for f in picked])
    palette = Image.fromarray(np.ascontiguousarray(sample)).quantize(
        colors=255, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    pics = [Image.fromarray(f).quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG)
            for f in frames]
    pics[0].save(path, save_all=True, append_images=pics[1:], duration=duration_ms, loop=0,
                 optimize=False, disposal=2)
    return path


def class_colors(n: int) -> list[str]:
    """n distinguishable hex colours (tab10, then tab20, then a sampled rainbow)."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex
    if n <= 10:
        cmap = colormaps["tab10"]
        return [to_hex(cmap(i)) for i in range(n)]
    if n <= 20:
        cmap = colormaps["tab20"]
        return [to_hex(cmap(i)) for i in range(n)]
    cmap = colormaps["turbo"]
    return [to_hex(cmap(i / max(n - 1, 1))) for i in range(n)]


def label_names(classes: Sequence[str], ids: np.ndarray) -> np.ndarray:
    """Class names for integer ids; -1 (unknown) and out-of-range ids become '?'/'#i'."""
    names = np.array([*classes, "?"], dtype=object)
    ids = np.asarray(ids)
    known = (ids >= 0) & (ids < len(classes))
    out = np.where(known, names[np.where(known, ids, len(classes))], "?")
    bad = (ids >= len(classes))
    if bad.any():
        out[bad] = np.char.add("#", ids[bad].astype(str))
    return out


def captions(dump, k: int, prefix: str = "", target: bool = False) -> list[str]:
    """"label ✓" or "label\\n→ prediction" for the first k images of a dump, after the image's
    file name where the dump has one ("cat_0001.jpg · cat ✓"); with `target`, a last line
    names the class the map explains ("(explains disk)")."""
    labels = label_names(dump.classes, dump.labels[:k])
    names = [f"{short_name(n)} · " for n in file_names(dump, k)] or [""] * len(labels)
    if (dump.preds[:k] < 0).all():   # a feature model: no predictions; the file names the image
        out = [f"{prefix}{f}{l}" if l != "?" else (f"{prefix}{f[:-3]}" if f else f"{prefix}#{i}")
               for i, (f, l) in enumerate(zip(names, labels))]
        return [f"{c}\n(explains {t})" for c, t in zip(out, explained_names(dump, k))] \
            if target else out
    preds = label_names(dump.classes, dump.preds[:k])
    out = [f"{prefix}{f}{l} ✓" if l == p else f"{prefix}{f}{l}\n→ {p}"
           for f, l, p in zip(names, labels, preds)]
    if target:
        out = [f"{c}\n(explains {t})" for c, t in zip(out, explained_names(dump, k))]
    return out


def explained_names(dump, k: int) -> list[str]:
    """What each of the first k maps explains: a class name, or for a target that is no class
    (similarity to an image, a text prompt) that target's own name (vitscope.capture.objective)."""
    names = list(getattr(dump, "target_names", None) or dump.classes)
    return list(label_names(names, dump.target[:k]))


def grouping(dump, n: int) -> tuple[np.ndarray, str, list[str]]:
    """How figures group the first n images: by label where the data has any, else by the
    model's prediction, else (a feature model on an unlabelled folder) one group of them all.
    Returns (group per image, -1 for none; "label", "prediction" or "all images"; names)."""
    labels = np.asarray(dump.labels[:n], dtype=np.int64)
    if (labels >= 0).any():
        ids, by = labels, "label"
    else:
        ids, by = np.asarray(dump.preds[:n], dtype=np.int64), "prediction"
        if not (ids >= 0).any():
            return np.zeros(n, np.int64), "all images", ["all images"]
    top = int(ids.max()) + 1 if n else 0
    names = list(dump.classes) + [f"#{c}" for c in range(len(dump.classes), top)]
    return ids, by, names


def file_names(dump, k: int | None = None) -> list[str]:
    """The file names of the first k images of a dump ([] for data without files), for
    display: bytes that are not UTF-8 shown escaped (vitscope._internal.text.shown_name)."""
    from vitscope._internal.text import shown_name
    names = getattr(dump, "file_names", None)
    return [] if not names else [shown_name(n) for n in (names[:k] if k is not None else names)]


def short_name(name: str, width: int = 22) -> str:
    """A file name cut to `width` characters in the middle ("a_very_lo…_0001.jpg")."""
    if len(name) <= width:
        return name
    head = (width - 1) // 2
    return f"{name[:head]}…{name[-(width - 1 - head):]}"


def save_results(out_dir: Path, arrays: dict[str, Any], summary: dict[str, Any] | None = None,
                 name: str = "results.npz") -> list[Path]:
    """The numbers behind a plugin's figures: `results.npz` (+ `summary.json` of headline
    numbers, which index.html shows). Returns the files written. Per-image arrays of a
    large dump: build them chunk by chunk with `Results` instead."""
    results = Results(out_dir, name)
    for key, value in arrays.items():
        results[key] = value
    return results.save(summary)


class Results:
    """`results.npz` built chunk by chunk, so per-image arrays never sit whole in memory.

        with Results(out_dir) as results:
            for start, chunk in ...:
                results.append("maps", maps_of(chunk))     # rows along N, spilled to disk
            results["layers"] = np.array(layers)            # small arrays: kept as they are
            files = results.save(summary)                   # results.npz (+ summary.json)

    The archive is what np.savez writes (uncompressed .npy members), so np.load reads it as
    before. Appended rows wait in a temporary folder inside out_dir (the output's disk, not
    /tmp, which may be RAM), removed by save() or when the block is left.
    """

    def __init__(self, out_dir: Path, name: str = "results.npz") -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / name
        self._arrays: dict[str, np.ndarray] = {}
        self._spilled: dict[str, list] = {}      # key -> [file, dtype, row shape, rows]
        self._tmp: tempfile.TemporaryDirectory | None = None

    def __setitem__(self, key: str, value: Any) -> None:
        self._arrays[key] = np.asarray(value)

    def append(self, key: str, rows: np.ndarray) -> None:
        """Add rows (along the first axis) to the per-image array `key`."""
        rows = np.ascontiguousarray(rows)
        entry = self._spilled.get(key)
        if entry is None:
            if self._tmp is None:
                self._tmp = tempfile.TemporaryDirectory(prefix=".results-", dir=self.out_dir)
            fh = open(Path(self._tmp.name) / f"{len(self._spilled)}.bin", "w+b")
            entry = self._spilled[key] = [fh, rows.dtype, rows.shape[1:], 0]
        if rows.dtype != entry[1] or rows.shape[1:] != entry[2]:
            raise ValueError(f"results['{key}']: rows of {rows.dtype} {rows.shape[1:]} after "
                             f"{entry[1]} {entry[2]}")
        entry[0].write(rows.tobytes())
        entry[3] += len(rows)

    def save(self, summary: dict[str, Any] | None = None) -> list[Path]:
        """Write results.npz (and summary.json); returns the files written."""
        import json
        import shutil
        import zipfile
        from numpy.lib import format as npy

        try:
            with zipfile.ZipFile(self.path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
                for key, value in self._arrays.items():
                    with zf.open(f"{key}.npy", "w", force_zip64=True) as out:
                        npy.write_array(out, value, allow_pickle=True)
                for key, (fh, dtype, shape, rows) in self._spilled.items():
                    with zf.open(f"{key}.npy", "w", force_zip64=True) as out:
                        npy.write_array_header_2_0(out, {"descr": npy.dtype_to_descr(dtype),
                                                         "fortran_order": False,
                                                         "shape": (rows, *shape)})
                        fh.seek(0)
                        shutil.copyfileobj(fh, out, 1 << 20)
        finally:
            self.close()
        files = [self.path]
        if summary is not None:
            files.append(self.out_dir / "summary.json")
            # allow_nan=False: bare NaN / Infinity is not JSON, and strict readers reject the file
            text = json.dumps(json_safe(summary), indent=2, ensure_ascii=False, allow_nan=False)
            files[-1].write_text(text + "\n", encoding="utf-8")
        return files

    def close(self) -> None:
        """Drop what was appended (save() calls it)."""
        for fh, *_ in self._spilled.values():
            fh.close()
        self._spilled.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "Results":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def json_safe(value: Any) -> Any:
    """`value` with numpy scalars and arrays as plain Python, non-finite floats (NaN, ±inf)
    as None (JSON null), recursively through dicts, lists and tuples; anything else that
    JSON cannot hold becomes its str()."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())   # a 0-d array's tolist() is a scalar
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)
