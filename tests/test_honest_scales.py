"""Issue #13 sec. 5: maps are drawn as their patch grid unless --smooth, token-attention prints
each tile's maximum or draws one shared scale with a real-valued colourbar, and the HTML
sliders carry a colourbar in real values. Real dump, real CLI, real PNG and HTML."""
from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner
from PIL import Image

from vitscope import mosaic as M
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
    png = {k: np.asarray(Image.open(v / "token-attention" / "token_attention_img0.png"))
           for k, v in outs.items()}
    assert png["tile"].shape != png["shared"].shape or (png["tile"] != png["shared"]).any()
    roll = {k: (v / "rollout" / "rollout.png").read_bytes() for k, v in outs.items()}
    assert roll["smooth"] != roll["tile"]                  # --smooth changes the maps
    manifest = json.loads((outs["shared"] / "manifest.json").read_text())
    assert manifest["plugins"]["token-attention"]["options"] == {"show": 1, "scale": "shared"}
    html = (outs["tile"] / "token-attention" / "token_attention.html").read_text()
    assert '"coloraxis"' in html and '"attention"' in html   # one colourbar, real values
    assert "coloraxis.cmax" in html                            # it follows the slider
