"""Text that does not fit a matplotlib figure, measured on the figure itself (its tight
bounding boxes, as matplotlib lays it out for saving): every title, label, colourbar label,
annotation, legend entry and drawn tick label must lie inside the saved canvas, and no two
of them may overlap.

    with saved_figures() as figures:        # every Figure.savefig in the block is checked
        plugin.render(dump, out, options)
    assert not [p for f in figures for p in f.problems], figures
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

SLACK = 1.0   # display pixels of rounding tolerated at an edge or in an overlap


@dataclass
class Checked:
    name: str                  # the saved file's name
    problems: list[str] = field(default_factory=list)
    figure: object = None      # the matplotlib Figure (closed once saved; its artists remain)


def _drawn_tick_labels(fig) -> set:
    """Tick labels matplotlib draws (inside the view limits), the others are never shown."""
    drawn = set()
    for ax in fig.axes:
        if not (ax.get_visible() and ax.axison):
            continue
        for axis in (ax.xaxis, ax.yaxis):
            if not axis.get_visible():
                continue
            for tick in axis._update_ticks():
                drawn.update(t for t in (tick.label1, tick.label2) if t.get_visible())
    return drawn


def text_problems(fig, tight: bool) -> list[str]:
    """What is wrong with the text of `fig` saved with bbox_inches="tight" (`tight`: the
    canvas grows to hold every artist, so only overlaps count) or on its own canvas."""
    from matplotlib.text import Text
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ticks = {t for ax in fig.axes for axis in (ax.xaxis, ax.yaxis)
             for t in axis.get_ticklabels(which="both")}
    drawn = _drawn_tick_labels(fig)
    texts = []
    for t in fig.findobj(Text):
        if not t.get_visible() or not t.get_text().strip() or (t in ticks and t not in drawn):
            continue
        texts.append((t, t.get_window_extent(renderer)))
    problems = []
    width, height = fig.bbox.width, fig.bbox.height
    if not tight:
        for t, e in texts:
            if e.x0 < -SLACK or e.y0 < -SLACK or e.x1 > width + SLACK or e.y1 > height + SLACK:
                problems.append(f"{t.get_text()!r} leaves the {width:.0f}×{height:.0f} px canvas "
                                f"(its box: x {e.x0:.0f}–{e.x1:.0f}, y {e.y0:.0f}–{e.y1:.0f})")
    for i, (a, ea) in enumerate(texts):
        for b, eb in texts[i + 1:]:
            if a.get_rotation() == b.get_rotation() and a.get_rotation() % 90:
                continue   # parallel slanted labels: their upright boxes overlap, the text not
            w = min(ea.x1, eb.x1) - max(ea.x0, eb.x0)
            h = min(ea.y1, eb.y1) - max(ea.y0, eb.y0)
            if w > SLACK and h > SLACK:
                problems.append(f"{a.get_text()!r} overlaps {b.get_text()!r}")
    return problems


@contextlib.contextmanager
def saved_figures():
    """Check every figure saved inside the block (its text, before it is written); yields the
    list of Checked, one per saved file."""
    import matplotlib
    from matplotlib.figure import Figure
    checked: list[Checked] = []
    original = Figure.savefig

    def savefig(self, fname, *args, **kwargs):
        bbox = kwargs.get("bbox_inches", matplotlib.rcParams["savefig.bbox"])
        tight = isinstance(bbox, str) and bbox == "tight"
        checked.append(Checked(Path(str(fname)).name, text_problems(self, tight), self))
        return original(self, fname, *args, **kwargs)

    Figure.savefig = savefig
    try:
        yield checked
    finally:
        Figure.savefig = original
