"""Grids of image tiles drawn as ONE image: fast, crisp small multiples for any model size.

A layers×heads grid of overlays is hundreds of panels; one matplotlib axes per panel costs
~50 ms each, so the tiles are composed with numpy (images enlarged by nearest neighbour, maps
upsampled bilinearly and colour-mapped) into a single array, shown in one axes with text
labels around it.

    tiles = overlay_tiles(images[:, None, None], maps)       # N×L×H×S×S×3 uint8
    fig = Mosaic(tiles[0]).figure(title=..., row_labels=..., col_labels=..., cbar="÷ max")
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from vitscope.render.figures import (DPI, HEAT_ALPHA, HEAT_CMAP, SMOOTH, colorize, enlarge,  # noqa: F401
                              pyplot, smoothing, upsample)

TILE_PX = 128  # target tile side in pixels (about 0.85 inch at 150 dpi); small inputs are enlarged


def tile_scale(image_size: int, tile_px: int = TILE_PX) -> int:
    return max(1, round(tile_px / max(image_size, 1)))


def image_tiles(images: np.ndarray, scale: int | None = None) -> np.ndarray:
    """...×H×W×3 uint8 enlarged by nearest neighbour (to about TILE_PX by default)."""
    return enlarge(np.asarray(images, np.uint8), scale or tile_scale(images.shape[-2]))


def patch_upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """...×h×w -> ...×H×W by repeating each patch (nearest neighbour): the patch grid."""
    h, w = maps.shape[-2:]
    H, W = size
    rows = np.minimum(np.arange(H) * h // H, h - 1)
    cols = np.minimum(np.arange(W) * w // W, w - 1)
    return np.asarray(maps, np.float32)[..., rows[:, None], cols[None, :]]


def scale_maps(maps: np.ndarray, scale: str = "tile") -> tuple[np.ndarray, np.ndarray, float | None]:
    """Maps ...×h×w -> (values in [0, 1], each map's maximum ..., shared maximum or None).
    "tile": each map ÷ its own maximum (print the maxima: the colours alone hide that a map
    peaking at 0.02 looks as hot as one peaking at 0.4); "shared": all ÷ one maximum, so
    colours compare across tiles and a colourbar can show real values."""
    maps = np.asarray(maps, np.float32)
    peaks = maps.max(axis=(-2, -1))
    if scale == "shared":
        top = float(peaks.max()) if peaks.size else 1.0
        return maps / max(top, 1e-12), peaks, max(top, 1e-12)
    return maps / np.maximum(peaks[..., None, None], 1e-12), peaks, None


def scaled_overlay_tiles(images: np.ndarray, maps: np.ndarray, scale: str = "tile", **kw
                         ) -> tuple[np.ndarray, np.ndarray, float | None]:
    """`overlay_tiles` on the chosen scale (see `scale_maps`): (tiles, each map's maximum,
    the shared maximum or None)."""
    scaled, peaks, top = scale_maps(maps, scale)
    if top is None:     # ÷ own maximum after upsampling, so every tile peaks at 1
        return overlay_tiles(images, maps, **kw), peaks, None
    return overlay_tiles(images, scaled, normalize=False, **kw), peaks, top


def scale_legend(peaks: np.ndarray, top: float | None, what: str = "attention",
                 col_offset: int = 0) -> dict:
    """`Mosaic.figure` arguments that say which scale the tiles use: with one shared scale
    a colourbar in real values; else each tile's maximum printed under it (peaks: rows ×
    columns of maps, starting at column `col_offset` of the mosaic)."""
    if top is not None:
        return {"cbar": f"{what} (one scale for every tile)", "cbar_max": top}
    peaks = np.asarray(peaks).reshape(len(peaks), -1)
    return {"cbar": f"{what} ÷ max of each map (printed under it)",
            "captions": {(r, c + col_offset): f"max {peaks[r, c]:.3g}"
                         for r in range(peaks.shape[0]) for c in range(peaks.shape[1])}}


def heat_tiles(maps: np.ndarray, size: int | tuple[int, int], cmap: str = HEAT_CMAP,
               normalize: bool = True, smooth: bool | None = None) -> np.ndarray:
    """...×h×w maps -> ...×H×W×3 colour tiles, `size` = H = W or (H, W) for non-square
    images (each map ÷ its max unless normalize=False, in which case values are taken as
    already in [0, 1]); patches unless `smooth` (default: the `smoothing` in effect)."""
    smooth = SMOOTH.get() if smooth is None else smooth
    size = size if isinstance(size, tuple) else (size, size)
    up = upsample(maps, size) if smooth else patch_upsample(maps, size)
    if normalize:
        up = up / np.maximum(up.max(axis=(-2, -1), keepdims=True), 1e-12)
    return colorize(up, cmap)


def overlay_tiles(images: np.ndarray, maps: np.ndarray, *, alpha: float = HEAT_ALPHA,
                  cmap: str = HEAT_CMAP, normalize: bool = True,
                  scale: int | None = None, smooth: bool | None = None) -> np.ndarray:
    """Maps (...×h×w) over images (broadcastable ...×H×W×3) -> ...×(H·scale)×(W·scale)×3 uint8."""
    big = image_tiles(images, scale)
    heat = heat_tiles(maps, tuple(big.shape[-3:-1]), cmap, normalize, smooth).astype(np.float32)
    return (big.astype(np.float32) * (1 - alpha) + heat * alpha).round().astype(np.uint8)


LABEL_CHAR_INCHES = 0.068   # an 8 pt character, generously (a label wrapped by it fits)


def wrap_label(text: str, length: float) -> str:
    """`text` wrapped into lines of at most `length` inches of 8 pt text (a colourbar label)."""
    import textwrap
    width = max(12, int(length / LABEL_CHAR_INCHES))
    return "\n".join(textwrap.wrap(text, width, break_on_hyphens=False)) or text


class Mosaic:
    """R×C tiles (R×C×S×Sw×3 uint8; Sw = S unless the images are not square) laid out with
    gutters; `col_breaks` adds wider gaps after those column indices (to separate groups of
    columns)."""

    def __init__(self, tiles: np.ndarray, gap: int | None = None, col_breaks: Sequence[int] = (),
                 row_gap: int = 0, background: int = 255) -> None:
        R, C, S, Sw = tiles.shape[:4]
        self.R, self.C, self.S, self.Sw = R, C, S, Sw
        self.gap = max(2, S // 24) if gap is None else gap
        breaks = set(col_breaks)
        self.x0 = np.zeros(C, int)
        x = 0
        for c in range(C):
            self.x0[c] = x
            x += Sw + self.gap + (3 * self.gap if c in breaks else 0)
        self.y0 = np.arange(R) * (S + self.gap + row_gap)  # row_gap: room for captions
        self.array = np.full((int(self.y0[-1]) + S, int(self.x0[-1]) + Sw, 3), background, np.uint8)
        for r in range(R):  # R×C copies of whole tiles: the per-pixel work is vectorised
            for c in range(C):
                self.array[self.y0[r]:self.y0[r] + S, self.x0[c]:self.x0[c] + Sw] = tiles[r, c]

    def figure(self, *, title: str | None = None, row_labels: Sequence[str] = (),
               col_labels: Sequence[str] = (), cbar: str | None = None,
               cmap: str = HEAT_CMAP, captions: dict[tuple[int, int], str] | None = None,
               cbar_max: float | None = None):
        """A matplotlib figure showing the mosaic with labels (and a colorbar: 0–1, or 0 to
        `cbar_max` in real values for tiles drawn on one shared scale);
        `captions[(r, c)]` is written under tile (r, c) (make room with row_gap).

        Margins are computed here (not by bbox="tight", which draws everything twice), and a
        tile of S pixels is S/DPI inches, so each mosaic pixel is exactly one image pixel.
        Bigger tiles: build them with a larger `scale`."""
        plt = pyplot()
        cell = self.S / DPI
        H, W = self.array.shape[:2]
        width, height = W / self.S * cell, H / self.S * cell
        lines = title.count("\n") + 1 if title else 0
        left = 0.12 + 0.065 * max([len(l) for r in row_labels for l in str(r).split("\n")] or [0])
        top = 0.08 + (0.22 if col_labels else 0.0) + 0.2 * lines
        last = [t for (r, _), t in (captions or {}).items() if r == self.R - 1]
        bottom = 0.06 + 0.14 * max([t.count("\n") + 1 for t in last] or [0])
        # The colourbar's label runs along the mosaic's height, wrapped to fit it: a long one
        # beside a short mosaic would leave the canvas and run into the title.
        cbar = wrap_label(cbar, height) if cbar else cbar
        right = 0.1 + (0.75 + 0.15 * (cbar.count("\n") + 1) if cbar else 0.0)
        # the title is centred over the mosaic: each side needs half of it (bold 10 pt)
        half = 0.095 * max([len(l) for l in (title or "").split("\n")] or [0]) / 2
        left += max(0.0, half - (left + width / 2))
        right += max(0.0, half - (width / 2 + right))
        fig_w, fig_h = left + width + right, top + height + bottom
        fig = plt.figure(figsize=(fig_w, fig_h))
        ax = fig.add_axes([left / fig_w, bottom / fig_h, width / fig_w, height / fig_h])
        ax.imshow(self.array, interpolation="nearest")
        ax.set_axis_off()
        pad = self.S * 0.06
        inch = self.S / cell  # data units per inch
        for c, label in enumerate(col_labels):
            ax.text(self.x0[c] + self.Sw / 2, -pad, label, ha="center", va="bottom", fontsize=8)
        for r, label in enumerate(row_labels):
            ax.text(-pad, self.y0[r] + self.S / 2, label, ha="right", va="center", fontsize=8)
        for (r, c), label in (captions or {}).items():
            # 7 pt text is ~0.055 in per character: one wider than the tile starts at its left
            # edge (a centred one would run off the figure on the left)
            wide = 0.055 * max(len(l) for l in label.split("\n")) > cell
            ax.text(self.x0[c] + (0 if wide else self.Sw / 2), self.y0[r] + self.S + pad / 2,
                    label, ha="left" if wide else "center", va="top", fontsize=7)
        if title:  # above the column labels
            y = -pad - (0.22 * inch if col_labels else 0)
            ax.text(W / 2, y, title, ha="center", va="bottom", fontsize=10, fontweight="bold")
        if cbar:
            from matplotlib.cm import ScalarMappable
            from matplotlib.colors import Normalize
            cax = fig.add_axes([(left + width + 0.2) / fig_w, bottom / fig_h + 0.2 * height / fig_h,
                                0.12 / fig_w, 0.6 * height / fig_h])
            cb = fig.colorbar(ScalarMappable(Normalize(0, cbar_max or 1), cmap), cax=cax)
            cb.set_label(cbar, fontsize=8)
            cb.ax.tick_params(labelsize=7)
        # the full figure, explicitly: None would fall back to the style's "tight"
        fig.vitscope_save = {"dpi": DPI, "bbox_inches": fig.bbox_inches}
        self.ax = ax
        return fig

    def mark(self, r: int, c: int, index: int, grid: tuple[int, int], color: str = "cyan") -> None:
        """Outline patch `index` (row-major on `grid`) in tile (r, c) of the last figure."""
        from matplotlib.patches import Rectangle
        h, w = grid
        py, px = self.S / h, self.Sw / w
        pr, pc = divmod(int(index), w)
        self.ax.add_patch(Rectangle((self.x0[c] + pc * px - 0.5, self.y0[r] + pr * py - 0.5),
                                    px, py, fill=False, ec=color, lw=1.0))


HEADER_MARGIN = 6   # pixels of white left and right of a GIF header's text
HEADER_LEADING = 6  # pixels between header lines


@lru_cache(maxsize=8)
def header_font(font_px: int = 14):
    """The font of GIF headers: matplotlib's DejaVu Sans, which has the arrows and symbols
    PIL's default font lacks (the default font at that size when DejaVu is not found)."""
    from PIL import ImageFont
    try:
        from matplotlib import font_manager
        return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), font_px)
    except Exception:
        return ImageFont.load_default(font_px)


def wrap_header(header: str, font, width: float) -> list[str]:
    """`header` as lines that each fit in `width` pixels when drawn in `font`: its own line
    breaks are kept, words are wrapped, and a word wider than the width is broken."""
    lines: list[str] = []
    for paragraph in header.split("\n"):
        line = ""
        for word in _words(paragraph):
            candidate = f"{line} {word}" if line else word
            if font.getlength(candidate) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            line = word
            while len(line) > 1 and font.getlength(line) > width:
                cut = _longest_fitting_prefix(line, font, width)
                lines.append(line[:cut])
                line = line[cut:]
        lines.append(line)
    return lines


def _words(paragraph: str) -> list[str]:
    """Words split at spaces, a lone separator ("·") kept with the word before it so that no
    wrapped line starts with one."""
    words: list[str] = []
    for word in paragraph.split(" "):
        if word == "·" and words:
            words[-1] += " ·"
        elif word:
            words.append(word)
    return words


def _longest_fitting_prefix(word: str, font, width: float) -> int:
    cut = 1  # at least one character per line, or a very narrow frame would never finish
    while cut < len(word) and font.getlength(word[:cut + 1]) <= width:
        cut += 1
    return cut


def header_lines(header: str, frame_width: int, font_px: int = 14) -> list[str]:
    """The lines `text_frame` draws for `header` above an image `frame_width` pixels wide."""
    return wrap_header(header, header_font(font_px), frame_width - 2 * HEADER_MARGIN)


def text_frame(array: np.ndarray, header: str, font_px: int = 14,
               min_lines: int = 1) -> np.ndarray:
    """A GIF frame: the array under a white header band holding `header`, wrapped to the
    frame width (never cut off). The band holds at least `min_lines` lines, so frames whose
    headers wrap differently still have one size (see `text_frames`)."""
    from PIL import Image, ImageDraw
    font = header_font(font_px)
    lines = wrap_header(header, font, array.shape[1] - 2 * HEADER_MARGIN)
    step = font_px + HEADER_LEADING
    band = step * max(len(lines), min_lines) + 8
    out = Image.new("RGB", (array.shape[1], array.shape[0] + band), "white")
    out.paste(Image.fromarray(array), (0, band))
    draw = ImageDraw.Draw(out)
    for i, line in enumerate(lines):
        draw.text((HEADER_MARGIN, 4 + i * step), line, fill=(20, 20, 20), font=font)
    return np.asarray(out)


def colourbar_strip(width: int, label: str, cmap: str = HEAT_CMAP, *, low: str = "0",
                    high: str = "1", font_px: int = 13) -> np.ndarray:
    """A white band `width` px wide with a horizontal colourbar from `low` to `high` and
    `label` (wrapped) under it: the legend of a GIF, whose frames carry no axes."""
    from PIL import Image, ImageDraw
    font = header_font(font_px)
    lines = wrap_header(label, font, width - 2 * HEADER_MARGIN)
    step = font_px + HEADER_LEADING
    bar_h, top = 12, 8
    out = Image.new("RGB", (width, top + bar_h + 6 + step * len(lines) + 4), "white")
    draw = ImageDraw.Draw(out)
    x0 = HEADER_MARGIN + int(font.getlength(low)) + 6
    x1 = width - HEADER_MARGIN - int(font.getlength(high)) - 6
    ramp = colorize(np.linspace(0, 1, max(x1 - x0, 2), dtype=np.float32)[None], cmap)
    out.paste(Image.fromarray(np.repeat(ramp, bar_h, axis=0)), (x0, top))
    draw.rectangle([x0 - 1, top - 1, x0 + ramp.shape[1], top + bar_h], outline=(90, 90, 90))
    draw.text((HEADER_MARGIN, top - 2), low, fill=(20, 20, 20), font=font)
    draw.text((x1 + 6, top - 2), high, fill=(20, 20, 20), font=font)
    for i, line in enumerate(lines):
        draw.text((HEADER_MARGIN, top + bar_h + 6 + i * step), line, fill=(20, 20, 20),
                  font=font)
    return np.asarray(out)


def text_frames(arrays: Sequence[np.ndarray], headers: Sequence[str],
                font_px: int = 14) -> list[np.ndarray]:
    """`text_frame` for each (array, header) pair, all with the same header band height."""
    most = max(len(header_lines(h, a.shape[1], font_px)) for a, h in zip(arrays, headers))
    return [text_frame(a, h, font_px, min_lines=most) for a, h in zip(arrays, headers)]


def scale_option(default: str = "tile"):
    """The `scale` option of every map plugin: how the static figures colour their tiles."""
    from vitscope.plugin import Option
    return Option("scale", str, default, "colour scale of the static figures: tile (each map ÷ "
                  "its own maximum, printed under it) or shared (one scale for every tile, "
                  "colourbar in real values)", choices=SCALES)


SCALES = ("tile", "shared")


def triptych_tiles(images: np.ndarray, maps: np.ndarray, scale: str = "tile"
                   ) -> tuple[np.ndarray, float | None]:
    """k×3 tiles (original | map | overlay) of each image, and the shared maximum (None for
    scale="tile": each map ÷ its own maximum)."""
    size = tile_scale(max(images.shape[1:3]), 176)            # larger tiles than the grids
    originals = image_tiles(images, size)
    scaled, _, top = scale_maps(maps, scale)
    own = top is None            # each map ÷ its own maximum after upsampling (peak = 1)
    shown = maps if own else scaled
    heat = heat_tiles(shown, tuple(originals.shape[1:3]), normalize=own)   # non-square too
    overlays = overlay_tiles(images, shown, scale=size, normalize=own)
    return np.stack([originals, heat, overlays], axis=1), top


def map_triptych(images: np.ndarray, maps: np.ndarray, captions: Sequence[str], *, title: str,
                 map_label: str, stem, options, scale: str | None = None):
    """The per-image figure of every map plugin: original | map | overlay for each image (two
    side-by-side groups when there are more than four), each image's caption under it and
    the map's maximum under the map. `scale` (default: `options.scale`, else "tile"): "tile"
    colours each map ÷ its own maximum; "shared" puts every map on one scale, with a
    colourbar in the map's real values, so images compare by colour.
    Returns the saved file (vitscope.render.figures.save_static)."""
    from vitscope.render import figures as F

    scale = scale or getattr(options, "scale", None) or "tile"
    k = len(images)
    groups = 2 if k > 4 else 1
    rows = -(-k // groups)
    triples, top = triptych_tiles(images, maps, scale)
    blank = np.full_like(triples[:1], 255)
    triples = np.concatenate([triples, np.repeat(blank, rows * groups - k, 0)])
    tiles = np.concatenate([triples[g * rows:(g + 1) * rows] for g in range(groups)], axis=1)
    mosaic = Mosaic(tiles, col_breaks=[2], row_gap=tiles.shape[2] // 4)   # two caption lines
    cbar = (f"{map_label} (one scale for every image)" if top is not None
            else f"{map_label} ÷ max per image (printed under it)")
    with F.style():
        fig = mosaic.figure(
            title=title, col_labels=["original", map_label, "overlay"] * groups,
            cbar=cbar, cbar_max=top,
            captions={(i % rows, 3 * (i // rows)): f"{captions[i].replace(chr(10), ' ')}\n"
                                                   f"{map_label} max {float(maps[i].max()):.3g}"
                      for i in range(k)})
        return F.save_static(fig, stem, options)
