"""norm-activations on a tiny layer-scale model (timm ViT, init_values=5: every branch is
multiplied by 5 before it joins the residual): it reports what each branch adds to the residual
(5× the attention output, not the attention output itself), labels each panel with the hook it
shows, and draws the residual leaving the last block."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vitscope.analyze.registry import discover
from vitscope.analyze.run import render_plugins

timm = pytest.importorskip("timm")

SCALE = 5.0


@pytest.fixture(scope="module")
def dump(tmp_path_factory):
    from vitscope.capture import capture
    from vitscope.data import load_dataset
    from vitscope.model.adapters.timm import TimmConfig, TimmViT
    torch.manual_seed(0)
    model = TimmViT(TimmConfig.create("vit_tiny_patch16_224", img_size=32, patch_size=8,
                                      depth=2, embed_dim=32, num_heads=2, num_classes=10,
                                      init_values=SCALE)).eval()
    data = load_dataset("shapes:val=6,train=6", "val", 32, seed=0)
    plugin = discover().get("norm-activations")
    return capture(model, data, tmp_path_factory.mktemp("ls") / "ls.h5", list(plugin.requires),
                   classes=data.classes, batch_size=6, force=True, device="cpu", seed=0)


def test_what_each_branch_adds_is_after_layer_scale(dump, tmp_path):
    from vitscope.dump import Dump
    (res,) = render_plugins(dump, [discover().get("norm-activations")], tmp_path,
                            {"norm-activations": {"blocks": "all", "gif": False}},
                            interactive=True)
    assert res.ok, res.error
    saved = np.load(res.out_dir / "results.npz")
    assert list(saved["added_kinds"]) == ["attn.added", "mlp.added"]
    kinds = list(saved["kinds"])
    attn_out = saved["token_norm_mean"][:, kinds.index("attn.out")]
    added = saved["added_token_norm_mean"][:, 0]
    # the branch joins the residual scaled by 5 (fp16 dump: a few parts in a thousand)
    np.testing.assert_allclose(added, SCALE * attn_out, rtol=2e-2)
    with Dump.open(dump) as d:
        x = np.asarray(d["blocks.1.out"][:], np.float32) - np.asarray(d["blocks.1.norm2.in"][:],
                                                                      np.float32)
    np.testing.assert_allclose(saved["added_token_norm_mean"][1, 1],
                               np.linalg.norm(x, axis=-1).mean(), rtol=1e-5)
    summary = json.loads((res.out_dir / "summary.json").read_text())
    text = summary["block 1 attention output norm → added to the residual"]
    before, after = (float(v) for v in text.split(" → "))
    assert after == pytest.approx(SCALE * before, rel=2e-2)
    # panels say which hook they show; the last block's output is drawn
    html = (res.out_dir / "token_norms.html").read_text()
    assert "1 out" in html and "blocks.1.out" in html and "norm1.in" in html
    stats = (res.out_dir / "stats.html").read_text()
    assert "attn.out" in stats and "norm2.in" in stats


def test_the_norm_map_has_a_column_for_the_last_blocks_output(dump, tmp_path):
    (res,) = render_plugins(dump, [discover().get("norm-activations")], tmp_path,
                            {"norm-activations": {"blocks": "first", "gif": True}},
                            interactive=False)
    assert res.ok, res.error
    from PIL import Image
    with Image.open(res.out_dir / "token_norms.gif") as im:
        assert im.n_frames == 3            # entering blocks 0 and 1, then leaving block 1
    columns = list(np.load(res.out_dir / "results.npz")["norm_map_hooks"])
    assert columns == ["blocks.0.norm1.in", "blocks.1.out"]     # the hook each panel shows
