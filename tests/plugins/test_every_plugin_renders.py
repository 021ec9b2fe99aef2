"""Every discovered plugin renders on a small real dump, static and interactive, and the files
are checked (valid PNGs of a sensible size, GIFs with several frames, offline HTML with data)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitscope.analyze.run import render_plugins
from vitscope.errors import PluginError
from vitscope.plugin import pointing, select_layers
from vitscope.plugin.masks import mass_in_mask, patch_coverage
from vitscope.plugins import BUILTINS
from vitscope.analyze.registry import discover

PLUGINS = discover().names()          # entry-point names only: nothing is imported here
FAST = {"cls-embedding": {"umap": False}}   # UMAP has its own test (numba JIT is slow)
SCRIPT_SRC = re.compile(r"<script[^>]*\ssrc=[\"']([^\"']+)", re.I)


def reject_non_json(constant: str):
    raise AssertionError(f"summary.json holds {constant}, which is not JSON (write null)")


def check_png(path: Path) -> None:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        w, h = im.size
        assert im.format == "PNG"
    assert 200 <= w <= 8000 and 150 <= h <= 8000, (path.name, w, h)


def check_gif(path: Path) -> None:
    with Image.open(path) as im:
        assert im.format == "GIF" and im.n_frames > 1, path.name
        assert min(im.size) >= 64


def check_html(path: Path, run_dir: Path) -> None:
    text = path.read_text()
    assert "Plotly.newPlot" in text
    assert re.search(r'"(x|y|z)":\s*\[', text) or '"bdata"' in text, f"{path.name} has no data"
    sources = SCRIPT_SRC.findall(text)
    assert sources and not any(s.lower().startswith(("http", "//")) for s in sources), sources
    for src in sources:  # plotly.js, once per run folder, by relative path
        assert (path.parent / src).resolve() == (run_dir / "plotly.min.js").resolve()


@pytest.mark.parametrize("name", PLUGINS)
def test_plugin_renders_static_and_interactive(name, small_dump, tmp_path):
    dump_path, _ = small_dump
    entry = discover().get(name)
    assert entry.ok, entry.error
    values = {name: FAST.get(name, {})}

    static_run = tmp_path / "static"
    (res,) = render_plugins(dump_path, [entry], static_run, values, static=True,
                            interactive=False)
    assert res.ok, res.error
    kinds = {p.suffix for p in res.files}
    assert ".png" in kinds and ".html" not in kinds
    for f in res.files:
        assert f.is_file() and f.parent == res.out_dir
        if f.suffix == ".png":
            check_png(f)
        if f.suffix == ".gif":
            check_gif(f)
    if name in BUILTINS:
        saved = np.load(res.out_dir / "results.npz")
        assert len(saved.files) >= 3
        json.loads((res.out_dir / "summary.json").read_text(),
                   parse_constant=reject_non_json)   # NaN / Infinity are not JSON

    live_run = tmp_path / "interactive"
    (res,) = render_plugins(dump_path, [entry], live_run, values, static=False, interactive=True)
    assert res.ok, res.error
    pages = [f for f in res.files if f.suffix == ".html"]
    assert pages and not any(f.suffix in (".png", ".gif") for f in res.files)
    for page in pages:
        check_html(page, live_run)
    index = (live_run / "index.html").read_text()
    assert name in index and not SCRIPT_SRC.findall(index)


def test_gifs_of_the_animated_plugins(small_dump, tmp_path):
    dump_path, _ = small_dump
    registry = discover()
    results = render_plugins(dump_path, registry.select(["token-attention", "norm-activations"]),
                             tmp_path, interactive=False)
    gifs = [f for r in results for f in r.files if f.suffix == ".gif"]
    assert {g.name for g in gifs} == {"token_attention.gif", "token_norms.gif"}
    with Image.open(tmp_path / "token-attention" / "token_attention.gif") as im:
        assert im.n_frames == 2 * 3   # depth 2 × (2 heads + their mean)


def test_svg_and_pdf_formats(small_dump, tmp_path):
    dump_path, _ = small_dump
    entry = discover().get("rollout")
    for fmt, magic in (("svg", b"<?xml"), ("pdf", b"%PDF")):
        (res,) = render_plugins(dump_path, [entry], tmp_path / fmt, fmt=fmt, interactive=False)
        figures = [f for f in res.files if f.suffix == f".{fmt}"]
        assert len(figures) == 3 and all(f.read_bytes().startswith(magic) for f in figures)


def test_mask_numbers_are_reported(small_dump, tmp_path):
    dump_path, _ = small_dump
    registry = discover()
    render_plugins(dump_path, registry.select(["rollout", "cls-heatmap"]), tmp_path,
                   interactive=False)
    summary = json.loads((tmp_path / "rollout" / "summary.json").read_text())
    assert 0 < summary["mask_area"] < 1 and 0 <= summary["mass_in_mask"] <= 1
    assert summary["mass_over_area"] == pytest.approx(summary["mass_in_mask"] /
                                                      summary["mask_area"], rel=1e-2)
    assert (tmp_path / "rollout" / "rollout_mask.png").is_file()
    heat = json.loads((tmp_path / "cls-heatmap" / "summary.json").read_text())
    assert 0 <= heat["last_layer_cls_mass_in_mask"] <= 1
    index = (tmp_path / "index.html").read_text()
    assert "mass in mask" in index and "shapes" in index   # summary keys shown as words


def test_umap_projection_and_silhouette(small_dump, tmp_path):
    dump_path, _ = small_dump
    (res,) = render_plugins(dump_path, [discover().get("cls-embedding")], tmp_path,
                            {"cls-embedding": {"layers": "last"}}, interactive=True)
    assert res.ok, res.error
    saved = np.load(res.out_dir / "results.npz")
    assert saved["umap"].shape == (2, 12, 2) and np.isfinite(saved["umap"]).all()
    assert saved["silhouette"].shape == (3,)    # 2 blocks + the head token
    html = (res.out_dir / "cls_embedding.html").read_text()
    # hover thumbnails: one sprite PNG beside the page (no base64 copy of every image in it)
    assert 'var SHEET = "cls_embedding_files/images.png"' in html
    from vitscope.dump import Dump
    with Image.open(res.out_dir / "cls_embedding_files" / "images.png") as im:
        sheet = np.asarray(im.convert("RGB"))
    with Dump.open(dump_path) as dump:
        images = dump.images[:12]
    h, w = images.shape[1:3]
    assert sheet.shape == (3 * h, 4 * w, 3)          # 12 images on a 4-column grid
    assert np.array_equal(sheet[h:2 * h, 3 * w:4 * w], images[7])


def test_missing_umap_is_a_clear_warning(small_dump, tmp_path, monkeypatch):
    # A `umap` first on sys.path that fails to import, as when umap-learn is not installed
    # (the plugin renders in a child process, which takes the parent's sys.path).
    shim = tmp_path / "no_umap"
    shim.mkdir()
    (shim / "umap.py").write_text("raise ImportError('No module named umap')\n")
    monkeypatch.syspath_prepend(str(shim))
    dump_path, _ = small_dump
    (res,) = render_plugins(dump_path, [discover().get("cls-embedding")], tmp_path,
                            interactive=False)
    assert res.ok and any("pip install umap-learn" in w for w in res.warnings), res.warnings
    assert "umap" not in np.load(tmp_path / "cls-embedding" / "results.npz").files
    assert "skipped" in json.loads((tmp_path / "cls-embedding" / "summary.json").read_text())["umap"]


def test_layer_selection():
    assert select_layers("first,middle,last", 12) == [0, 6, 11]
    assert select_layers("0,-1,2-4", 6) == [0, 2, 3, 4, 5]
    assert select_layers("all", 3) == [0, 1, 2]
    with pytest.raises(PluginError, match="outside the model's blocks 0–5"):
        select_layers("9", 6)


def test_mask_metrics_by_hand():
    masks = np.zeros((2, 8, 8), bool)
    masks[:, :4, :4] = True                     # the top-left quarter is the object
    cov = patch_coverage(masks, (2, 2))
    np.testing.assert_array_equal(cov[0], [[1, 0], [0, 0]])
    maps = np.array([[[3.0, 1.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]])
    np.testing.assert_allclose(mass_in_mask(maps, cov), [0.75, 0.25])
    # a constant map ties on every patch: its expected hit is the share of patches on the object
    np.testing.assert_allclose(pointing(maps, cov), [1.0, 0.25])


def test_pca_matches_scikit_learn():
    from sklearn.decomposition import PCA

    from vitscope.plugins.cls_embedding import pca_2d
    x = np.random.default_rng(0).normal(size=(300, 20)) * np.arange(1, 21)
    coords, ratio = pca_2d(x)
    ref = PCA(2).fit(x)
    np.testing.assert_allclose(ratio, ref.explained_variance_ratio_, rtol=1e-5)
    np.testing.assert_allclose(np.abs(coords), np.abs(ref.transform(x)), rtol=1e-4, atol=1e-3)
