"""`vitscope compare` on a real tiny ViT and CNN trained here: numbers checked against
predictions computed independently, real PNG/HTML/JSON files, and the refusals."""
from __future__ import annotations

import html
import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vitscope.model.checkpoint import load_checkpoint, load_model, save_checkpoint
from vitscope.cli import main
from vitscope.evaluate.compare import compare_predictions
from vitscope.data import load_dataset, normalization
from vitscope.evaluate.classify import predict_logits

DATA = "shapes:train=400,val=120"
VIT = ["--set", "model.image_size=16", "--set", "model.embed_dim=32", "--set", "model.depth=1",
       "--set", "model.num_heads=2", "--set", "model.mlp_ratio=2", "--set", "model.stem=conv",
       "--set", "model.stem_channels=[16,32]", "--lr", "1e-3"]
CNN = ["--model", "cnn", "--set", "model.channels=[8,16]", "--set", "model.image_size=16",
       "--lr", "2e-3"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """runs/vit/best.pt and runs/cnn/best.pt, trained for 2 epochs on the same shapes data."""
    root = tmp_path_factory.mktemp("compare")
    for name, args in (("vit", VIT), ("cnn", CNN)):
        res = CliRunner().invoke(main, ["train", *args, "--data", DATA, "--epochs", "2",
                                        "--batch-size", "16", "--device", "cpu", "--quiet",
                                        "--runs-dir", str(root / "runs"), "--name", name])
        assert res.exit_code == 0, res.output
    return root


def compare(*args):
    return CliRunner().invoke(main, ["compare", *map(str, args)])


def independent_predictions(ckpt, n=None):
    """What each model predicts on the val images, computed without vitscope.evaluate.compare."""
    model, ck = load_model(ckpt)
    ds = load_dataset(DATA, "val", 16)
    if n is not None:
        from vitscope.train.runner import seeded_subset
        ds = seeded_subset(ds, n, 0)
    logits = predict_logits(model, ds.images, *normalization(ck))
    return ds.labels, logits.argmax(1).numpy()


def test_numbers_match_an_independent_computation_and_every_file_is_real(runs):
    out = runs / "cmp"
    vit, cnn = runs / "runs/vit/best.pt", runs / "runs/cnn/best.pt"
    res = compare(vit, cnn, "-o", out)
    assert res.exit_code == 0, res.output + res.stderr
    r = json.loads((out / "compare.json").read_text())
    labels, pv = independent_predictions(vit)
    _, pc = independent_predictions(cnn)
    assert r["n"] == 120 and r["labels"] == labels.tolist()
    assert r["predictions"] == {"vit": pv.tolist(), "cnn": pc.tolist()}
    cv, cc = (pv == labels).astype(float), (pc == labels).astype(float)
    acc = {n: r["models"][n]["accuracy"] for n in ("vit", "cnn")}
    assert acc["vit"]["mean"] == pytest.approx(cv.mean()) and acc["cnn"]["mean"] == pytest.approx(cc.mean())
    # the recorded val_acc of each checkpoint is what training measured on these images
    for m in r["model_info"]:
        assert m["recorded_val_acc"] == pytest.approx(r["models"][m["name"]]["accuracy"]["mean"])
    d = r["differences"][0]
    assert (d["a"], d["b"]) == ("vit", "cnn")
    assert d["difference"]["mean"] == pytest.approx(cv.mean() - cc.mean())
    assert d["only_a_correct"] == int(((cv == 1) & (cc == 0)).sum())
    assert d["only_b_correct"] == int(((cv == 0) & (cc == 1)).sum())
    lo, hi = d["difference"]["ci95"]
    # a paired percentile bootstrap: about ±1.96 standard errors of the per-image difference
    se = (cv - cc).std() / np.sqrt(len(cv))
    assert lo <= d["difference"]["mean"] <= hi and 2.5 * se < hi - lo < 5.5 * se
    assert d["ci_excludes_zero"] == (lo > 0 or hi < 0)
    for i, c in enumerate(r["classes"]):
        sel = labels == i
        assert r["class_counts"][c] == sel.sum()
        assert r["models"]["cnn"]["per_class"][c]["mean"] == pytest.approx(cc[sel].mean())
        assert d["per_class"][c]["mean"] == pytest.approx(cv[sel].mean() - cc[sel].mean())
    # training curves from both runs' metrics.jsonl
    for m in r["model_info"]:
        lines = [json.loads(x) for x in (runs / "runs" / m["name"] / "metrics.jsonl").read_text().splitlines()]
        assert [h["val_acc"] for h in m["history"]] == [x["val_acc"] for x in lines]
    for png in ("compare_accuracy.png", "compare_curves.png"):
        with Image.open(out / png) as im:
            im.verify()
        with Image.open(out / png) as im:
            assert im.format == "PNG" and im.width > 400 and im.height > 300
    page = (out / "compare.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "<script" not in page
    assert f"{100 * acc['vit']['mean']:.1f}%" in page and f"{100 * acc['cnn']['mean']:.1f}%" in page
    assert "vit − cnn" in page and "disk" in page
    assert html.escape(d["verdict"]) in page
    # the terminal table says the same
    assert f"{100 * acc['vit']['mean']:.1f}% [" in res.output and "per-class accuracy" in res.output
    assert ("excludes 0" in res.output) == d["ci_excludes_zero"]


def test_a_sample_of_images_and_a_checkpoint_without_its_run_folder(runs, tmp_path):
    alone = tmp_path / "elsewhere" / "cnn-copy.pt"
    alone.parent.mkdir()
    shutil.copy(runs / "runs/cnn/best.pt", alone)
    res = compare(runs / "runs/vit/best.pt", alone, "-n", 50, "-o", tmp_path / "out")
    assert res.exit_code == 0, res.output + res.stderr
    r = json.loads((tmp_path / "out/compare.json").read_text())
    labels, pv = independent_predictions(runs / "runs/vit/best.pt", n=50)
    assert r["n"] == 50 and r["labels"] == labels.tolist() and r["predictions"]["vit"] == pv.tolist()
    names = [m["name"] for m in r["model_info"]]
    assert names == ["vit", "cnn-copy"] and r["model_info"][1]["history"] is None
    assert "no training curves for cnn-copy" in res.output
    # the curves of the run that has them, and a word about the one that has none
    assert r["model_info"][0]["history"] and (tmp_path / "out/compare_curves.png").is_file()
    assert "No training history for cnn-copy" in (tmp_path / "out/compare.html").read_text()
    # neither has a history: no curves, and the earlier comparison's curves are gone
    shutil.copy(alone, alone.with_name("vit-copy.pt"))
    res = compare(alone.with_name("vit-copy.pt"), alone, "-o", tmp_path / "out")
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "out/compare_curves.png").exists()
    assert json.loads((tmp_path / "out/compare.json").read_text())["files"][-1].endswith("compare.html")


def test_refusals_are_one_sentence_and_write_nothing(runs, tmp_path, tiny_ckpt):
    vit, cnn = runs / "runs/vit/best.pt", runs / "runs/cnn/best.pt"
    out = tmp_path / "never"
    res = compare(vit, "-o", out)
    assert res.exit_code == 1 and "at least two checkpoints" in res.stderr
    res = compare(vit, tiny_ckpt, "-o", out)   # 10 shapes classes vs a, b, c, d, e
    assert res.exit_code == 1 and "has 10 classes" in res.stderr and "has 5" in res.stderr
    assert "not comparable" in res.stderr and "Traceback" not in res.stderr
    # the same model, recorded as trained on other data: its own val images differ
    ck = load_checkpoint(cnn)
    other = tmp_path / "other" / "best.pt"
    model, _ = load_model(cnn)
    save_checkpoint(other, model, model_config=ck.model_config, arch="cnn", classes=ck.classes,
                    train_config={**ck.train_config, "data": "shapes:train=400,val=80"},
                    metrics=ck.metrics)
    res = compare(vit, other, "-o", out)
    assert res.exit_code == 1 and "their own val images differ" in res.stderr
    assert "pass --data SPEC" in res.stderr
    res = compare(vit, cnn, "--val-split", "0.2", "-o", out)
    assert res.exit_code == 1 and "give --data too" in res.stderr
    assert not out.exists()
    # with --data both are scored on one dataset
    res = compare(vit, other, "--data", "shapes:train=400,val=80", "-o", out)
    assert res.exit_code == 0, res.stderr
    assert json.loads((out / "compare.json").read_text())["n"] == 80


def test_names_in_the_page_are_escaped(runs, tmp_path):
    hostile = tmp_path / "<img src=x onerror=alert(1)>" / "best.pt"
    hostile.parent.mkdir()
    shutil.copy(runs / "runs/vit/best.pt", hostile)
    res = compare(hostile, runs / "runs/cnn/best.pt", "-o", tmp_path / "out")
    assert res.exit_code == 0, res.stderr
    page = (tmp_path / "out/compare.html").read_text()
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page


def test_the_verdict_follows_the_interval():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 400)
    good = np.where(rng.random(400) < 0.9, labels, (labels + 1) % 3)
    poor = np.where(rng.random(400) < 0.5, labels, (labels + 1) % 3)
    r = compare_predictions(["good", "poor"], labels, {"good": good, "poor": poor},
                            ["a", "b", "c"])
    d = r["differences"][0]
    assert d["ci_excludes_zero"] and d["difference"]["ci95"][0] > 0
    assert d["verdict"].startswith("good is more accurate than poor")
    r = compare_predictions(["x", "y"], labels, {"x": good, "y": good.copy()}, ["a", "b", "c"])
    d = r["differences"][0]
    assert not d["ci_excludes_zero"] and d["verdict"].startswith("no difference shown")
    three = compare_predictions(["x", "y", "z"], labels, {"x": good, "y": poor, "z": good},
                                ["a", "b", "c"])
    assert [(d["a"], d["b"]) for d in three["differences"]] == [("x", "y"), ("x", "z"), ("y", "z")]
