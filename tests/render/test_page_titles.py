"""Interactive pages of images with long file names stay legible: in a real headless
Chromium (tests/browser.py) every panel title, row caption and the page title lies inside the
figure and none overlaps another, on token_attention.html (captions × heads) and rollout.html
(one caption a column)."""
from __future__ import annotations

import numpy as np
import torch
from click.testing import CliRunner
from PIL import Image

from vitscope.cli import main
from vitscope.model.checkpoint import save_checkpoint
from vitscope.model.vit import ModelConfig, ViT

CLASSES = ["automobile", "airplane", "truck"]
BOXES = """(function () {
  var svg = document.querySelector('.main-svg').getBoundingClientRect();
  var out = [];
  document.querySelectorAll('.annotation-text, .gtitle').forEach(function (e) {
    var r = e.getBoundingClientRect();
    if (e.textContent.trim()) out.push([e.textContent, r.left - svg.left, r.top - svg.top,
                                        r.right - svg.left, r.bottom - svg.top]);
  });
  return {width: svg.width, height: svg.height, boxes: out};
})()"""


def overlapping(a, b) -> bool:
    return min(a[3], b[3]) - max(a[1], b[1]) > 1 and min(a[4], b[4]) - max(a[2], b[2]) > 1


def test_long_captions_neither_overlap_nor_leave_the_figure(tmp_path, browser, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    for c in CLASSES:
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(
                tmp_path / "imgs" / f"{c}_000{i}_from_the_long_named_camera.jpg")
    torch.manual_seed(0)
    model = ViT(ModelConfig(image_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=4,
                            mlp_ratio=2.0, num_classes=3)).eval()
    ckpt = save_checkpoint(tmp_path / "run" / "best.pt", model, classes=CLASSES,
                           train_config={"data": "shapes:val=8", "image_size": 16})
    res = CliRunner().invoke(main, ["analyze", str(ckpt), "-p", "token-attention", "-p",
                                    "rollout", "--data", f"folder:{tmp_path / 'imgs'}",
                                    "--interactive", "-o", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    for page_path in (tmp_path / "out" / "token-attention" / "token_attention.html",
                      tmp_path / "out" / "rollout" / "rollout.html"):
        page = browser.open(page_path, root=tmp_path / "out")
        try:
            page.wait_for("document.querySelector('.main-svg .annotation-text') !== null")
            found = page.eval(BOXES)
        finally:
            page.close()
        boxes = found["boxes"]
        assert any("camera.jpg" in b[0] for b in boxes), boxes      # the captions are shown
        for b in boxes:
            assert b[1] >= -1 and b[3] <= found["width"] + 1 and b[2] >= -1, (page_path.name, b)
        clashes = [(a[0], b[0]) for i, a in enumerate(boxes) for b in boxes[i + 1:]
                   if overlapping(a, b)]
        assert clashes == [], (page_path.name, clashes)
