"""Interactive figures: Plotly HTML that works offline, and the map viewers plugins share.

    save_html(fig, out_dir / "rollout.html", options)   # plotly.js once per run folder
    map_slider(images, maps, step_labels=..., ...)       # image overlays with a slider

Nothing is loaded from the network: plotly.js is written once into the run folder
(`options.run_dir / plotly.min.js`) and every figure references it by a relative path.
Strings from checkpoints and dumps (class names, captions) reach these pages escaped
(vitscope.render.escaping): map_slider escapes its titles itself; a plugin building its own figure
passes names through `plotly_text`.
"""
from __future__ import annotations

import base64
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vitscope._internal.files import write_atomic
from vitscope.render import escaping
from vitscope.render.escaping import plotly_text, script_json, template_text  # noqa: F401 (re-exported)

PLOTLY_JS = "plotly.min.js"
THUMB_SIDE = 64   # hover thumbnails are subsampled to at most this many pixels a side


def plotly_js(run_dir: Path) -> Path:
    """Write plotly.min.js into the run folder once (idempotent); return its path."""
    run_dir = Path(run_dir)
    path = run_dir / PLOTLY_JS
    if not path.exists():
        from plotly.offline import get_plotlyjs
        run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(path, get_plotlyjs())   # concurrent writers never leave a half file
    return path


def save_html(fig, path: Path, options: Any = None, post_script: str | None = None,
              note: str | None = None) -> Path:
    """Plotly HTML that works offline, loading the run folder's plotly.js by relative path.
    `note` (plain text, escaped here) is a paragraph of HTML above the figure: it shows where
    the figure itself cannot draw (Plotly covers a WebGL figure with its own message when the
    browser has no WebGL, title included)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    run_dir = Path(getattr(options, "run_dir", None) or path.parent)
    js = plotly_js(run_dir)
    rel = os.path.relpath(js, path.parent).replace(os.sep, "/")
    page = fig.to_html(include_plotlyjs=rel, full_html=True, post_script=post_script,
                       config={"displaylogo": False, "responsive": True})
    if note:   # Plotly writes the figure's JSON with `<` escaped: the first <body> is the tag
        page = page.replace("<body>", '<body>\n<p class="vitscope-note" style="font:14px '
                            'sans-serif;margin:8px 12px;max-width:60em">'
                            f"{escaping.text(note)}</p>", 1)
    path.write_text(page, encoding="utf-8")
    return path


def thumbnail_step(images_shape: Sequence[int], max_side: int = THUMB_SIDE) -> int:
    """The whole-number subsampling step that brings N×H×W×3 images to at most max_side a
    side: `dump.images[a:b, ::step, ::step]` lets HDF5 do it while reading."""
    return max(1, -(-max(images_shape[1:3]) // max_side))


def sprite_sheet(images: np.ndarray, max_side: int = THUMB_SIDE,
                 path: Path | None = None) -> tuple[str, int, int, int]:
    """All N×H×W×3 images in ONE PNG grid (encoding a thousand small PNGs is slow):
    (data: URI or None, columns, tile height, tile width). Large images are subsampled to
    max_side. With `path` the PNG is written there instead of into a data: URI (no base64
    copies of the pixels in memory or in the page)."""
    from PIL import Image
    images = np.asarray(images, np.uint8)
    step = thumbnail_step(images.shape, max_side)
    images = images[:, ::step, ::step]
    n, h, w = images.shape[:3]
    cols = max(1, int(np.ceil(np.sqrt(n))))
    rows = -(-n // cols)
    sheet = np.zeros((rows * h, cols * w, 3), np.uint8)
    tiles = sheet.reshape(rows, h, cols, w, 3).transpose(0, 2, 1, 3, 4)   # a view: no copies
    full = n // cols
    tiles[:full] = images[:full * cols].reshape(full, cols, h, w, 3)
    if full < rows:                                                       # the last, partial row
        tiles[full, :n - full * cols] = images[full * cols:]
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(sheet).save(path, format="PNG")
        return None, cols, h, w
    buf = io.BytesIO()
    Image.fromarray(sheet).save(buf, format="PNG")
    del sheet, tiles
    return "data:image/png;base64," + base64.b64encode(buf.getbuffer()).decode("ascii"), cols, h, w


def hover_thumbnail_script(images: np.ndarray, captions: list[str], size: int = 128,
                           page: Path | None = None) -> str:
    """A post_script for save_html: hovering a point whose customdata is an image index shows
    that image (enlarged to `size` px) and its caption in a corner box; plotly.js has no
    images in tooltips. The images travel once, as one sprite sheet, however many traces
    show them: inside the page, or, given the `page` the script goes into (many images),
    as `<page>_files/images.png` beside it, loaded by relative path (offline still).
    Captions are plain text (a newline breaks the line), never markup: they hold class names,
    and they are shown with textContent."""
    sheet = None if page is None else \
        Path(page).with_name(Path(page).stem + "_files") / "images.png"
    uri, cols, h, w = sprite_sheet(images, path=sheet)
    if sheet is not None:
        uri = f"{sheet.parent.name}/{sheet.name}"
    scale = size / max(h, w)
    return (f"var SHEET = {script_json(uri)}; var COLS = {cols}; var TH = {h * scale:.3f}; "
            f"var TW = {w * scale:.3f}; var SW = {cols * w * scale:.3f}; "
            f"var SH = {-(-len(images) // cols) * h * scale:.3f};\n"
            f"var CAPS = {script_json([str(c) for c in captions])};\n" + _HOVER_JS)


_HOVER_JS = """
var gd = document.getElementById('{plot_id}');
var box = document.createElement('div');
box.style.cssText = 'position:fixed;top:12px;right:12px;padding:6px;background:#fff;' +
  'border:1px solid #999;border-radius:4px;font:12px sans-serif;display:none;z-index:1000;' +
  'box-shadow:0 2px 6px rgba(0,0,0,.25);text-align:center';
var pic = document.createElement('div');
pic.style.cssText = 'width:' + TW + 'px;height:' + TH + 'px;margin:auto;' +
  'image-rendering:pixelated;background-repeat:no-repeat;background-image:url("' + SHEET + '");' +
  'background-size:' + SW + 'px ' + SH + 'px';
var cap = document.createElement('div');
cap.style.whiteSpace = 'pre-line';
box.appendChild(pic); box.appendChild(cap); document.body.appendChild(box);
gd.on('plotly_hover', function(ev) {
  var p = ev.points[0]; if (p.customdata === undefined) return;
  var i = Array.isArray(p.customdata) ? p.customdata[0] : p.customdata;
  pic.style.backgroundPosition = (-(i % COLS) * TW) + 'px ' + (-Math.floor(i / COLS) * TH) + 'px';
  cap.textContent = CAPS[i]; box.style.display = 'block';
});
gd.on('plotly_unhover', function() { box.style.display = 'none'; });
"""


TITLE_FONT_PX = 12     # panel titles and row captions
TITLE_LINE_PX = 16     # the height of one line of them
TITLE_CHAR_PX = 7.2    # the widest average character of 12 px sans-serif text, for wrapping


def wrap_title(text: str, width_px: float) -> str:
    """Plain `text` escaped for Plotly (plotly_text) and broken with <br> into lines of at
    most `width_px` of 12 px text (its own newlines kept)."""
    import textwrap
    chars = max(6, int(width_px / TITLE_CHAR_PX))
    lines = [line for part in str(text).split("\n")
             for line in (textwrap.wrap(part, chars) or [""])]
    return "<br>".join(plotly_text(line) for line in lines if line.strip())


def _lines(title: str) -> int:
    return title.count("<br>") + 1 if title else 0


def map_slider(images: np.ndarray, maps: np.ndarray, *, step_labels: Sequence[str],
               slider_label: str, col_titles: Sequence[str], row_titles: Sequence[str],
               title: str, alpha: float = 0.55, colorscale: str = "Inferno",
               query: Sequence[int | None] | None = None, scale: str = "step",
               value_label: str = "value"):
    """Patch maps over images, one panel per (row, column), with a slider over steps.

    images: R×H×W×3 uint8 (one per row) or R×C×H×W×3 (one per panel); maps: S×R×C×h×w
    (S slider steps, C columns).
    scale "step" (default): every panel of a step shares one colour range, 0 to the step's
    maximum, shown by a colourbar in real values (`value_label`) that follows the slider;
    "panel": each panel runs from 0 to its own maximum (no colourbar can be honest then).
    Hover shows the raw value either way.
    `query[r]` outlines patch index query[r] of row r (e.g. the query token).
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    S, R, C, h, w = maps.shape
    shared = scale != "panel"

    def step_max(step: int) -> float:
        return float(np.max(maps[step])) or 1.0
    if images.ndim == 4:
        images = np.broadcast_to(images[:, None], (R, C, *images.shape[1:]))
    H, W = images.shape[2:4]
    ps_y, ps_x = H / h, W / w
    # Captions (file names) are long and panels narrow: each row's caption is one line of its
    # own above the row, the column titles stand once above the first row, and every text is
    # wrapped to the width it has, with the rows spaced for the lines it took.
    cell = 170 if C * R > 8 else 220
    width = max(C * cell + 80, 520)
    gap_x = 0.012
    panel_px = (width - 40) * (1 - gap_x * (C - 1)) / C
    heads = [wrap_title(t, panel_px) for t in col_titles]
    rows = [wrap_title(t, width - 40) for t in row_titles] if any(row_titles) else [""] * R
    head_px = max([_lines(t) for t in heads] or [0]) * TITLE_LINE_PX
    row_px = max([_lines(t) for t in rows] or [0]) * TITLE_LINE_PX
    plot_px = R * cell + (R - 1) * (row_px + 8)
    fig = make_subplots(rows=R, cols=C, subplot_titles=[heads[c] if r == 0 else ""
                                                        for r in range(R) for c in range(C)],
                        horizontal_spacing=gap_x,
                        vertical_spacing=(row_px + 8) / plot_px if R > 1 else 0.0)
    fig.update_annotations(font_size=TITLE_FONT_PX)
    for r, text in enumerate(rows):
        if text:
            top = fig.get_subplot(r + 1, 1).yaxis.domain[1]
            fig.add_annotation(text=text, xref="paper", yref="paper", x=0, y=top,
                               xanchor="left", yanchor="bottom", showarrow=False, align="left",
                               yshift=head_px + 2 if r == 0 else 2,
                               font=dict(size=TITLE_FONT_PX))
    heat_ids = []
    s0 = len(step_labels) - 1  # start on the last step (deepest layer)
    for r in range(R):
        for c in range(C):
            fig.add_trace(go.Image(z=images[r, c], hoverinfo="skip"), row=r + 1, col=c + 1)
            heat_ids.append(len(fig.data))
            z = maps[s0, r, c]
            colour = dict(coloraxis="coloraxis") if shared else dict(
                zmin=0, zmax=float(z.max()) or 1.0, colorscale=colorscale, showscale=False)
            fig.add_trace(go.Heatmap(
                z=z, x0=ps_x / 2 - 0.5, dx=ps_x, y0=ps_y / 2 - 0.5, dy=ps_y, opacity=alpha,
                hovertemplate="row %{y:.0f}px col %{x:.0f}px<br>"
                              "value %{z:.4f}<extra></extra>", **colour),
                row=r + 1, col=c + 1)
            if query is not None and query[r] is not None:
                qr, qc = divmod(int(query[r]), w)
                fig.add_shape(type="rect", x0=qc * ps_x - 0.5, x1=(qc + 1) * ps_x - 0.5,
                              y0=qr * ps_y - 0.5, y1=(qr + 1) * ps_y - 0.5,
                              line=dict(color="cyan", width=2), row=r + 1, col=c + 1)
    steps = []
    for s, label in enumerate(step_labels):
        zs = [maps[s, r, c] for r in range(R) for c in range(C)]
        if shared:
            steps.append(dict(method="update", label=plotly_text(label),
                              args=[{"z": zs}, {"coloraxis.cmax": step_max(s)}, heat_ids]))
        else:
            steps.append(dict(method="restyle", label=plotly_text(label),
                              args=[{"z": zs, "zmax": [float(z.max()) or 1.0 for z in zs]},
                                    heat_ids]))
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    top = 60 + head_px + row_px
    fig.update_layout(
        title=dict(text=plotly_text(title), x=0.01, y=1, yanchor="top", pad=dict(t=12)),
        height=top + plot_px + 80, width=width,
        margin=dict(l=20, r=20, t=top, b=20), plot_bgcolor="white",
        **({"coloraxis": dict(colorscale=colorscale, cmin=0, cmax=step_max(s0),
                              colorbar=dict(title=dict(text=plotly_text(value_label),
                                                       side="right"), thickness=14))}
           if shared else {}),
        sliders=[dict(active=s0, currentvalue=dict(prefix=plotly_text(f"{slider_label}: ")),
                      pad=dict(t=30),
                      steps=steps)])
    return fig
