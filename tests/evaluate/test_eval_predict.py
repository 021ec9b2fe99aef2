"""`vitscope eval` / `vitscope predict` through the real CLI, and vitscope.evaluate.classify."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

from vitscope.model.checkpoint import save_checkpoint
from vitscope.cli import main
from vitscope.data import load_dataset, to_model_input
from vitscope.data.shapes import CLASSES
from vitscope.errors import DataError
from vitscope.evaluate.classify import evaluate, plot_confusion
from vitscope.model.vit import ModelConfig, ViT

DATA = "shapes:train=40,val=30"
NORM = {"mean": [0.4, 0.45, 0.5], "std": [0.25, 0.3, 0.35]}


@pytest.fixture
def shapes_vit():
    torch.manual_seed(0)
    cfg = ModelConfig(image_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4,
                      mlp_ratio=2.0, num_classes=10)
    return ViT(cfg).eval()


@pytest.fixture
def eval_ckpt(tmp_path, shapes_vit):
    return save_checkpoint(tmp_path / "run" / "best.pt", shapes_vit, classes=CLASSES,
                           train_config={"data": DATA, "image_size": 16, "normalize": NORM})


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def test_evaluate_matches_a_direct_computation(shapes_vit):
    ds = load_dataset(DATA, "val", 16)
    mean, std = NORM["mean"], NORM["std"]
    result = evaluate(shapes_vit, ds, mean, std, batch_size=7)
    with torch.no_grad():
        x = to_model_input(torch.from_numpy(ds.images), mean, std)
        logits = shapes_vit(x)
        flipped = (logits + shapes_vit(x.flip(-1))) / 2
    labels = torch.from_numpy(ds.labels)
    assert result["n"] == 30 and result["classes"] == CLASSES
    assert result["accuracy"] == pytest.approx((logits.argmax(1) == labels).float().mean().item())
    assert result["loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    confusion = np.asarray(result["confusion"])
    assert confusion.sum() == 30
    assert confusion.sum(1).tolist() == np.bincount(ds.labels, minlength=10).tolist()
    assert np.trace(confusion) == round(result["accuracy"] * 30)
    tta = evaluate(shapes_vit, ds, mean, std, tta=True, limit=12)
    assert tta["n"] == 12 and tta["tta"] is True
    assert tta["loss"] == pytest.approx(F.cross_entropy(flipped[:12], labels[:12]).item(), rel=1e-5)


def test_evaluate_maps_dataset_classes_onto_the_model_by_name(shapes_vit):
    ds = load_dataset(DATA, "val", 16)
    base = evaluate(shapes_vit, ds, [0.5] * 3, [0.5] * 3)
    # The same images, with the class list stored in reverse order and labels to match.
    ds.classes = CLASSES[::-1]
    ds.labels = 9 - ds.labels
    assert evaluate(shapes_vit, ds, [0.5] * 3, [0.5] * 3, classes=CLASSES)["accuracy"] == base["accuracy"]
    ds.classes = ["zebra"] + ds.classes[1:]
    with pytest.raises(DataError, match="zebra"):
        evaluate(shapes_vit, ds, [0.5] * 3, [0.5] * 3, classes=CLASSES)


def test_eval_cli_writes_metrics_and_confusion_png(eval_ckpt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run("eval", eval_ckpt, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert f"{DATA} (val, 30 images)" in result.output and "accuracy" in result.output
    out = tmp_path / "outputs" / "run" / "eval"  # <run>: the folder of run/best.pt
    metrics = json.loads((out / "metrics_val.json").read_text())
    assert metrics["n"] == 30 and set(metrics["per_class_accuracy"]) == set(CLASSES)
    assert (out / "confusion_val.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in eval_ckpt.parent.iterdir()] == ["best.pt"]  # the run folder untouched


def test_eval_default_output_folder_is_named_after_the_checkpoint(eval_ckpt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    named = tmp_path / "models" / "vit3.pt"
    named.parent.mkdir()
    named.write_bytes(eval_ckpt.read_bytes())
    result = run("eval", named, "--device", "cpu", "--limit", "5")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "outputs/vit3/eval/metrics_val.json").is_file()
    assert f"wrote {Path('outputs/vit3/eval/metrics_val.json')}" in result.output
    assert "outputs/<run>/eval" in run("eval", "--help").output


def test_eval_cli_options(eval_ckpt, tmp_path):
    result = run("eval", eval_ckpt, "--tta", "--limit", "10", "--split", "train", "--json",
                 "-o", tmp_path / "elsewhere", "--batch-size", "4")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["n"] == 10 and metrics["tta"] and metrics["split"] == "train"
    assert (tmp_path / "elsewhere" / "confusion_train.png").is_file()


def test_plot_confusion_handles_many_classes(tmp_path):
    C = 100
    result = {"confusion": np.eye(C, dtype=int).tolist(), "classes": [f"c{i}" for i in range(C)],
              "accuracy": 1.0, "n": C}
    assert plot_confusion(result, tmp_path / "c.png").stat().st_size > 1000


def test_eval_cli_errors_are_one_line(eval_ckpt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (20, 20), (9, 9, 9)).save(flat / "a.png")
    result = run("eval", eval_ckpt, "--data", f"folder:{flat}")
    assert result.exit_code == 1 and "has no labels" in result.output
    for c in ("disk", "zebra"):
        (tmp_path / "tree" / c).mkdir(parents=True)
        Image.new("RGB", (20, 20), (9, 9, 9)).save(tmp_path / "tree" / c / "a.png")
    result = run("eval", eval_ckpt, "--data", f"folder:{tmp_path / 'tree'}", "--val-split", "0.5")
    assert result.exit_code == 1 and "zebra" in result.output
    result = run("eval", eval_ckpt, "--data", "shapez")
    assert result.exit_code == 1 and "Did you mean 'shapes'" in result.output
    assert all(line.startswith("Error:") for line in result.output.strip().splitlines())
    bare = save_checkpoint(tmp_path / "bare.pt", ViT(ModelConfig(image_size=16, num_classes=10,
                                                                  embed_dim=32, depth=1, num_heads=2)))
    result = run("eval", bare)
    assert result.exit_code == 1 and "--data SPEC" in result.output
    assert not (tmp_path / "outputs").exists()   # failed evaluations leave no empty folders


def test_eval_refuses_an_output_folder_it_cannot_write_before_evaluating(eval_ckpt, tmp_path,
                                                                         monkeypatch):
    import vitscope.evaluate.classify

    def no_evaluation(*args, **kwargs):
        raise AssertionError("evaluated although the results could not be written")

    monkeypatch.setattr(vitscope.evaluate.classify, "evaluate", no_evaluation)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    for out in ("/proc/vitscope-eval", a_file / "sub"):
        result = run("eval", eval_ckpt, "--device", "cpu", "-o", out)
        assert result.exit_code == 1, result.output
        assert result.output.startswith(f"Error: Cannot write to the folder '{out}' (")
        assert "choose a writable folder with -o" in result.output
        assert len(result.output.strip().splitlines()) == 1


def test_eval_of_a_run_scores_exactly_its_val_subset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = run("train", "--data", "shapes:train=64", "--set", "val_split=0.5", "--set", "val_subset=13",
              "--device", "cpu", "--batch-size", "16", "--epochs", "1", "--name", "sub", "--quiet",
              "--set", "model.image_size=16", "--set", "model.embed_dim=32", "--set", "model.depth=1",
              "--set", "model.num_heads=2", "--set", "crop_padding=1")
    assert res.exit_code == 0, res.output
    best = tmp_path / "runs/sub/best.pt"
    result = run("eval", best, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    from vitscope.model.checkpoint import load_checkpoint
    trained = load_checkpoint(best).metrics
    assert metrics["n"] == 13 and metrics["val_subset"] == 13
    assert metrics["accuracy"] == pytest.approx(trained["val_acc"], abs=1e-9)
    assert metrics["loss"] == pytest.approx(trained["val_loss"], rel=1e-5)
    text = run("eval", best, "--device", "cpu").output
    assert "(val, 13 images, val_subset as in training)" in text
    # Other data (or another carving) are not the run's validation images: no subset.
    assert json.loads(run("eval", best, "--device", "cpu", "--json", "--val-split", "0.25")
                      .stdout)["n"] == 16


def test_predict_cli_any_size_format_and_a_bad_file(eval_ckpt, tmp_path):
    rng = np.random.default_rng(0)
    good = []
    for i, (ext, size) in enumerate([("jpg", (53, 17)), ("png", (16, 16)), ("webp", (300, 200))]):
        path = tmp_path / f"img{i}.{ext}"
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        good.append(path)
    gray = tmp_path / "gray.bmp"
    Image.new("L", (40, 30), 128).save(gray)
    good.append(gray)
    text = tmp_path / "notes.txt"
    text.write_text("this is not an image")
    missing = tmp_path / "missing.jpg"

    result = run("predict", eval_ckpt, good[0], text, *good[1:], missing, "--top-k", "3")
    assert result.exit_code == 1
    assert f"Error: cannot predict '{text}'" in result.stderr
    assert f"Error: cannot predict '{missing}': no such file" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 2
    blocks = result.stdout.strip().split("\n")
    assert [b for b in blocks if not b.startswith(" ")] == [str(p) for p in good]
    assert len(blocks) == len(good) * 4  # path + 3 classes each

    result = run("predict", eval_ckpt, *good, "--json", "--tta", "-k", "50")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["path"] for r in rows] == [str(p) for p in good]
    for row in rows:
        probs = [p["probability"] for p in row["predictions"]]
        assert len(probs) == 10 and sum(probs) == pytest.approx(1.0, abs=1e-4)
        assert probs == sorted(probs, reverse=True)
        assert {p["class"] for p in row["predictions"]} == set(CLASSES)


def test_predict_agrees_with_eval_on_the_same_pixels(eval_ckpt, shapes_vit, tmp_path):
    ds = load_dataset(DATA, "val", 16)
    paths = []
    for i in range(4):  # PNG is lossless and already 16x16: predict sees exactly these pixels
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(ds.images[i]).save(paths[-1])
    rows = json.loads(run("predict", eval_ckpt, *paths, "--json", "-k", "1").stdout)
    with torch.no_grad():
        expected = shapes_vit(to_model_input(torch.from_numpy(ds.images[:4]), NORM["mean"],
                                             NORM["std"])).softmax(1)
    for row, probs in zip(rows, expected):
        assert row["predictions"][0]["index"] == int(probs.argmax())
        assert row["predictions"][0]["probability"] == pytest.approx(float(probs.max()), abs=1e-5)


def test_eval_uses_the_flip_tta_training_evaluated_with(tmp_path, shapes_vit, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ckpt = save_checkpoint(tmp_path / "t" / "best.pt", shapes_vit, classes=CLASSES,
                           train_config={"data": DATA, "image_size": 16, "normalize": NORM,
                                         "eval_flip_tta": True})
    as_trained = json.loads(run("eval", ckpt, "--json", "--limit", 8).output)
    assert as_trained["tta"] is True
    plain = json.loads(run("eval", ckpt, "--json", "--limit", 8, "--no-tta").output)
    assert plain["tta"] is False and plain["loss"] != as_trained["loss"]


def test_eval_names_the_checkpoints_training_data_when_it_is_gone(tmp_path, shapes_vit):
    ckpt = save_checkpoint(tmp_path / "g.pt", shapes_vit, classes=CLASSES,
                           train_config={"data": f"folder:{tmp_path / 'gone'}", "image_size": 16,
                                         "normalize": NORM})
    res = CliRunner().invoke(main, ["eval", str(ckpt), "-o", str(tmp_path / "o")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert f"'{ckpt}' was trained on --data folder:{tmp_path / 'gone'}, which cannot be loaded" \
        in res.output
