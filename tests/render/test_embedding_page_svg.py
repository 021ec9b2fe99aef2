"""cls_embedding.html in a real headless Chromium WITHOUT WebGL (tests/browser.py).

A page that drew its points with WebGL only (go.Scattergl) would show a browser without
WebGL nothing but "WebGL is not supported". Up to `webgl_above` points a panel it draws SVG
points, which every browser draws; beyond, it uses WebGL and says so on the page.
"""
from __future__ import annotations

import re

import numpy as np
from click.testing import CliRunner

from vitscope.cli import main

NO_WEBGL = ("--disable-webgl", "--disable-3d-apis")
READY = ("document.querySelectorAll('.main-svg').length > 0 && "
         "!!document.querySelector('.js-plotly-plot')._fullLayout")
# Every drawn point: its centre on screen, its width, and its image index (the customdata
# of its trace at the point's index, what the hover box shows).
POINTS = """Array.from(document.querySelectorAll('.scatterlayer .point'), function (e) {
  var r = e.getBoundingClientRect(), trace = e.closest('.trace').__data__[0].trace;
  return [r.x + r.width / 2, r.y + r.height / 2, r.width, trace.customdata[e.__data__.i]];
})"""
HAS_WEBGL = "!!document.createElement('canvas').getContext('webgl')"
# The corner box of vitscope.render.interactive.hover_thumbnail_script (the div shown on hover).
HOVER_BOX = ("Array.from(document.querySelectorAll('div'))"
             ".filter(d => d.style.whiteSpace === 'pre-line')[0].parentElement")


def analyze(dump, out, *opts):
    opts = [a for o in ("umap=false", *opts) for a in ("--opt", f"cls-embedding.{o}")]
    res = CliRunner().invoke(main, ["analyze", "--dump", str(dump), "-p", "cls-embedding",
                                    *opts, "-o", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    (folder,) = out.glob("cls-embedding@*")          # this setting's folder (vitscope.render.setting_folders)
    return folder / "cls_embedding.html"


def hover(page, x: float, y: float) -> None:
    """A real mouse move (DevTools Input), so Plotly's own hover code finds the point."""
    page.browser.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y},
                      session=page.session)


def test_embedding_page_draws_svg_points_without_webgl(browser_factory, small_dump, tmp_path):
    from vitscope.plugins.cls_embedding import WEBGL_ABOVE, WEBGL_NOTE, ClsEmbedding
    defaults = {o.name: o.default for o in ClsEmbedding.options}
    assert defaults["webgl_above"] == WEBGL_ABOVE >= defaults["points"]   # default pages: SVG

    browser = browser_factory(*NO_WEBGL)
    dump, _ = small_dump
    svg_page = analyze(dump, tmp_path / "svg")
    gl_page = analyze(dump, tmp_path / "gl", "webgl_above=5")     # 12 images > 5: WebGL
    n = len(np.load(svg_page.parent / "results.npz")["labels"])
    assert n == 12

    page = browser.open(svg_page, root=tmp_path / "svg")
    try:
        assert page.eval(HAS_WEBGL) is False, "this browser has WebGL: the test would prove nothing"
        page.wait_for(READY)
        text = page.eval("document.body.innerText")
        assert "WebGL" not in text, text                   # neither Plotly's nor our note
        assert page.eval("document.querySelectorAll('.gl-canvas-context').length") == 0
        # one panel (PCA; umap=false), the shown layer's traces: every image is an SVG point
        points = page.eval(POINTS)
        assert len(points) == n and all(w > 0 for _, _, w, _ in points), points
        assert sorted(i for *_, i in points) == list(range(n))     # each image once
        # hovering a drawn point shows its image and caption: the hover script works on SVG
        assert page.eval(HOVER_BOX + ".style.display") == "none"
        x, y, _, image = points[0]
        hover(page, x, y)
        page.wait_for(HOVER_BOX + ".style.display === 'block'", timeout=5)
        caption = page.eval(HOVER_BOX + ".textContent")
        assert re.fullmatch(rf"#{image} · label \S+\nprediction \S+", caption), caption
        # the slider's first step (block 0) draws that layer's points as SVG too
        page.eval("(function () { var gd = document.querySelector('.js-plotly-plot');"
                  "return Plotly.update(gd, gd.layout.sliders[0].steps[0].args[0])"
                  ".then(() => 1); })()")
        block0 = page.eval(POINTS)
        assert len(block0) == n and sorted(p[:2] for p in block0) != sorted(p[:2] for p in points)
        assert page.exceptions == [], page.exceptions
    finally:
        page.close()

    page = browser.open(gl_page, root=tmp_path / "gl")
    try:
        page.wait_for(READY)
        assert page.eval("document.querySelectorAll('.scatterlayer .point').length") == 0
        page.wait_for("document.body.innerText.includes('WebGL is not supported')")
        # the page's own note says why, and it is visible: not under Plotly's grey message
        note = page.eval("document.querySelector('.vitscope-note').innerText")
        assert WEBGL_NOTE in note and "webgl_above=5" in note, note
        assert "--opt cls-embedding.webgl_above=12" in note, note
        assert page.eval("(function () { var r = document.querySelector('.vitscope-note')"
                         ".getBoundingClientRect(); return document.elementFromPoint("
                         "r.x + 5, r.y + r.height / 2).className; })()") == "vitscope-note"
    finally:
        page.close()


def test_page_note_is_escaped_text(tmp_path):
    import plotly.graph_objects as go

    from vitscope.render.interactive import save_html
    page = save_html(go.Figure(), tmp_path / "p.html",
                     note="<img src=x onerror=alert(1)> & \"quotes\"").read_text()
    assert '<p class="vitscope-note"' in page and "<img" not in page
    assert "&lt;img src=x onerror=alert(1)&gt; &amp; &quot;quotes&quot;</p>" in page
    assert "vitscope-note" not in save_html(go.Figure(), tmp_path / "q.html").read_text()
