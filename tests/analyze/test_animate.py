"""The training-progress animation: a real tiny ViT trained with --analyze-every 1, its
rollout figures assembled into a GIF and an HTML slider (at the end of training and by
`vitscope animate`), frames in epoch order under their epoch and val accuracy."""
from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageSequence

from vitscope.analyze.animation import label_strip, strip_height
from vitscope.cli import main

MODEL = ["--set", "model.image_size=16", "--set", "model.embed_dim=32", "--set", "model.depth=1",
         "--set", "model.num_heads=2", "--set", "model.mlp_ratio=2", "--set", "model.stem=conv",
         "--set", "model.stem_channels=[16,32]"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 3-epoch run whose rollout was rendered after every epoch: (work folder, output)."""
    import os
    root = tmp_path_factory.mktemp("animate")
    cwd = os.getcwd()
    os.chdir(root)   # the epoch analyses go to ./outputs/<run>/epoch_NNN
    try:
        res = CliRunner().invoke(main, ["train", *MODEL, "--data", "shapes:train=300,val=64",
                                        "--epochs", "3", "--batch-size", "16", "--lr", "2e-3",
                                        "--device", "cpu", "--runs-dir", "runs", "--name", "an",
                                        "--analyze-every", "1", "--plugin", "rollout"])
    finally:
        os.chdir(cwd)
    assert res.exit_code == 0, res.output
    return root, res.output


def history(root):
    return {m["epoch"]: m["val_acc"] for m in
            map(json.loads, (root / "runs/an/metrics.jsonl").read_text().splitlines())}


def frames_of(gif):
    with Image.open(gif) as im:
        return [(f.convert("RGB"), f.info.get("duration")) for f in ImageSequence.Iterator(im)]


def test_training_ends_with_the_animation_of_each_plugin(trained):
    root, output = trained
    out = root / "outputs/an/animations"
    assert "animation of rollout over 3 epochs" in output and (out / "rollout.gif").is_file()
    record = json.loads((out / "rollout.json").read_text())
    acc = history(root)
    assert [f["epoch"] for f in record["frames"]] == [1, 2, 3]
    assert [f["val_acc"] for f in record["frames"]] == [acc[1], acc[2], acc[3]]
    assert record["frames"][1]["label"] == f"epoch 2 · val acc {100 * acc[2]:.1f}%"
    frames = frames_of(out / "rollout.gif")
    assert len(frames) == 3 and {f.size for f, _ in frames} == {tuple(record["size"])}
    assert [d for _, d in frames] == [700, 700, 2000]
    # each frame's strip shows its own label (not another frame's): drawn text, in order
    width = frames[0][0].width
    strips = [np.asarray(label_strip(f["label"], width), float) for f in record["frames"]]
    for i, (frame, _) in enumerate(frames):
        top = np.asarray(frame, float)[:strip_height(width)]
        err = [np.abs(top - s).mean() for s in strips]
        assert int(np.argmin(err)) == i and err[i] < 2, err
    # the body of each frame is that epoch's rollout.png, not another epoch's
    bodies = []
    for e in (1, 2, 3):
        with Image.open(root / f"outputs/an/epoch_{e:03d}/rollout/rollout.png") as im:
            flat = Image.new("RGB", im.size, "white")
            flat.paste(im.convert("RGBA"), mask=im.convert("RGBA").split()[3])
            bodies.append(np.asarray(flat.resize((width, frames[0][0].height - strip_height(width))), float))
    for i, (frame, _) in enumerate(frames):
        body = np.asarray(frame, float)[strip_height(width):]
        err = [np.abs(body - b).mean() for b in bodies]
        assert int(np.argmin(err)) == i, err
    page = (out / "rollout.html").read_text()
    assert page.count("data:image/png;base64,") == 4   # three frames in the script, one shown
    assert all(f["label"] in page for f in record["frames"]) and "type='range'" in page


def test_animate_a_chosen_figure_from_the_run_folder(trained, monkeypatch, tmp_path):
    root, _ = trained
    monkeypatch.chdir(root)
    res = CliRunner().invoke(main, ["animate", "runs/an", "--plugin", "rollout", "--figure",
                                    "rollout_mask", "-o", str(tmp_path / "anim"), "--width", "300",
                                    "--duration", "100"])
    assert res.exit_code == 0, res.output
    assert "3 frames" in res.output and "epochs 1, 2, 3" in res.output
    frames = frames_of(tmp_path / "anim/rollout_mask.gif")
    assert len(frames) == 3 and frames[0][0].width == 300 and [d for _, d in frames] == [100, 100, 2000]
    acc = history(root)
    assert f"epoch 3 · val acc {100 * acc[3]:.1f}%" in res.output


def test_missing_epochs_and_frames_of_another_size_and_no_history(trained, tmp_path):
    root, _ = trained
    copy = tmp_path / "outputs/an"
    shutil.copytree(root / "outputs/an", copy)
    (copy / "epoch_002/rollout/rollout.png").unlink()     # as if the plugin failed at epoch 2
    Image.new("RGB", (200, 90), "red").save(copy / "epoch_001/rollout/rollout.png")
    res = CliRunner().invoke(main, ["animate", str(copy), "-p", "rollout", "--run",
                                    str(tmp_path / "no-run"), "--width", "0"])
    assert res.exit_code == 0, res.output
    assert "epoch 2: no rollout.png from rollout" in res.output and "left out" in res.output
    assert "val acc unknown" in res.output and "pass --run" in res.output
    frames = frames_of(copy / "animations/rollout.gif")
    assert len(frames) == 2 and frames[0][0].size == frames[1][0].size   # one canvas for all
    with Image.open(copy / "epoch_003/rollout/rollout.png") as im:
        assert frames[0][0].width == im.width   # the largest figure, as rendered (--width 0)


def test_errors_name_what_is_missing(trained, tmp_path):
    root, _ = trained
    run = CliRunner().invoke
    res = run(main, ["animate", str(tmp_path), "--plugin", "rollout"])
    assert res.exit_code == 1 and "No epoch_NNN folders" in res.output
    assert "--analyze-every N --plugin NAME" in res.output
    # a run trained without analyses (the quickstart): the command that makes one to animate
    (tmp_path / "runs" / "quick").mkdir(parents=True)
    (tmp_path / "runs" / "quick" / "metrics.jsonl").write_text("")
    res = run(main, ["animate", str(tmp_path / "runs" / "quick"), "--plugin", "rollout"])
    assert res.exit_code == 1 and "trained without --analyze-every" in res.output, res.output
    assert "--name quick --overwrite --analyze-every 1 --plugin rollout" in res.output
    assert "`vitscope animate outputs/quick --plugin rollout`" in res.output
    res = run(main, ["animate", str(tmp_path / "nowhere"), "--plugin", "rollout"])
    assert res.exit_code == 1 and "No folder" in res.output
    res = run(main, ["animate", str(root / "outputs/an"), "--plugin", "cls-heatmap"])
    assert res.exit_code == 1 and "has no PNG figures" in res.output
    assert "the plugins rendered there: rollout" in res.output
    res = run(main, ["animate", str(root / "outputs/an"), "--plugin", "rollout", "--figure", "nope"])
    assert res.exit_code == 1 and re.search(r"no figure 'nope'.*rollout_mask\.png", res.output)
    res = run(main, ["animate", str(root / "outputs/an"), "--plugin", "rollout", "--figure", "rollout*"])
    assert res.exit_code == 1 and "matches 3 figures" in res.output
    assert "Traceback" not in res.output


def test_the_run_page_shows_the_animations(trained, monkeypatch):
    root, _ = trained
    monkeypatch.chdir(root)
    res = CliRunner().invoke(main, ["analyze", "runs/an/best.pt", "-p", "rollout", "-n", "8",
                                    "--static", "-o", "outputs/an"])
    assert res.exit_code == 0, res.output
    page = (root / "outputs/an/index.html").read_text()
    assert "During training" in page and "src='./animations/rollout.gif'" in page
    assert "href='./animations/rollout.html'" in page and "epoch 3" in page
