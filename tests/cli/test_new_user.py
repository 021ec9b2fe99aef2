"""What a new user reads — `vitscope info` names the training data and
recipe with honest numbers, `--images`/`--limit` mean the same on dump and analyze, and
analyze says which plugin is rendering. Real checkpoints, real CLI."""
from __future__ import annotations

from click.testing import CliRunner

from vitscope.cli import main
from vitscope.dump import Dump


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_info_names_data_and_recipe_and_small_numbers(tmp_path, tiny_vit):
    from vitscope.model.checkpoint import save_checkpoint
    ckpt = save_checkpoint(tmp_path / "r" / "best.pt", tiny_vit, classes=list("abcde"),
                           train_config={"data": "shapes:train=400,val=100", "name": "r",
                                         "preset": "vit-tiny", "epochs": 6, "lr": 0.002,
                                         "weight_decay": 0.05, "n_train": 400, "n_val": 100,
                                         "seed": 0, "cpu_threads": 2},
                           metrics={"epoch": 6, "lr": 1e-05, "val_acc": 0.875})
    res = run("info", ckpt)
    assert res.exit_code == 0, res.output
    assert "shapes:train=400,val=100  (400 train / 100 val)" in res.output
    assert "epochs 6" in res.output and "lr 0.002" in res.output and "wd 0.05" in res.output
    assert "seed 0, CPU threads 2" in res.output      # what a CPU run's result depends on
    assert "lr              1e-05" in res.output and "0.0000" not in res.output
    assert "val_acc         0.8750" in res.output


def test_images_and_limit_are_one_option_and_plugins_announce_themselves(shapes_ckpt, tmp_path,
                                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = run("dump", shapes_ckpt, "--images", 5, "--hooks", "cls", "-o", tmp_path / "a.h5",
              "-q")
    assert res.exit_code == 0, res.output
    with Dump.open(tmp_path / "a.h5") as d:
        assert len(d) == 5
    res = run("analyze", shapes_ckpt, "-p", "rollout", "--limit", 6, "--static", "-o",
              tmp_path / "out")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    start = next(i for i, l in enumerate(lines) if "rollout" in l and "rendering (6 images)" in l)
    assert lines[start + 1].startswith("ok") and "rollout" in lines[start + 1]


def test_index_lists_builtins_first_with_descriptions_words_and_accuracy(tiny_ckpt, tmp_path,
                                                                        monkeypatch):
    import re
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    res = run("analyze", tiny_ckpt, "--data", "shapes:val=8", "-p", "attention-entropy",
              "-p", "token-attention", "-p", "rollout", "--static", "-o", out)
    assert res.exit_code == 0, res.output
    index = (out / "index.html").read_text()
    order = re.findall(r"<section id='([\w-]+)'", index)
    assert order == ["token-attention", "rollout", "attention-entropy"], order
    described = re.findall(r"</h2><p class='tag'>([^<]+)</p>", index)
    assert len(described) == 3, described                   # each plugin says what it does
    assert "max entropy (nats)" in index and "max_entropy_nats" not in index
    assert "query patches" not in index                     # CLS query: no row of dashes
    assert "50.0% val accuracy when trained (epoch 3)" in index


def test_index_flags_random_weights_shortens_long_class_lists_and_links_image_runs(
        tmp_path, monkeypatch):
    """A model imported without weights is flagged on the page, not only in the terminal; a
    1,000-class model's run table names the first classes and the count; the sub-folder an
    `--image` analysis writes is linked from the run's page; an embedding of two images a
    class says it is anecdotal."""
    import json

    import numpy as np
    import torch
    from PIL import Image

    from vitscope.model.checkpoint import save_checkpoint
    from vitscope.model.vit import ModelConfig, ViT
    monkeypatch.chdir(tmp_path)
    classes = [f"class{i:03d}" for i in range(1000)]
    torch.manual_seed(0)
    model = ViT(ModelConfig(image_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2,
                            mlp_ratio=2.0, num_classes=1000)).eval()
    ckpt = save_checkpoint(tmp_path / "vit_r.pt", model, classes=classes,
                           train_config={"source": "timm:tiny", "random_weights": True,
                                         "image_size": 16})
    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    for c in classes[:3]:
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
                tmp_path / "imgs" / f"{c}_{i}.png")
    res = run("analyze", ckpt, "-p", "rollout", "-p", "cls-embedding", "--static", "--data",
              f"folder:{tmp_path / 'imgs'}", "--opt", "cls-embedding.umap=false")
    assert res.exit_code == 0, res.output
    index = (tmp_path / "outputs" / "vit_r" / "index.html").read_text()
    assert "RANDOM weights" in index and "untrained model" in index
    assert "1000: class000, class001" in index and "… and 980 more" in index
    assert "class999" not in index
    folder = tmp_path / "outputs" / "vit_r" / "cls-embedding@umap=false"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["caution"].startswith("only 2 images a class"), summary

    res = run("analyze", ckpt, "--image", tmp_path / "imgs" / "class001_0.png", "-p", "rollout",
              "--static")
    assert res.exit_code == 0, res.output
    index = (tmp_path / "outputs" / "vit_r" / "index.html").read_text()
    assert "href='./class001_0/index.html'" in index and "1 image<" in index
