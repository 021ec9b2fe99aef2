"""`vitscope analyze CKPT --image FILE` explains one image with every plugin
that fits it, and `--select` chooses which images the figures show (misclassified, correct,
a class, positions, file names). Real tiny ViT, real files, real CLI, real dumps and figures."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vitscope.model.checkpoint import save_checkpoint
from vitscope.cli import main
from vitscope.dump import Dump
from vitscope.model.vit import ModelConfig, ViT

CLASSES = ["cat", "dog", "bird"]
FILES = [f"{c}_{i}.png" for c in CLASSES for i in range(4)]   # 12 labelled files


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = ViT(ModelConfig(image_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2,
                            mlp_ratio=2.0, num_classes=len(CLASSES))).eval()
    ckpt = save_checkpoint(tmp_path / "pets" / "best.pt", model, classes=CLASSES,
                           train_config={"data": "shapes:val=8", "image_size": 16})
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in FILES:
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(folder / name)
    return tmp_path, ckpt, folder


def test_one_image_gets_every_plugin_that_fits_it(setup):
    tmp, ckpt, folder = setup
    res = run("analyze", ckpt, "--image", folder / "dog_2.png", "--static",
              "--opt", "cls-embedding.umap=false")
    assert res.exit_code == 0, res.output
    out = tmp / "outputs" / "pets" / "dog_2"          # beside the run's own figures
    assert "skipped cls-embedding" in res.output      # a projection of one point: sits out
    for name in ("rollout", "cls-heatmap", "token-attention", "norm-activations"):
        assert any(l.startswith("ok") and name in l for l in res.output.splitlines()), name
        assert any(p.suffix == ".png" for p in (out / name).iterdir()), name
    dump_path = next((tmp / "outputs" / "dumps").glob("*.h5"))
    with Dump.open(dump_path) as d:
        assert len(d) == 1 and d.file_names == ["dog_2.png"] and d.labels.tolist() == [1]
    with Image.open(out / "rollout" / "rollout.png") as img:
        assert img.size[0] > 200 and img.size[1] > 100   # one image's triple, not an empty chart
    res = run("analyze", ckpt, "--image", folder / "dog_2.png", "--data", f"folder:{folder}",
              "-p", "rollout")
    assert res.exit_code != 0 and "--image names the images itself" in res.output


def selected(tmp, out):
    manifest = json.loads((out / "manifest.json").read_text())
    with Dump.open(manifest["run"]["dump"]) as d:
        return d, d.file_names, d.labels.copy(), d.preds.copy()


def test_select_misclassified_correct_class_positions_and_names(setup):
    tmp, ckpt, folder = setup
    common = ["-p", "rollout", "--data", f"folder:{folder}", "--static"]
    res = run("analyze", ckpt, *common, "-o", tmp / "all")
    assert res.exit_code == 0, res.output
    d, names, labels, preds = selected(tmp, tmp / "all")
    d.close()
    assert len(names) == 12
    wrong = [n for n, l, p in zip(names, labels, preds) if l != p]
    right = [n for n, l, p in zip(names, labels, preds) if l == p]
    assert wrong and right    # a random 3-class model gets some right and some wrong

    res = run("analyze", ckpt, *common, "--select", "misclassified", "-o", tmp / "wrong")
    assert res.exit_code == 0, res.output
    assert f"Selected {len(wrong)} of 12 images (misclassified)" in res.output
    d, names, labels, preds = selected(tmp, tmp / "wrong")
    assert names == wrong and (labels != preds).all() and d.attrs["order"] == "selection"
    d.close()
    rollout = np.load(tmp / "wrong" / "rollout" / "results.npz")
    assert len(rollout["rollout"]) == len(wrong)

    res = run("analyze", ckpt, *common, "--select", "correct", "--select", "class:cat,dog",
              "-o", tmp / "right")
    assert res.exit_code == 0, res.output
    d, names, labels, preds = selected(tmp, tmp / "right")
    d.close()
    assert names == [n for n in right if not n.startswith("bird")]

    res = run("analyze", ckpt, *common, "--select", "5,0,3", "-o", tmp / "pos")
    assert res.exit_code == 0, res.output
    d, names, _, _ = selected(tmp, tmp / "pos")
    d.close()
    d, every, _, _ = selected(tmp, tmp / "all")
    d.close()
    assert names == [every[5], every[0], every[3]]       # in the order asked for

    res = run("analyze", ckpt, *common, "--select", "name:bird_*,cat_0.png", "-o", tmp / "nm")
    assert res.exit_code == 0, res.output
    d, names, _, _ = selected(tmp, tmp / "nm")
    d.close()
    assert sorted(names[:4]) == [f"bird_{i}.png" for i in range(4)] and names[4] == "cat_0.png"


def test_bad_selections_fail_before_any_work(setup):
    tmp, ckpt, folder = setup
    common = ["-p", "rollout", "--data", f"folder:{folder}", "-o", tmp / "x"]
    for select, message in (("class:horse", "no class 'horse'"), ("wrong-ish", "not a selection"),
                            ("99", "positions 0–11"), ("name:zebra*", "no analysed image")):
        res = run("analyze", ckpt, *common, "--select", select)
        assert res.exit_code != 0 and message in res.output, (select, res.output)
        assert not (tmp / "x").exists(), select          # no empty or half output folder
    assert not (tmp / "outputs" / "dumps").exists() or len(
        list((tmp / "outputs" / "dumps").glob("*.h5"))) <= 1   # at most the one capture


def test_bad_layer_or_token_options_leave_earlier_figures_alone(setup):
    """Ranges are checked against the model before the output folder is
    touched (from the checkpoint, or from the dump with --dump)."""
    tmp, ckpt, folder = setup
    out = tmp / "out"
    res = run("analyze", ckpt, "-p", "rollout", "-p", "token-attention", "--data",
              f"folder:{folder}", "--static", "-o", out)
    assert res.exit_code == 0, res.output
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}
    assert any(p.name == "rollout.png" for p in before)
    manifest = json.loads((out / "manifest.json").read_text())
    dump_path = manifest["run"]["dump"]
    for extra in (["--opt", "rollout.end_layer=7"], ["--opt", "token-attention.query=999"],
                  ["--opt", "rollout.start_layer=-5"],
                  ["--opt", "token-attention.layers=0,9"]):
        for source in (["--data", f"folder:{folder}"], ["--dump", dump_path]):
            res = run("analyze", ckpt, "-p", "rollout", "-p", "token-attention", *source,
                      *extra, "-o", out)
            assert res.exit_code != 0, (extra, res.output)
            assert "outside" in res.output or "not a patch" in res.output, res.output
            after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*")
                     if p.is_file()}
            assert after == before, (extra, source)


def test_a_selection_keeps_the_hook_points_derived_on_read(tmp_path):
    """A dump stores LayerNorm outputs as their inputs plus the norm's parameters; the
    selection copies those parameters, so norm-activations and gradcam read it like the source."""
    from vitscope.analyze.selection import select_dump
    from vitscope.testing import make_dump
    source = make_dump(tmp_path / "d.h5", n=6)
    picked = select_dump(source, np.array([4, 1]), "positions 4,1")
    with Dump.open(source) as full, Dump.open(picked) as sel:
        assert full.derived and sorted(sel.derived) == sorted(full.derived)
        for hook in full.derived:
            np.testing.assert_array_equal(sel[hook][:], full[hook][:][[4, 1]])
        # the model's read-out weights whole (logit-lens, logit-attribution read them), and
        # the maps made with the model per image, like every hook point
        assert full.readout and sorted(sel.readout) == sorted(full.readout)
        for key, value in full.readout.items():
            np.testing.assert_array_equal(sel.readout[key], value)
        assert sel.model_maps == full.model_maps
        for name in full.model_maps:
            np.testing.assert_array_equal(sel[f"map:{name}"][:], full[f"map:{name}"][:][[4, 1]])
