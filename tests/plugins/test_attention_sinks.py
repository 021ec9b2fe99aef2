"""The attention-sinks plugin finds a sink planted in the weights of a tiny real ViT (block 0:
every query attends to one patch, which also gets an outlier norm), draws it, reports the CLS
attention it takes against the median-token baseline with an interval; rollout warns about it
in its summary and titles and names the start_layer that avoids it. A model without a planted
sink reports none and rollout stays quiet."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from vitscope.analyze.registry import discover
from vitscope.analyze.run import render_plugins

SINK_PATCH = 5          # patch (1, 1) of the 4×4 grid; token 6 after CLS


def tiny_vit(plant: bool):
    from vitscope.model.vit import ModelConfig, ViT
    torch.manual_seed(0)
    model = ViT(ModelConfig(image_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2,
                            mlp_ratio=2.0, num_classes=10)).eval()
    if plant:
        D = 32
        with torch.no_grad():
            # token SINK_PATCH stands out on channel 0 (its position embedding) ...
            model.pos_embed[0, 1 + SINK_PATCH, 0] = 40.0
            qkv = model.blocks[0].attn.qkv
            qkv.weight[:2 * D] = 0.0
            qkv.bias[:2 * D] = 0.0
            u = torch.ones(D // 2)                 # per head: queries all along u ...
            for h in range(2):
                qkv.bias[h * 16:(h + 1) * 16] = u
                qkv.weight[D + h * 16:D + (h + 1) * 16, 0] = 3.0 * u   # ... keys along u·x[0]
    return model


def dump_of(model, path):
    from vitscope.capture import capture
    from vitscope.data import load_dataset
    data = load_dataset("shapes:val=8,train=8", "val", 16, seed=0)
    return capture(model, data, path, ["blocks.*.attn.weights", "blocks.*.out"],
                   classes=data.classes, batch_size=8, force=True, device="cpu", seed=0)


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    root = tmp_path_factory.mktemp("sinks")
    return {plant: dump_of(tiny_vit(plant), root / f"{plant}.h5") for plant in (True, False)}


def page_text(path) -> str:
    """The page with Plotly's JSON escapes (\\u2013) read as the characters they stand for."""
    return re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), path.read_text())


def render(dump, out, name, values=None, interactive=False):
    (res,) = render_plugins(dump, [discover().get(name)], out, {name: values or {}},
                            interactive=interactive)
    assert res.ok, res.error
    return res, json.loads((res.out_dir / "summary.json").read_text())


def test_the_planted_sink_is_found_drawn_and_measured(dumps, tmp_path):
    res, summary = render(dumps[True], tmp_path, "attention-sinks", interactive=True)
    block0 = summary["per_block"][0]
    assert summary["blocks_with_sinks"][0] == 0 and summary["strongest_block"] == 0
    assert block0["sinks_per_image"] == 1.0
    assert block0["most_frequent_sinks"] == ["patch (1, 1) (8/8)"]
    assert block0["high_norm_per_image"] >= 1.0        # its residual norm stands out too
    share, base = block0["cls_attention_on_sinks"], block0["median_tokens_baseline"]
    assert share[0] > 0.9 and share[1] <= share[0] <= share[2]        # mean inside its interval
    assert base[2] < 0.1 < share[1]                     # the baseline is far below, intervals apart
    saved = np.load(res.out_dir / "results.npz")
    ratio = saved["sink_ratio.0"]
    assert ratio.shape == (8, 17) and (ratio.argmax(axis=1) == 1 + SINK_PATCH).all()
    # the map draws it: the brightest patch of block 0's tile is the planted one
    names = {f.name for f in res.files}
    assert {"attention_sinks.png", "high_norm_tokens.png", "attention_sinks_share.png",
            "attention_sinks.html"} <= names
    with Image.open(res.out_dir / "attention_sinks.png") as im:
        assert im.size[0] >= 200
    html = page_text(res.out_dir / "attention_sinks.html")
    assert "they take" in html and "median tokens" in html


def test_no_planted_sink_means_none_reported(dumps, tmp_path):
    _, summary = render(dumps[False], tmp_path, "attention-sinks")
    assert summary["per_block"][0]["sinks_per_image"] < 0.5
    assert summary["per_block"][0]["most_frequent_sinks"] == [] or \
        summary["per_block"][0]["cls_attention_on_sinks"][0] < 0.5


@pytest.mark.parametrize("planted", [True, False])
def test_rollout_warning_and_settings_in_its_title(dumps, tmp_path, planted):
    res, summary = render(dumps[planted], tmp_path, "rollout", interactive=True)
    html = page_text(res.out_dir / "rollout.html")
    assert "mean fusion, discard 0, blocks 0–1" in html          # settings, always
    if planted:
        assert summary["attention_sink_blocks"] == [0] and summary["suggested_start_layer"] == 1
        assert "rollout.start_layer=1" in summary["warning"] and "start_layer=1" in html
        assert summary["top_token_share_by_block"]["0"] > 0.5
        # with the suggested start the warning is gone
        _, after = render(dumps[planted], tmp_path / "after", "rollout", {"start_layer": 1})
        assert "warning" not in after and after["layers"] == "1–1"
    else:
        assert "warning" not in summary and "attention sink" not in html
