"""A data folder that is not on this machine (a checkpoint trained elsewhere: its recorded
`folder:` path is someone else's) is found before any work: `analyze` and `score` say so in
one line and write nothing, even when a cached dump would serve the first steps."""
from __future__ import annotations

import shutil

import numpy as np
import torch
from click.testing import CliRunner
from PIL import Image

from vitscope.cli import main
from vitscope.model.checkpoint import save_checkpoint
from vitscope.model.vit import ModelConfig, ViT

CLASSES = ["cat", "dog", "bird"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_a_missing_training_folder_fails_before_any_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "team-only" / "pets"
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in CLASSES:
            (data / split / c).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
                    data / split / c / f"{i}.png")
    torch.manual_seed(0)
    model = ViT(ModelConfig(image_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2,
                            mlp_ratio=2.0, num_classes=3)).eval()
    ckpt = save_checkpoint(tmp_path / "pets" / "best.pt", model, classes=CLASSES,
                           train_config={"data": f"folder:{data}", "image_size": 16})
    res = run("analyze", ckpt, "-p", "rollout", "--static", "-o", tmp_path / "first")
    assert res.exit_code == 0, res.output
    dumps = sorted((tmp_path / "outputs" / "dumps").glob("*.h5"))
    shutil.rmtree(tmp_path / "team-only")          # the checkpoint travels, its data does not

    # The cached dump still serves what it covers (with a warning that its pixels went unchecked).
    res = run("analyze", ckpt, "-p", "rollout", "--static", "-o", tmp_path / "again")
    assert res.exit_code == 0 and "Reusing dump" in res.output, res.output

    for args in (["analyze", ckpt, "-p", "grad-rollout", "-o", tmp_path / "grads"],
                 ["score", ckpt, "-p", "rollout", "-n", 4, "-o", tmp_path / "scored"]):
        res = run(*args)
        assert res.exit_code == 1, res.output
        assert res.output.startswith("Error: ") and res.output.count("\n") == 1, res.output
        assert f"was trained on --data folder:{data}" in res.output, res.output
        assert "pass --data" in res.output and "does not exist" in res.output, res.output
        assert not (tmp_path / "grads").exists() and not (tmp_path / "scored").exists()
        assert sorted((tmp_path / "outputs" / "dumps").glob("*.h5")) == dumps   # no capture

    # Data given with --data is named as the user typed it.
    res = run("score", ckpt, "-p", "rollout", "--data", "folder:elsewhere", "-o", tmp_path / "s")
    assert res.exit_code == 1 and "folder:elsewhere does not exist" in res.output, res.output
    assert "was trained on" not in res.output and not (tmp_path / "s").exists()
