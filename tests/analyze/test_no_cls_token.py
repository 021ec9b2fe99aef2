"""A model without a CLS token (a mean-pooled timm ViT): the plugins built on the CLS token
cannot apply, and `analyze` finds that out before it captures anything. `--all` lists them as
skipped, says once what still applies, renders the rest and exits 0; one of them asked for by
name is one sentence naming the alternative, with nothing captured or written."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vitscope.cli import main

pytest.importorskip("timm")
CLS_PLUGINS = ("attn-grad", "cls-embedding", "cls-heatmap", "grad-rollout", "rollout",
               "token-attention")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def no_cls(tmp_path, monkeypatch):
    from vitscope.model.adapters import build
    from vitscope.model.checkpoint import save_checkpoint
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = build("timm", "vit_tiny_patch16_224", img_size=32, depth=2, class_token=False,
                  global_pool="avg", num_classes=3).eval()
    assert model.token_layout.cls_index is None
    ckpt = save_checkpoint(tmp_path / "gap.pt", model, model_config=model.cfg, arch="timm",
                           classes=["cat", "dog", "bird"],
                           train_config={"source": "timm:vit_tiny_patch16_224",
                                         "random_weights": True, "image_size": 32})
    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    for name in ("cat_0", "dog_0", "bird_0", "cat_1"):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
            tmp_path / "imgs" / f"{name}.png")
    return ckpt, f"folder:{tmp_path / 'imgs'}"


def test_what_cannot_apply_is_skipped_or_refused_before_capture(no_cls, tmp_path):
    ckpt, data = no_cls
    res = run("analyze", "--all", ckpt, "--data", data, "--static", "-o", tmp_path / "out",
              "--opt", "cls-embedding.umap=false")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    for name in CLS_PLUGINS:
        assert any(l.startswith("skipped") and f" {name} " in l and "reads the CLS token" in l
                   for l in lines), name
    assert sum("What still applies: token-attention with --opt token-attention.query=top" in l
               for l in lines) == 1
    capture = next(i for i, l in enumerate(lines) if l.startswith("Captured dump"))
    assert all(i < capture for i, l in enumerate(lines)
               if l.startswith("skipped") and "reads the CLS token" in l)
    assert "FAILED" not in res.output
    for name in ("gradcam", "norm-activations"):
        assert any(l.startswith("ok") and name in l for l in lines), name

    # one asked for by name: one sentence naming the alternative, before any work
    res = run("analyze", "-p", "rollout", ckpt, "--data", data, "-o", tmp_path / "refused")
    assert res.exit_code == 1 and res.output.count("\n") == 1, res.output
    assert res.output.startswith("Error: rollout reads the CLS token, and this model has none")
    assert "--opt token-attention.query=top" in res.output
    assert not (tmp_path / "refused").exists()
    dumps = sorted((tmp_path / "outputs" / "dumps").glob("*.h5"))
    assert len(dumps) == 1                                   # the --all run's, nothing new
    res = run("analyze", "-p", "token-attention", "--opt", "token-attention.query=top", ckpt,
              "--data", data, "--static", "-o", tmp_path / "top")
    assert res.exit_code == 0, res.output
    assert any((tmp_path / "top" / "token-attention@query=top").glob("*.png"))
