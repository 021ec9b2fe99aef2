"""Attention rollout against a direct, loop-by-loop NumPy implementation of the formula."""
from __future__ import annotations

import numpy as np
import pytest

from vitscope.methods import FUSIONS, attention_rollout, discard_lowest


def random_attention(rng, n, heads, tokens):
    """Row-stochastic N×H×T×T matrices, as softmax produces them."""
    logits = rng.normal(scale=2.0, size=(n, heads, tokens, tokens))
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def direct_rollout(layers, fusion, discard_ratio, prefix):
    """Abnar & Zuidema, one image and one layer at a time, written from the definition."""
    n, _, t, _ = layers[0].shape
    out = []
    for b in range(n):
        rollout = np.eye(t)
        for attn in layers:
            a = {"mean": attn[b].mean(0), "max": attn[b].max(0), "min": attn[b].min(0)}[fusion]
            a = a.copy()
            if discard_ratio > 0:
                candidates = sorted((a[i, j], i, j) for i in range(t) for j in range(1, t))
                for _, i, j in candidates[:int(discard_ratio * t * (t - 1))]:
                    a[i, j] = 0.0            # never column 0: the CLS column is kept
            a = a + np.eye(t)
            a = a / a.sum(axis=1, keepdims=True)
            rollout = a @ rollout            # later layers multiply on the left
        out.append(rollout[0, prefix:])
    return np.array(out)


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("discard_ratio", [0.0, 0.5, 0.9])
def test_matches_direct_implementation(fusion, discard_ratio):
    rng = np.random.default_rng(7)
    layers = [random_attention(rng, 5, 3, 10) for _ in range(4)]
    final, per_layer = attention_rollout(layers, fusion, discard_ratio, num_prefix_tokens=1)
    np.testing.assert_allclose(final, direct_rollout(layers, fusion, discard_ratio, 1),
                               rtol=1e-10, atol=1e-12)
    assert per_layer.shape == (5, 4, 9)
    for l in range(4):  # the evolution strip: the rollout of the first l+1 layers
        np.testing.assert_allclose(per_layer[:, l],
                                   direct_rollout(layers[:l + 1], fusion, discard_ratio, 1),
                                   rtol=1e-10, atol=1e-12)


def test_ties_are_broken_like_the_direct_implementation():
    """fp16 dumps hold many equal values; exactly k entries go, in row-major order."""
    rng = np.random.default_rng(3)
    layers = [np.round(random_attention(rng, 4, 2, 6), 1) for _ in range(3)]
    final, _ = attention_rollout(layers, "mean", 0.6)
    np.testing.assert_allclose(final, direct_rollout(layers, "mean", 0.6, 1), rtol=1e-10)


def test_two_prefix_tokens_are_both_left_out():
    rng = np.random.default_rng(1)
    layers = [random_attention(rng, 3, 2, 7) for _ in range(2)]
    final, _ = attention_rollout(layers, "max", 0.3, num_prefix_tokens=2)
    np.testing.assert_allclose(final, direct_rollout(layers, "max", 0.3, 2), rtol=1e-10)
    assert final.shape == (3, 5)


def test_discard_never_drops_the_cls_column_and_works_per_image():
    a = np.full((2, 4, 4), 0.5)
    a[:, :, 0] = 1e-6            # the CLS column is the smallest of all, yet must survive
    a[1] *= 3                    # a different scale per image: thresholds are per sample
    out = discard_lowest(a, 0.5)
    assert (out[:, :, 0] == a[:, :, 0]).all()
    assert ((out[:, :, 1:] == 0).sum(axis=(1, 2)) == 6).all()   # floor(0.5 * 4 * 3) per image


def test_uniform_attention_gives_a_uniform_map():
    t = 5
    layers = [np.full((2, 2, t, t), 1 / t) for _ in range(3)]
    final, _ = attention_rollout(layers)
    np.testing.assert_allclose(final, np.full_like(final, final[0, 0]))
    # each rollout row sums to 1, so the patches get what CLS does not keep for itself
    assert 0 < final.sum(-1).max() < 1


def test_plugin_output_matches_the_formula_on_a_real_dump(small_dump, tmp_path):
    """The rendered results.npz holds the rollout of the dump's layers start..end, and the
    mask numbers are computed from the dump's masks."""
    from vitscope.dump import Dump
    from vitscope.plugin.masks import mass_in_mask, patch_coverage
    from vitscope.plugins.rollout import Rollout
    from vitscope.testing import render_options

    path, _ = small_dump
    opts = render_options(Rollout(), fusion="max", discard_ratio="0.5", start_layer="1",
                          static=False, interactive=False)
    with Dump.open(path) as dump:
        Rollout().render(dump, tmp_path, opts)
        layers = [np.asarray(dump[n][:], np.float64) for n in dump.match("blocks.*.attn.weights")]
        grid, masks = dump.layout.grid, np.asarray(dump.masks[:])
    saved = np.load(tmp_path / "results.npz")
    expected = direct_rollout(layers[1:], "max", 0.5, 1).reshape(-1, *grid)
    np.testing.assert_allclose(saved["rollout"], expected, rtol=1e-5, atol=1e-7)
    assert list(saved["layers"]) == [1]
    cov = patch_coverage(masks, grid)
    np.testing.assert_allclose(saved["mass_in_mask"][:, -1], mass_in_mask(expected, cov), rtol=1e-4)
    # a hand check of the coverage: the fraction of mask pixels in each 4×4 patch
    assert np.isclose(cov[0, 0, 0], masks[0, :4, :4].mean())


@pytest.mark.parametrize("show", [1, 2, 3, 6])
def test_any_number_of_shown_images_renders(small_dump, tmp_path, show):
    from vitscope.dump import Dump
    from vitscope.plugins.rollout import Rollout
    from vitscope.testing import render_options

    path, _ = small_dump                                   # 12 images
    opts = render_options(Rollout(), show=str(show), interactive=False)
    with Dump.open(path) as dump:
        files = Rollout().render(dump, tmp_path, opts)
    assert (tmp_path / "rollout_evolution.png") in files and (tmp_path / "rollout.png") in files
