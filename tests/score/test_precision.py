"""`vitscope score --dtype`: a layer-scale ViT with registers (DINOv2-style) has gradients too
small for float16. Stored in float16 (what score always did), most of them flush to zero and
gradcam no longer follows the model; in float32 (the default now) the maps equal Grad-CAM
computed by autograd on the same model, and the report says what storage lost."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vitscope.cli import main
from vitscope.dump import Dump
from vitscope.score.stats import spearman

pytest.importorskip("timm")
CLASSES = ["cat", "dog", "bird"]


@pytest.fixture
def layer_scale(tmp_path, monkeypatch):
    from vitscope.model.adapters import build
    from vitscope.model.checkpoint import save_checkpoint
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    # layer scale: every block's branch, and so the gradient reaching norm1.out, is scaled
    # by it. At 1e-7 the median gradient there is about 1e-8, below float16's smallest
    # subnormal (6e-8), as the issue measured on a DINOv2-style model with registers
    model = build("timm", "vit_tiny_patch16_224", img_size=32, depth=2, num_classes=3,
                  init_values=1e-7, reg_tokens=2, no_embed_class=True).eval()
    assert [k for k, _ in model.token_layout.prefix] == ["cls", "register"]
    ckpt = save_checkpoint(tmp_path / "ls.pt", model, model_config=model.cfg, arch="timm",
                           classes=CLASSES,
                           train_config={"source": "timm:vit_tiny_patch16_224",
                                         "random_weights": True, "image_size": 32})
    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
            tmp_path / "imgs" / f"{CLASSES[i % 3]}_{i}.png")
    return ckpt, model, f"folder:{tmp_path / 'imgs'}"


def autograd_gradcam(model, x, target, layer):
    """Grad-CAM of `target` on blocks[layer].norm1's output in float32, by autograd."""
    from vitscope.model.hooks import attach
    seen = {}

    def keep(t, name):
        seen["a"] = t.view_as(t)
        return seen["a"]
    with attach(model, {f"blocks.{layer}.norm1.out": keep}):
        logits = model(x)
    g, = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), seen["a"])
    p = model.token_layout.num_prefix_tokens
    a, g = seen["a"].detach()[:, p:], g[:, p:]
    return torch.relu((a * g.mean(1, keepdim=True)).sum(-1)).numpy()


def scored(tmp_path, ckpt, data, *dtype):
    res = CliRunner().invoke(main, ["score", str(ckpt), "-p", "gradcam", "-n", "6", "--draws",
                                    "1", "--data", data, "--split", "all", "--device", "cpu",
                                    "-o", str(tmp_path / f"out{len(dtype)}"), *dtype])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / f"out{len(dtype)}" / "score" / "score.json").read_text())
    with Dump.open(report["dump"]) as dump:
        a = dump["blocks.1.norm1.out"][:].astype(np.float32)
        g = dump["grad:blocks.1.norm1.out"][:].astype(np.float32)
        p = dump.layout.num_prefix_tokens
        maps = np.maximum((a[:, p:] * g[:, p:].mean(1, keepdims=True)).sum(-1), 0)
        pixels = torch.from_numpy(np.asarray(dump.images[:]))
        target = torch.as_tensor(dump.target)
    return res.output, report, maps, pixels, target


def test_float32_keeps_the_small_gradients_float16_flushes(layer_scale, tmp_path):
    ckpt, model, data = layer_scale
    output, report, maps, pixels, target = scored(tmp_path, ckpt, data)   # the default
    from vitscope.data import normalization, to_model_input
    from vitscope.model.checkpoint import load_checkpoint
    x = to_model_input(pixels, *normalization(load_checkpoint(ckpt)))
    want = autograd_gradcam(model, x, target, 1)
    precision = report["precision"]
    assert precision["grad_dtype"] == "float32" and precision["grad_underflow"] == 0
    assert precision["grad_fp16_underflow"] > 0.5          # what float16 would have lost
    assert "Warning" not in output and "Precision: activations float32" in output
    rho = spearman(maps, want.reshape(maps.shape))
    assert np.nanmin(rho) > 0.99, rho                     # fails with float16 storage

    output16, report16, maps16, _, _ = scored(tmp_path, ckpt, data, "--dtype", "float16")
    lost = report16["precision"]["grad_underflow"]
    assert report16["precision"]["grad_dtype"] == "float16" and lost > 0.5
    assert f"Warning: {lost:.1%} of the non-zero gradients flushed to zero in float16" in output16
    rho16 = spearman(maps16, want.reshape(maps16.shape))
    assert not np.nanmin(np.nan_to_num(rho16, nan=0.0)) > 0.99, rho16
