"""No text outside the canvas and none on top of other text, in every static figure of every
built-in plugin, for one image (the `analyze --image` case: short figures, where a long
colourbar label ran off the canvas into the title) and for a few. Measured with
matplotlib's own text extents (tests/figure_text.py) on real renders."""
from __future__ import annotations

import pytest

from figure_text import saved_figures
from vitscope.analyze.registry import discover
from vitscope.dump import Dump
from vitscope.testing import make_dump, render_options


@pytest.mark.parametrize("n", [1, 12])
def test_every_builtin_figure_keeps_its_text_on_the_canvas(tmp_path, n):
    dump_path = make_dump(tmp_path / "d.h5", n=n)
    plugins = [e for e in (e.load() for e in discover().entries) if e.ok and e.builtin]
    assert len(plugins) >= 8
    with saved_figures() as figures, Dump.open(dump_path) as dump:
        for e in plugins:
            if n < (getattr(e.plugin, "min_images", 1) or 1):
                continue
            fast = {"umap": False} if e.name == "cls-embedding" else {}
            e.plugin.render(dump, tmp_path / e.name, render_options(
                e.plugin, interactive=False, run_dir=tmp_path, **fast))
    names = [f.name for f in figures]
    assert len(names) >= 15 and "grad-rollout.png" in names and "cls_to_patches.png" in names
    assert [f"{f.name}: {p}" for f in figures for p in f.problems] == []
    # a class "average" of one image is not drawn (it would be the image again)
    assert any(name.startswith("class_average") for name in names) == (n > 1)
