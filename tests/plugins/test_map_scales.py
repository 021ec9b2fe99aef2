"""Maps are drawn as their patch grid unless --smooth, token-attention prints
each tile's maximum or draws one shared scale with a real-valued colourbar, and the HTML
sliders carry a colourbar in real values. Real dump, real CLI, real PNG and HTML."""
from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner
from PIL import Image

from vitscope.render import mosaic as M
from vitscope.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_patch_grid_by_default_and_smoothing_on_request():
    maps = np.arange(4, dtype=np.float32).reshape(1, 2, 2)
    tiles = M.heat_tiles(maps, 8)[0]                       # 8×8×3, patches of 4×4 px
    for r in (0, 1):
        for c in (0, 1):
            block = tiles[4 * r:4 * r + 4, 4 * c:4 * c + 4].reshape(-1, 3)
            assert (block == block[0]).all()               # one colour per patch
    with M.smoothing(True):
        smooth = M.heat_tiles(maps, 8)[0]
    assert len({tuple(p) for p in smooth.reshape(-1, 3)}) > 4   # bilinear: a gradient
    scaled, peaks, top = M.scale_maps(np.stack([maps[0], maps[0] / 10]), "shared")
    assert top == 3 and np.allclose(peaks, [3, 0.3]) and np.isclose(scaled.max(), 1)
    scaled, peaks, top = M.scale_maps(np.stack([maps[0], maps[0] / 10]), "tile")
    assert top is None and np.allclose(scaled.max(axis=(1, 2)), 1)


def test_scales_and_smoothing_through_the_cli(small_dump, tmp_path):
    dump, ckpt = small_dump
    base = ["analyze", "--dump", dump, "-p", "token-attention", "-p", "rollout",
            "--opt", "token-attention.show=1"]
    outs = {}
    for name, extra in (("tile", []), ("shared", ["--opt", "token-attention.scale=shared"]),
                        ("smooth", ["--smooth"])):
        res = run(*base, *extra, "-o", tmp_path / name)
        assert res.exit_code == 0, res.output
        outs[name] = tmp_path / name
    folder = {"tile": "token-attention@show=1", "smooth": "token-attention@show=1",
              "shared": "token-attention@scale=shared,show=1"}    # one per setting
    png = {k: np.asarray(Image.open(v / folder[k] / "token_attention_img0.png"))
           for k, v in outs.items()}
    assert png["tile"].shape != png["shared"].shape or (png["tile"] != png["shared"]).any()
    roll = {k: (v / "rollout" / "rollout.png").read_bytes() for k, v in outs.items()}
    assert roll["smooth"] != roll["tile"]                  # --smooth changes the maps
    manifest = json.loads((outs["shared"] / "manifest.json").read_text())
    assert manifest["plugins"][folder["shared"]]["options"] == {"show": 1, "scale": "shared"}
    html = (outs["tile"] / folder["tile"] / "token_attention.html").read_text()
    assert '"coloraxis"' in html and '"attention"' in html   # one colourbar, real values
    assert "coloraxis.cmax" in html                            # it follows the slider


def test_triptych_tiles_share_one_scale_on_request():
    """scale=shared colours a map at a tenth of another's values darker; tile makes them alike."""
    images = np.full((2, 8, 8, 3), 128, np.uint8)
    strong = np.arange(16, dtype=np.float32).reshape(4, 4)
    maps = np.stack([strong, strong / 10])
    tile, top = M.triptych_tiles(images, maps, "tile")
    assert top is None and (tile[0, 1] == tile[1, 1]).all()        # both ÷ own maximum
    shared, top = M.triptych_tiles(images, maps, "shared")
    assert top == 15 and (shared[0, 1] == tile[0, 1]).all()        # the strongest is unchanged
    size = shared.shape[2:4]
    assert (shared[1, 1] == M.heat_tiles(maps[1:] / 15, size, normalize=False)[0]).all()
    assert (shared[1, 1] != tile[1, 1]).any()
    legend = M.scale_legend(np.array([[3.0, 0.3]]), None, "rollout", col_offset=1)
    assert legend["captions"] == {(0, 1): "max 3", (0, 2): "max 0.3"}
    assert M.scale_legend(np.array([[3.0]]), 3.0, "rollout") == {
        "cbar": "rollout (one scale for every tile)", "cbar_max": 3.0}


def test_every_map_plugin_offers_a_shared_scale(small_dump, tmp_path):
    """rollout, cls-heatmap (and the gradient plugins, same option) draw other figures with
    scale=shared, and reject a scale they do not know before touching the output."""
    dump, _ = small_dump
    figures = {"rollout": ["rollout.png", "rollout_evolution.png"],
               "cls-heatmap": ["cls_to_patches.png", "heads_img0.png", "class_average_cls_to_patches.png"]}
    base = ["analyze", "--dump", dump, "--static", "--opt", "cls-heatmap.per_head=1"]
    for plugin in figures:
        base += ["-p", plugin]
    from vitscope.analyze.registry import discover
    from vitscope.render.setting_folders import changed_options, setting_folder
    out = tmp_path / "out"       # both settings in one run folder, each in its own folder
    folders = {}
    for scale in ("tile", "shared"):
        opts = [a for p in figures for a in ("--opt", f"{p}.scale={scale}")]
        res = run(*base, *opts, "-o", out)
        assert res.exit_code == 0, res.output
        for plugin in figures:
            given = {"scale": scale, **({"per_head": 1} if plugin == "cls-heatmap" else {})}
            folders[plugin, scale] = out / setting_folder(
                plugin, changed_options(discover().get(plugin), given))
    for plugin, files in figures.items():
        assert folders[plugin, "tile"] != folders[plugin, "shared"]
        for name in files:
            a, b = (np.asarray(Image.open(folders[plugin, s] / name)) for s in ("tile", "shared"))
            assert a.shape != b.shape or (a != b).any(), (plugin, name)
    res = run(*base, "--opt", "rollout.scale=log", "-o", out)
    assert res.exit_code != 0 and "tile" in res.output and "shared" in res.output
    assert (folders["rollout", "tile"] / "rollout.png").exists()
    for name in ("rollout", "grad-rollout", "attn-grad", "gradcam", "cls-heatmap",
                 "token-attention"):
        assert "scale" in {o.name for o in discover().get(name).options}, name
