"""Hostile class names never run as script, in a real headless Chromium (tests/browser.py).

Names reach the pages from three places: a checkpoint's `classes`, a dump's `classes`
attribute and ImageFolder directory names. Each test renders through the real CLI, opens
every page it wrote (each plugin's HTML, SVG figures, index.html), hovers every point of every
plot so the hover scripts run, and asserts that no payload ran (no marker, no dialog, title
unchanged), that the page itself still works, and that the names are shown as text.
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from vitscope.cli import main

NO_UMAP = ["--opt", "cls-embedding.umap=false"]
EMB = "cls-embedding@umap=false"          # that setting's folder (vitscope.render.setting_folders)

# Each payload, if it ran, sets window.__pwned, changes the title and opens a dialog.
RUN = "window.__pwned=1;document.title='pwned';alert(1)"
PAYLOADS = [
    f"</script><script>{RUN}</script>",
    f"<img src=x onerror=\"{RUN}\">",
    f"\"><svg onload=\"{RUN}\">",
    f"'><img src=x onerror='{RUN}'>",
    f"<!--<script>{RUN}//",
    f"<iframe srcdoc='<script>parent.{RUN}</script>'></iframe>",
    f"<a href=\"javascript:{RUN}\">click</a>",
    "<b>bold</b> &amp; %{x} {plot_id}",
    f"\u2028\u2029</SCRIPT ><script>{RUN}</script>",
    f"<details open ontoggle=\"{RUN}\">",
]
# Folder names cannot hold '/': the payloads an ImageFolder can carry.
FOLDER_PAYLOADS = [f"<img src=x onerror={RUN.replace(' ', '')}>",
                   "<svg onload=window.__pwned=1>", "a&b <b>c"]

HOVER_ALL = """(function () {
  var n = 0;
  document.querySelectorAll('.js-plotly-plot').forEach(function (gd) {
    (gd._fullData || []).forEach(function (trace, c) {   // decoded (typed) arrays
      var ids = trace.customdata || [];
      for (var k = 0; k < ids.length; k++) {
        gd.emit('plotly_hover', {points: [{customdata: ids[k], curveNumber: c, pointNumber: k}]});
        n++;
      }
    });
  });
  return n;
})()"""


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def check_pages(browser, out: Path, *, title: str, svg: bool = False) -> dict[str, int]:
    """Open every HTML (and SVG) page under `out`; assert nothing ran. Returns the hovers
    made per Plotly page."""
    pages = sorted(out.rglob("*.html")) + (sorted(out.rglob("*.svg")) if svg else [])
    assert (out / "index.html") in pages
    hovered = {}
    for path in pages:
        page = browser.open(path, root=out)
        try:
            rel = path.relative_to(out).as_posix()
            if path.suffix == ".html" and path.name != "index.html":   # a Plotly page
                page.wait_for("document.querySelectorAll('.main-svg').length > 0 && "
                              "!!document.querySelector('.js-plotly-plot')._fullLayout")
                hovered[rel] = page.eval(HOVER_ALL)
            expected = title if path.name == "index.html" else \
                ("" if path.suffix == ".html" else page.eval("document.title"))
            assert page.eval("window.__pwned") is None, rel
            assert page.dialogs == [], (rel, page.dialogs)
            assert page.eval("document.title") == expected, rel
            assert page.exceptions == [], (rel, page.exceptions)
        finally:
            page.close()
    return hovered


def hostile_checkpoint(src: Path, dest: Path, names: list[str]) -> Path:
    ckpt = torch.load(src, weights_only=True)
    ckpt["classes"] = list(names)
    torch.save(ckpt, dest)
    return dest


def test_hostile_checkpoint_classes_run_no_script(browser, shapes_ckpt, tmp_path, monkeypatch):
    """The issue's reproduction: `vitscope analyze X.pt --all` with script in classes[0]."""
    monkeypatch.chdir(tmp_path)
    ckpt = hostile_checkpoint(shapes_ckpt, tmp_path / "X.pt", PAYLOADS)
    out = tmp_path / "out"
    res = run("analyze", ckpt, "--all", "-n", 24, *NO_UMAP, "-o", out)
    assert res.exit_code == 0, res.output
    hovered = check_pages(browser, out, title="vitscope · out")
    plugin_pages = {p.split("/")[0] for p in hovered}
    assert {EMB, "cls-heatmap", "rollout", "token-attention",
            "norm-activations"} <= plugin_pages
    assert hovered[f"{EMB}/cls_embedding.html"] >= 24   # every point's hover script ran

    # The names are shown as text: in the hover box, the legend and index.html.
    page = browser.open(out / EMB / "cls_embedding.html", root=out)
    page.wait_for("document.querySelectorAll('.legendtext').length > 0")
    preds = np.load(out / EMB / "results.npz")["preds"]
    page.eval("(function(){var gd=document.querySelector('.js-plotly-plot');"
              "gd.emit('plotly_hover',{points:[{customdata:0}]});})()")
    caption = page.eval("Array.from(document.querySelectorAll('div'))"
                        ".filter(d => d.style.whiteSpace === 'pre-line')[0].textContent")
    assert caption.endswith(f"prediction {PAYLOADS[preds[0]]}")
    legend = page.eval("Array.from(document.querySelectorAll('.legendtext'), e => e.textContent)")
    assert PAYLOADS[preds[0]] in legend
    page.close()
    index = browser.open(out / "index.html", root=out)
    run_table = index.eval("document.querySelector('table.kv').textContent")
    assert all(p.replace("\u2028", "").replace("\u2029", "")[:12] in
               run_table.replace("\u2028", "").replace("\u2029", "") for p in PAYLOADS)
    hrefs = index.eval("Array.from(document.querySelectorAll('a[href],img[src],iframe[src]'),"
                       " e => e.getAttribute('href') || e.getAttribute('src'))")
    assert hrefs and all(h.startswith(("./", "#")) for h in hrefs), hrefs
    index.close()


def test_hostile_dump_classes_attribute_runs_no_script(browser, small_dump, tmp_path):
    dump_path, _ = small_dump
    hostile = tmp_path / "hostile.h5"
    hostile.write_bytes(Path(dump_path).read_bytes())
    with h5py.File(hostile, "r+") as f:
        n = len(json.loads(f.attrs["classes"]))
        f.attrs["classes"] = json.dumps((PAYLOADS * 2)[:n])
    out = tmp_path / "out"
    res = run("analyze", "--dump", hostile, "-p", "cls-embedding", "-p", "cls-heatmap",
              *NO_UMAP, "-o", out)
    assert res.exit_code == 0, res.output
    hovered = check_pages(browser, out, title="vitscope · out")
    assert hovered[f"{EMB}/cls_embedding.html"] >= 12


def test_hostile_imagefolder_names_run_no_script(browser, tmp_path, monkeypatch):
    """Class names taken from directory names (a checkpoint that records no classes)."""
    from PIL import Image

    from vitscope.model.checkpoint import save_checkpoint
    from vitscope.model.vit import ModelConfig, ViT

    monkeypatch.setenv("VITSCOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    for split, count in (("train", 2), ("val", 4)):
        for name in FOLDER_PAYLOADS:
            (data / split / name).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
                    data / split / name / f"{i}.png")
    torch.manual_seed(0)
    model = ViT(ModelConfig(image_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2,
                            mlp_ratio=2.0, num_classes=len(FOLDER_PAYLOADS))).eval()
    ckpt = save_checkpoint(tmp_path / "folder.pt", model, classes=None,
                           train_config={"data": f"folder:{data}", "image_size": 16})
    out = tmp_path / "out"
    res = run("analyze", ckpt, "-p", "cls-embedding", "-p", "rollout", "-n", 12,
              "--format", "svg", *NO_UMAP, "-o", out)
    assert res.exit_code == 0, res.output
    hovered = check_pages(browser, out, title="vitscope · out", svg=True)   # matplotlib's SVG too
    assert hovered[f"{EMB}/cls_embedding.html"] >= 12
    page = browser.open(out / EMB / "cls_embedding.html", root=out)
    page.wait_for("document.querySelectorAll('.legendtext').length > 0")
    legend = page.eval("Array.from(document.querySelectorAll('.legendtext'), e => e.textContent)")
    assert sorted(legend) == sorted(FOLDER_PAYLOADS)
    page.close()


def test_script_json_cannot_end_a_script_block():
    from vitscope.render.escaping import href, plotly_text, script_json, template_text
    for payload in PAYLOADS:
        encoded = script_json([payload])
        assert "<" not in encoded and ">" not in encoded and "&" not in encoded
        assert json.loads(encoded) == [payload]
    assert href("rollout/a b#c?.png") == "./rollout/a%20b%23c%3F.png"
    assert href("javascript:alert(1)/x.png").startswith("./javascript%3A")
    assert plotly_text("<b>x</b>") == "&lt;b&gt;x&lt;/b&gt;"
    assert "%{" not in template_text("%{x}")


@pytest.mark.parametrize("flags", [()])
def test_the_harness_sees_a_script_that_runs(browser_factory, tmp_path, flags):
    """The assertions above can fail: the same checks catch an unescaped page."""
    page_path = tmp_path / "bad.html"
    page_path.write_text(f"<html><head><title>t</title></head><body>{PAYLOADS[1]}</body></html>")
    browser = browser_factory(*flags)
    page = browser.open(page_path)
    page.wait_for("window.__pwned === 1")
    assert page.dialogs == ["1"] and page.eval("document.title") == "pwned"
    page.close()


def test_hostile_score_section_runs_no_script(browser, tmp_path):
    """index.html's Score section (`vitscope score`): the checkpoint path, the table and the
    file names are text, and every link stays a relative file link."""
    from vitscope.render.index_page import write_index
    out = tmp_path / "run"
    (out / "score").mkdir(parents=True)
    files = [f"score/{p.replace('/', '_')}{ext}" for p, ext in
             zip(PAYLOADS, [".png", ".html", ".json", ".svg"] * 3)]
    for f in files:
        (out / f).write_bytes(b"")
    score = {"files": ["score/javascript:alert(1).png", *files], "table": PAYLOADS[0],
             "checkpoint": PAYLOADS[1], "checkpoint_sha256": "x", "data": PAYLOADS[2],
             "images": 4, "target": PAYLOADS[3], "perturbation": PAYLOADS[4]}
    (out / "manifest.json").write_text(json.dumps({"plugins": {}, "run": {}, "score": score}))
    write_index(out)
    page = browser.open(out / "index.html", root=out)
    try:
        assert page.eval("window.__pwned") is None and page.dialogs == []
        assert page.eval("document.title") == "vitscope · run"
        assert PAYLOADS[0] in page.eval("document.querySelector('#score pre').textContent")
        links = page.eval("Array.from(document.querySelectorAll('#score [href], #score [src]'),"
                          " e => e.getAttribute('href') || e.getAttribute('src'))")
        assert len(links) >= len(files) and all(h.startswith("./score/") for h in links), links
    finally:
        page.close()
