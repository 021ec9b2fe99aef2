"""A model without a class head (a feature model, here a tiny random Dinov2Model) on a folder
without labels: predictions are absent (not an argmax of features), captions name the files,
groupings fall back to one group, every built-in plugin renders or sits out with its reason,
and gradients explain only a target that means something (--target similarity:IMAGE).
Real tiny model, real image files, real CLI, real HDF5, PNG and HTML."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vitscope.cli import main
from vitscope.dump import Dump

pytest.importorskip("transformers")

FILES = [f"IMG_{i}.png" for i in range(5)]
GRADIENT_PLUGINS = ("attn-grad", "grad-rollout", "gradcam")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def feature_model(tmp_path, monkeypatch):
    """(checkpoint of a headless Dinov2Model at 32 px, a flat folder of 5 unlabelled images)."""
    from vitscope.model.adapters import build
    from vitscope.model.checkpoint import save_checkpoint
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = build("hf", "Dinov2Model", hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8,
                  model_type="dinov2").eval()
    ckpt = save_checkpoint(tmp_path / "dino.pt", model, model_config=model.cfg, arch="hf",
                           classes=[], train_config={"image_size": 32, "normalize": {
                               "mean": [0.5] * 3, "std": [0.5] * 3}})
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in FILES:
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / name)
    return ckpt, folder


def test_every_plugin_on_an_unlabelled_folder_and_a_headless_model(feature_model, tmp_path):
    ckpt, folder = feature_model
    res = run("analyze", ckpt, "--all", "--data", f"folder:{folder}", "-o", tmp_path / "out")
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output
    for name in GRADIENT_PLUGINS:   # nothing silently explains an argmax of features
        assert f"skipped {name}" in res.output
    assert "--target similarity:IMAGE" in res.output
    for name in ("cls-heatmap", "cls-embedding", "rollout", "token-attention",
                 "norm-activations"):
        assert any(line.startswith("ok") and name in line for line in res.output.splitlines()), \
            res.output
    heat = json.loads((tmp_path / "out" / "cls-heatmap" / "summary.json").read_text())
    assert heat["class_average_by"] == "all images"
    assert (tmp_path / "out" / "cls-heatmap" / "class_average_cls_to_patches.png").is_file()
    emb = json.loads((tmp_path / "out" / "cls-embedding" / "summary.json").read_text())
    assert emb["coloured_by"] == "all images"
    page = (tmp_path / "out" / "cls-embedding" / "cls_embedding.html").read_text()
    assert "prediction ?" not in page and "IMG_" in page
    rollout = (tmp_path / "out" / "rollout" / "rollout.html").read_text()
    assert "IMG_" in rollout and "→ ?" not in rollout
    dump_path = next((tmp_path / "outputs" / "dumps").glob("*.h5"))
    with Dump.open(dump_path) as d:
        assert (d.preds == -1).all() and d.target_spec == "none"
        from vitscope.render.figures import captions
        assert [c.split(" ")[0] for c in captions(d, len(d))] == d.file_names


def test_a_class_target_on_a_feature_model_is_one_sentence(feature_model, tmp_path):
    ckpt, folder = feature_model
    for args in (("analyze", ckpt, "-p", "gradcam", "--data", f"folder:{folder}", "-o",
                  tmp_path / "o1"),
                 ("analyze", ckpt, "-p", "rollout", "--target", "pred", "--data",
                  f"folder:{folder}", "-o", tmp_path / "o2"),
                 ("dump", ckpt, "--data", f"folder:{folder}", "--hooks", "grad:cls", "-o",
                  tmp_path / "d.h5")):
        res = run(*args)
        assert res.exit_code != 0 and "Traceback" not in res.output, res.output
        assert "no class head" in res.output and "--target similarity:IMAGE" in res.output
        assert res.output.count("\n") <= 2, res.output
    assert not (tmp_path / "d.h5").exists()


def test_similarity_target_explains_the_gradient_plugins(feature_model, tmp_path):
    ckpt, folder = feature_model
    ref = folder / FILES[1]
    args = ["analyze", ckpt, "--data", f"folder:{folder}", "-o", tmp_path / "out",
            "--target", f"similarity:{ref}"]
    for name in GRADIENT_PLUGINS:
        args += ["-p", name]
    res = run(*args)
    assert res.exit_code == 0, res.output
    assert f"for target similarity:{ref}" in res.output
    for name in GRADIENT_PLUGINS:
        assert (tmp_path / "out" / name / "summary.json").is_file(), name
    summary = json.loads((tmp_path / "out" / "gradcam" / "summary.json").read_text())
    assert summary["target"] == f"similarity:{ref}"
    page = (tmp_path / "out" / "gradcam" / "gradcam.html").read_text()
    assert "target: similarity:" in page and ref.name in page     # the title (JSON-escaped)
    dump_path = next((tmp_path / "outputs" / "dumps").glob("*.h5"))
    with Dump.open(dump_path) as d:
        assert d.target_spec == f"similarity:{ref}"
        assert d.target_names == [f"similarity to {ref.name}"]
        assert (d.target == 0).all() and (d.preds == -1).all()
        scores = np.asarray(d.logits[:])[:, 0]
        me = d.file_names.index(ref.name)
        # the reference image is itself: cosine 1; the others less
        assert scores[me] == pytest.approx(1.0, abs=1e-5)
        assert (np.delete(scores, me) < 1 - 1e-4).all()
        grads = np.asarray(d["grad:blocks.1.norm1.out"][:], np.float32)
        assert np.abs(grads[np.arange(len(d)) != me]).sum() > 0
    # the same target again reuses the dump; a missing reference image is one sentence
    again = run(*args)
    assert again.exit_code == 0 and "Reusing dump" in again.output, again.output
    bad = run("analyze", ckpt, "-p", "gradcam", "--data", f"folder:{folder}", "-o",
              tmp_path / "o2", "--target", "similarity:nowhere.png")
    assert bad.exit_code != 0 and "names no image file" in bad.output, bad.output
