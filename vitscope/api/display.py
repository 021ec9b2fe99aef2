"""How API results show themselves in a notebook: figures drawn with vitscope.render, PNG bytes,
and self-contained HTML (images inlined as data URIs, nothing fetched, every string escaped by
vitscope.render.escaping as the HTML pages are).
"""
from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np

from vitscope.render import figures as F
from vitscope.render import mosaic as M
from vitscope.render.escaping import text as esc

CSS = (".vitscope-result{font:13px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;"
       "color:#222}.vitscope-result table{border-collapse:collapse;margin:6px 0}"
       ".vitscope-result td,.vitscope-result th{padding:2px 12px 2px 0;text-align:left;"
       "vertical-align:top}.vitscope-result th{color:#6b7280;font-weight:600}"
       ".vitscope-result td.num{text-align:right;font-variant-numeric:tabular-nums}"
       ".vitscope-result img{max-width:100%;display:block;margin:4px 0}"
       ".vitscope-result .note{color:#6b7280;font-size:12px}"
       ".vitscope-result .ok{color:#15803d}.vitscope-result .bad{color:#b91c1c}")


def maps_figure(images: np.ndarray, maps: dict[str, np.ndarray], captions: Sequence[str], *,
                title: str, scale: str = "tile"):
    """Rows = images; columns = the image, then each method's map and its overlay. `scale`:
    "tile" (each map ÷ its own maximum, printed under it) or "shared" (one scale per method,
    so images compare by colour). Returns the matplotlib figure."""
    k = len(images)
    columns, labels, notes = [], ["image"], {}
    originals = None
    for j, (name, m) in enumerate(maps.items()):
        tiles, top = M.triptych_tiles(images, np.asarray(m[:k], np.float32), scale)
        originals = tiles[:, 0] if originals is None else originals
        columns += [tiles[:, 1], tiles[:, 2]]
        labels += [name, "overlay"]
        peaks = np.asarray(m[:k]).reshape(k, -1).max(axis=1)
        for i in range(k):
            notes[(i, 1 + 2 * j)] = (f"max {peaks[i]:.3g}" if top is None
                                     else f"max {peaks[i]:.3g} (of {top:.3g})")
    tiles = np.stack([originals, *columns], axis=1)
    captions = [c.replace(" · ", "\n") for c in captions[:k]]   # one tile wide: file, then label
    for i, c in enumerate(captions):
        notes[(i, 0)] = c
    lines = max([c.count("\n") + 1 for c in captions] or [1])
    mosaic = M.Mosaic(tiles, col_breaks=list(range(0, tiles.shape[1], 2)),
                      row_gap=tiles.shape[2] * (lines + 1) // 8)
    with F.style():
        return mosaic.figure(title=title, col_labels=labels, captions=notes,
                             cbar="map ÷ its maximum" if scale == "tile" else
                             "map ÷ the method's largest maximum")


def png_bytes(fig) -> bytes:
    """A figure as PNG bytes, drawn as vitscope saves figures; the figure is closed."""
    buf = io.BytesIO()
    kwargs = {"dpi": F.DPI, "facecolor": "white", **getattr(fig, "vitscope_save", {})}
    fig.savefig(buf, format="png", **kwargs)
    F.pyplot().close(fig)
    return buf.getvalue()


def img_tag(png: bytes, alt: str = "") -> str:
    return (f"<img alt='{esc(alt)}' src='data:image/png;base64,"
            f"{base64.b64encode(png).decode('ascii')}'>")


def table(header: Sequence[str], rows: Sequence[Sequence], numeric: Sequence[int] = ()) -> str:
    """An HTML table; every cell escaped (cells are plain values)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(
        f"<td class='num'>{esc(v)}</td>" if j in numeric else f"<td>{esc(v)}</td>"
        for j, v in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def block(title: str, body: str) -> str:
    """The outer element of every result's HTML: title (escaped) and body (already HTML)."""
    return (f"<div class='vitscope-result'><style>{CSS}</style><div><b>{esc(title)}</b></div>"
            f"{body}</div>")


def show() -> None:
    """Draw the open figures with matplotlib (inline in a notebook, a window elsewhere)."""
    F.pyplot().show()
