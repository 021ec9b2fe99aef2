"""A folder meant for analysis is analysed whole (no val carve-out), files
named by class are labelled with the model's classes, and file names reach the dump, the
captions and the hovers. Real tiny ViT, real image files, real CLI, real HDF5 and HTML."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vitscope.model.checkpoint import save_checkpoint
from vitscope.cli import main
from vitscope.data.folder import class_of_name
from vitscope.dump import Dump
from vitscope.model.vit import ModelConfig, ViT

CLASSES = ["cat", "dog", "tabby cat"]
FILES = ["cat_0000.png", "cat-1.png", "Dog (2).png", "dog7.png", "tabby_cat_3.png",
         "catalog.png", "IMG_0001.png"]
LABELS = [0, 0, 1, 1, 2, -1, -1]     # catalog is no cat; IMG_ names no class


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    model = ViT(ModelConfig(image_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2,
                            mlp_ratio=2.0, num_classes=len(CLASSES))).eval()
    return save_checkpoint(tmp_path / "pets" / "best.pt", model, classes=CLASSES,
                           train_config={"data": "shapes:val=8", "image_size": 16})


def write_images(folder, names, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(folder / name)
    return folder


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_class_names_in_file_names():
    got = [class_of_name(n.rsplit(".", 1)[0], CLASSES) for n in FILES]
    assert got == LABELS
    assert class_of_name("Tabby-Cat", CLASSES) == 2 and class_of_name("cat", CLASSES) == 0


def test_flat_folder_is_analysed_whole_with_labels_and_file_names(ckpt, in_tmp):
    folder = write_images(in_tmp / "imgs", FILES)
    out = in_tmp / "out"
    res = run("analyze", ckpt, "-p", "rollout", "--data", f"folder:{folder}", "-o", out)
    assert res.exit_code == 0, res.output
    dump_path = next((in_tmp / "outputs" / "dumps").glob("*.h5"))
    assert "-all-7-" in dump_path.name
    with Dump.open(dump_path) as d:
        assert len(d) == len(FILES) and d.attrs["split"] == "all"
        by_name = dict(zip(d.file_names, d.labels.tolist()))
        assert by_name == dict(zip(FILES, LABELS))
        assert d.classes == CLASSES and all(p.startswith(str(folder)) for p in d.paths)
        first = d.file_names[0]
    html = (out / "rollout" / "rollout.html").read_text()
    assert first in html                               # the slider's column titles
    index = (out / "index.html").read_text()
    assert "(all)" in index or ">all<" in index or " all" in index
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["run"]["split"] == "all" and manifest["run"]["images"] == len(FILES)


def test_class_folders_given_for_analysis_keep_every_image(ckpt, in_tmp):
    root = in_tmp / "tree"
    write_images(root / "cat", [f"a{i}.png" for i in range(6)])
    write_images(root / "dog", [f"b{i}.png" for i in range(4)], seed=1)
    res = run("dump", ckpt, "--data", f"folder:{root}", "--hooks", "cls", "-o", in_tmp / "a.h5",
              "-q")
    assert res.exit_code == 0, res.output
    with Dump.open(in_tmp / "a.h5") as d:
        assert len(d) == 10 and d.attrs["split"] == "all"     # no 10 % carve-out
        assert sorted(d.labels.tolist()) == [0] * 6 + [1] * 4
        assert sorted(d.file_names) == sorted([f"a{i}.png" for i in range(6)] +
                                              [f"b{i}.png" for i in range(4)])
    res = run("dump", ckpt, "--data", f"folder:{root}", "--split", "val", "--hooks", "cls",
              "-o", in_tmp / "v.h5", "-q")
    assert res.exit_code == 0, res.output
    with Dump.open(in_tmp / "v.h5") as d:
        assert len(d) == 1 and d.attrs["split"] == "val"      # asked for: the carve-out


def test_checkpoint_data_stays_on_val_and_shards_merge_file_names(ckpt, in_tmp):
    from vitscope.capture import default_split
    from vitscope.model.checkpoint import load_checkpoint
    ck = load_checkpoint(ckpt)
    assert default_split(ck) == "val" and default_split(ck, "shapes:val=8") == "val"
    folder = write_images(in_tmp / "imgs", FILES)
    for i in range(2):
        res = run("dump", ckpt, "--data", f"folder:{folder}", "--hooks", "cls", "--shard",
                  f"{i}/2", "-o", in_tmp / "s.h5", "-q")
        assert res.exit_code == 0, res.output
    shards = sorted(in_tmp.glob("s-shard*of2.h5"))
    res = run("dump", "merge", *shards, "-o", in_tmp / "m.h5")
    assert res.exit_code == 0, res.output
    with Dump.open(in_tmp / "m.h5") as d:
        assert sorted(d.file_names) == sorted(FILES)


def test_captions_name_the_files(ckpt, in_tmp):
    from vitscope.render import figures as F
    folder = write_images(in_tmp / "imgs", FILES)
    res = run("dump", ckpt, "--data", f"folder:{folder}", "--hooks", "cls", "-o",
              in_tmp / "d.h5", "-q")
    assert res.exit_code == 0, res.output
    with Dump.open(in_tmp / "d.h5") as d:
        caps = F.captions(d, len(d))
        for cap, name, label in zip(caps, d.file_names, d.labels):
            assert cap.startswith(f"{name} · ")
            assert cap.split(" · ", 1)[1].startswith("?" if label < 0 else CLASSES[label])
    assert F.short_name("a_very_long_file_name_indeed_0001.jpg", 15) == "a_very_…001.jpg"
