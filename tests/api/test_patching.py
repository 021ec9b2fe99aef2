"""`vitscope.patch`: activation patching against a direct computation on vitscope's ViT and an
adapted timm object, the baseline from another image, clear errors, and the model handed back
as it was (also when the metric fails)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import vitscope
from vitscope.errors import ConfigError, DataError
from vitscope.model.hooks import attach

from conftest import timm_vit


def tiny():
    from vitscope.model.vit import ModelConfig, ViT
    torch.manual_seed(0)
    return ViT(ModelConfig(image_size=16, patch_size=4, embed_dim=32, depth=3, num_heads=2,
                           mlp_ratio=2.0, num_classes=4)).eval()


def pixels(seed, n=3, size=16):
    return np.random.default_rng(seed).integers(0, 255, (n, size, size, 3), dtype=np.uint8)


def unchanged(model, before):
    return all(not m._forward_hooks for m in model.modules()) and all(
        torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_patch_matches_a_direct_computation():
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    clean, corrupted = pixels(0), pixels(1)
    res = vitscope.patch(model, clean, corrupted, hooks="blocks.*.out", token=0)
    assert res.hooks == ["blocks.0.out", "blocks.1.out", "blocks.2.out"]
    # the last block's CLS is all the head reads: patching it restores the whole gap
    assert res.effect["blocks.2.out"] == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(res.patched["blocks.2.out"], res.source, atol=1e-6)
    # by hand: block 1's CLS residual taken from the clean run
    from vitscope.data import to_model_input
    x = [to_model_input(torch.from_numpy(p), [0.5] * 3, [0.5] * 3) for p in (clean, corrupted)]
    with torch.no_grad():
        clean_logits, cache = model.run_with_cache(x[0], "blocks.1.out")
        cls = clean_logits.argmax(1)

        def put(t, n):
            t = t.clone()
            t[:, 0] = cache["blocks.1.out"][:, 0]
            return t
        with attach(model, {"blocks.1.out": put}):
            want = model(x[1]).softmax(1).gather(1, cls[:, None])[:, 0].numpy()
    np.testing.assert_allclose(res.patched["blocks.1.out"], want, atol=1e-6)
    assert set(res.baseline) == set(res.hooks) and len(res.mismatched["blocks.0.out"]) == 3
    est = res.change("blocks.1.out")
    assert est.lo <= est.mean <= est.hi
    html = res._repr_html_()
    assert "<img" in html and "blocks.1.out" in html
    assert unchanged(model, before)


def test_patch_noise_direction_and_a_custom_metric_on_timm():
    model = timm_vit()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = vitscope.patch(model, pixels(0, 2, 32), pixels(1, 2, 32),
                         hooks=["blocks.*.attn.head_out"], direction="noise",
                         metric=lambda logits: logits[:, 0])
    assert res.hooks == ["blocks.0.attn.head_out", "blocks.1.attn.head_out"]
    assert np.isfinite(list(res.effect.values())).all()
    assert unchanged(model, before) and not hasattr(model, "_vitscope")


def test_patch_leaves_the_model_as_it_was_when_the_metric_fails():
    model = tiny()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def broken(logits):
        raise RuntimeError("metric failed")
    with pytest.raises(RuntimeError, match="metric failed"):
        vitscope.patch(model, pixels(0), pixels(1), metric=broken)
    assert unchanged(model, before) and model.training


def test_patch_errors_are_one_sentence():
    model = tiny()
    with pytest.raises(DataError, match="3 clean and 2 corrupted"):
        vitscope.patch(model, pixels(0), pixels(1, 2))
    with pytest.raises(ConfigError, match="direction"):
        vitscope.patch(model, pixels(0), pixels(1), direction="sideways")
    with pytest.raises(ConfigError, match="no token axis"):
        vitscope.patch(model, pixels(0), pixels(1), hooks="cls", token=0)
    with pytest.raises(ConfigError, match="one value per image"):
        vitscope.patch(model, pixels(0), pixels(1), metric=lambda logits: logits)
