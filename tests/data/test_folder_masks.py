"""`folder:` data with a masks/ tree (one PNG per image, non-zero = the object): the masks
follow the images through loading and feed `vitscope score`'s localisation."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from vitscope.cli import main
from vitscope.data import load_dataset
from vitscope.data.shapes import CLASSES
from vitscope.errors import DataError


def make_tree(root, masks=True, size=16):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in CLASSES[:3]:
            (root / split / c).mkdir(parents=True)
            if masks:
                (root / "masks" / split / c).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
                    root / split / c / f"{i}.jpg")
                if masks:
                    m = np.zeros((size, size), np.uint8)
                    m[: 4 + 2 * i, : 4 + 2 * i] = 255        # a top-left square, growing
                    Image.fromarray(m).save(root / "masks" / split / c / f"{i}.png")


def test_masks_follow_the_images_and_masks_is_not_a_class(tmp_path):
    make_tree(tmp_path / "d")
    ds = load_dataset(f"folder:{tmp_path / 'd'}", "val", 16)
    assert ds.classes == CLASSES[:3] and ds.masks is not None and ds.masks.shape == (9, 16, 16)
    for path, mask in zip(ds.paths, ds.masks):
        side = 4 + 2 * int(path.rsplit("/", 1)[1][0])
        assert mask.sum() == side * side and mask[:side, :side].all()


def test_a_missing_mask_is_one_sentence(tmp_path):
    make_tree(tmp_path / "d")
    (tmp_path / "d" / "masks" / "val" / CLASSES[0] / "1.png").unlink()
    with pytest.raises(DataError, match="no mask for .*1.jpg"):
        load_dataset(f"folder:{tmp_path / 'd'}", "val", 16)


def test_score_localises_on_folder_masks(shapes_ckpt, tmp_path, monkeypatch):
    make_tree(tmp_path / "d")
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["score", str(shapes_ckpt), "-p", "rollout", "-n", "9",
                                    "--draws", "1", "--data", f"folder:{tmp_path / 'd'}"])
    assert res.exit_code == 0, res.output
    assert "Localisation on the object masks" in res.output
    report = json.loads((tmp_path / "outputs" / "run" / "score" / "score.json").read_text())
    loc = report["baselines"]["localization"]
    # a uniform map's mass in the mask is the mask's area: (16 + 36 + 64) / 3 / 256 on average
    assert loc["uniform"]["mass_in_mask"]["mean"] == pytest.approx((16 + 36 + 64) / 3 / 256)
    assert report["methods"]["rollout"]["localization"]["pointing"]["n"] == 9
