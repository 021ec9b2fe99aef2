"""Integrated gradients and occlusion, the methods that need the model: through
`vitscope.explain` on a timm ViT with a CLS token and two registers (three prefix tokens), four
images; against Captum called directly on the same model and inputs, against occlusion done
by hand, against IG's completeness axiom, and scored by `Explanation.score()`."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import vitscope
from vitscope.score.stats import spearman

pytest.importorskip("timm")
captum_attr = pytest.importorskip("captum.attr", reason="pip install 'vitscope[captum]'")


@pytest.fixture(scope="module")
def setup():
    import timm
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32,
                              patch_size=8, depth=2, embed_dim=48, num_heads=3, num_classes=5,
                              reg_tokens=2, no_embed_class=True).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    inputs = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)
    ex = vitscope.explain(model, inputs, methods=["integrated-gradients", "occlusion"],
                          preprocessed=True)
    x = torch.from_numpy(inputs.transpose(0, 3, 1, 2).copy())
    return model, ex, x


def normalised(m):
    m = np.asarray(m, np.float64).reshape(len(m), -1)
    return m / np.abs(m).max(axis=1, keepdims=True)


def test_integrated_gradients_equal_captum_and_complete(setup):
    model, ex, x = setup
    assert ex.layout.num_prefix_tokens == 3 and ex.layout.grid == (4, 4)
    target = torch.as_tensor(ex.targets)
    ours = ex.maps["integrated-gradients"]
    ref = captum_attr.IntegratedGradients(model).attribute(
        x, baselines=torch.zeros_like(x), target=target, n_steps=32)
    ref = ref.sum(1).reshape(4, 4, 8, 4, 8).sum((2, 4)).detach().numpy()
    assert np.abs(normalised(ours) - normalised(ref)).max() < 1e-4
    assert spearman(ours, ref).min() > 0.999
    # completeness: the attributions add up to logit(x) - logit(baseline), up to the quadrature
    with torch.no_grad():
        gap = (model(x) - model(torch.zeros_like(x))).gather(1, target[:, None])[:, 0].numpy()
    np.testing.assert_allclose(ours.sum(axis=(1, 2)), gap, rtol=0.05, atol=1e-3)


def test_occlusion_is_the_fall_of_the_target_logit_per_greyed_patch(setup):
    model, ex, x = setup
    target = torch.as_tensor(ex.targets)
    ours = ex.maps["occlusion"]
    by_hand = np.zeros((4, 4, 4))
    with torch.no_grad():
        full = model(x).gather(1, target[:, None])[:, 0]
        for r in range(4):
            for c in range(4):
                grey = x.clone()
                grey[:, :, 8 * r:8 * r + 8, 8 * c:8 * c + 8] = 0   # the normalisation mean
                by_hand[:, r, c] = (full - model(grey).gather(1, target[:, None])[:, 0]).numpy()
    assert np.abs(ours - by_hand).max() < 1e-4
    ref = captum_attr.Occlusion(model).attribute(x, sliding_window_shapes=(3, 8, 8),
                                                 strides=(3, 8, 8), baselines=0.0, target=target)
    assert np.abs(ours - ref[:, 0, ::8, ::8].numpy()).max() < 1e-4


def test_model_methods_are_scored_like_every_map(setup):
    _, ex, _ = setup
    ev = ex.score(draws=1)
    for name in ("integrated-gradients", "occlusion"):
        m = ev.report["methods"][name]
        assert m["faithfulness"]["deletion_auc"].n == 4
        assert m["class_sensitivity"]["verdict"] in ("class-sensitive", "inconclusive",
                                                     "class-agnostic")
        assert len(m["randomization"]["steps"]) == len(ev.report["cascade"])
