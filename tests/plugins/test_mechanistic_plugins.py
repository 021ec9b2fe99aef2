"""The mechanistic plugins against direct computations: the logit lens against running the
model's own norm and head on each block's residual; DLA parts plus the direct path summing to
the logit; mean attention distance against a hand-computed grid; CKA of a layer with itself
and under orthogonal transforms; probes against planted signal; the Wilson interval."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vitscope.dump import Dump
from vitscope.model.checkpoint import load_model
from vitscope.model.hooks import run_with_cache
from vitscope.plugin.mech import wilson
from vitscope.plugins.cka import Cka, StreamingCKA, cka
from vitscope.plugins.head_stats import HeadStats, mean_distance, patch_distances
from vitscope.plugins.logit_attribution import LogitAttribution
from vitscope.plugins.logit_lens import LogitLens, settle_layer
from vitscope.plugins.probe import Probe, fit_score, split
from vitscope.testing import make_dump, render_options

HOOKS = ["embed.out", "blocks.*.attn.head_out", "blocks.*.mlp.out", "blocks.*.out",
         "blocks.*.attn.weights"]


@pytest.fixture(scope="module")
def mech_dump(tmp_path_factory):
    """A float32 dump of a tiny random ViT (3 blocks) with its checkpoint."""
    root = tmp_path_factory.mktemp("mech")
    ckpt = root / "tiny.pt"
    path = make_dump(root / "d.h5", n=24, depth=3, hooks=HOOKS, checkpoint=ckpt, dtype="float32")
    return path, ckpt


def test_logit_lens_is_the_head_run_on_each_block(mech_dump, tmp_path):
    path, ckpt = mech_dump
    with Dump.open(path) as dump:
        files = LogitLens().render(dump, tmp_path, render_options(LogitLens()))
        images = np.asarray(dump.images[:], np.float32)
        stored = np.asarray(dump.logits[:], np.float32)
    assert {f.name for f in files} >= {"logit_lens.png", "logit_lens.html", "results.npz"}
    lens = np.load(tmp_path / "results.npz")["lens_logits"].astype(np.float32)
    model = load_model(ckpt)[0].eval()
    x = (torch.from_numpy(images).permute(0, 3, 1, 2) / 255 - 0.5) / 0.25
    with torch.no_grad():
        logits, cache = run_with_cache(model, x, "blocks.*.out")
        direct = np.stack([model.head(model.norm(cache[f"blocks.{b}.out"][:, 0])).numpy()
                           for b in range(3)], axis=1)
    np.testing.assert_allclose(lens, direct, rtol=1e-2, atol=1e-2)       # fp16 in results.npz
    np.testing.assert_allclose(lens[:, -1], stored, rtol=1e-2, atol=1e-2)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert "chance (most frequent label)" in summary


def test_settle_layer_by_hand():
    preds = np.array([[1, 2, 2], [2, 2, 2], [2, 1, 0], [0, 2, 1]])
    final = np.array([2, 2, 0, 2])
    assert settle_layer(preds, final).tolist() == [1, 0, 2, 3]


def test_logit_attribution_parts_sum_to_the_logit(mech_dump, tmp_path):
    path, _ = mech_dump
    with Dump.open(path) as dump:
        LogitAttribution().render(dump, tmp_path, render_options(LogitAttribution()))
        logits = np.asarray(dump.logits[:], np.float64)
        target = dump.target
    r = np.load(tmp_path / "results.npz")
    assert r["head_dla"].shape == (24, 3, 2)
    parts = r["head_dla"].sum((1, 2)) + r["mlp_dla"].sum(1) + r["bias_dla"].sum(1) \
        + r["direct_dla"] + r["constant"]
    np.testing.assert_allclose(parts, logits[np.arange(24), target], rtol=1e-4, atol=1e-4)
    assert np.abs(r["head_dla"]).max() > 0


def test_mean_attention_distance_on_a_hand_made_grid():
    # 2×2 grid, one CLS: each patch query attends wholly to the diagonally opposite patch
    d = patch_distances((2, 2))
    assert d[0, 3] == pytest.approx(np.sqrt(2)) and d[0, 1] == 1 and d[1, 2] == pytest.approx(np.sqrt(2))
    a = np.zeros((1, 2, 5, 5), np.float32)
    for q, k in ((1, 4), (2, 3), (3, 2), (4, 1)):
        a[0, 0, q, k] = 1.0
    a[0, 1, 1:, 1:] = np.eye(4)      # head 1 attends to itself: distance 0
    a[0, :, 0, 0] = 1.0
    np.testing.assert_allclose(mean_distance(a, 1, d), [[np.sqrt(2), 0.0]], rtol=1e-6)
    # in pixels with 4×8-pixel patches: sqrt(4² + 8²)
    px = patch_distances((2, 2), (4, 8))
    np.testing.assert_allclose(mean_distance(a, 1, px)[0, 0], np.sqrt(16 + 64), rtol=1e-6)
    # half the row on CLS is ignored by the renormalisation over patches
    a[0, 0, 1:, 0] = 1.0
    a[0, 0, 1:] /= 2
    np.testing.assert_allclose(mean_distance(a, 1, d)[0, 0], np.sqrt(2), rtol=1e-6)


def test_head_stats_renders_with_a_uniform_baseline(mech_dump, tmp_path):
    path, _ = mech_dump
    with Dump.open(path) as dump:
        files = HeadStats().render(dump, tmp_path, render_options(HeadStats()))
    r = np.load(tmp_path / "results.npz")
    assert r["distance_px"].shape == (3, 2) and (r["entropy"] <= r["uniform_entropy"] + 1e-5).all()
    assert ((r["to_cls"] >= 0) & (r["to_cls"] <= r["to_prefix"] + 1e-6)).all()
    assert {f.suffix for f in files} >= {".png", ".html"}


def test_cka_identity_orthogonal_invariance_and_streaming():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 8))
    y = x @ rng.normal(size=(8, 6)) + 0.5 * rng.normal(size=(50, 6))
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    assert cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert cka(x @ q * 3.0 + 2.0, y) == pytest.approx(cka(x, y), abs=1e-10)
    # the streaming sums equal the Gram-matrix form (Kornblith et al. eq. 4) over all rows
    s = StreamingCKA()
    for a, b in ((0, 17), (17, 40), (40, 50)):
        s.add({0: x[a:b]}, {0: y[a:b]}, [(0, 0)])
    xc, yc = x - x.mean(0), y - y.mean(0)
    kx, ky = xc @ xc.T, yc @ yc.T
    gram = (kx * ky).sum() / (np.linalg.norm(kx) * np.linalg.norm(ky))
    assert s.value(0, 0) == pytest.approx(gram, rel=1e-10)
    assert cka(x, rng.normal(size=(50, 6))) < 0.5


def test_cka_plugin_within_and_between_dumps(mech_dump, tmp_path):
    path, _ = mech_dump
    with Dump.open(path) as dump:
        Cka().render(dump, tmp_path / "a", render_options(Cka(), other=str(path)))
    r = np.load(tmp_path / "a" / "results.npz")
    np.testing.assert_allclose(np.diag(r["within"]), 1.0, atol=1e-9)
    np.testing.assert_allclose(r["between"], r["within"], atol=1e-9)     # a dump against itself
    assert (r["within_mismatched_baseline"] < 1).all()


def test_probe_reads_planted_signal_and_not_shuffled_labels():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 40)
    x = rng.normal(size=(120, 5))
    x[:, 0] += 12 * y                           # the class is linear in feature 0
    train, test = split(y, 0.5, 0)
    assert np.bincount(y[test]).tolist() == [20, 20, 20] and not set(train) & set(test)
    assert fit_score(x, y, train, test, 1.0) == len(test)
    shuffled = y.copy()
    shuffled[train] = rng.permutation(y[train])
    assert fit_score(x, shuffled, train, test, 1.0) < 0.6 * len(test)


def test_wilson_interval_known_values():
    p, lo, hi = wilson(5, 10)
    assert (p, round(float(lo), 4), round(float(hi), 4)) == (0.5, 0.2366, 0.7634)
    p, lo, hi = wilson(0, 10)
    assert lo == 0 and round(float(hi), 4) == 0.2775


def test_probe_renders(mech_dump, tmp_path):
    path, _ = mech_dump
    with Dump.open(path) as dump:
        files = Probe().render(dump, tmp_path, render_options(Probe()))
    r = np.load(tmp_path / "results.npz")
    acc = r["cls_accuracy"]
    assert acc.shape == (3, 3) and ((acc[:, 1] <= acc[:, 0]) & (acc[:, 0] <= acc[:, 2])).all()
    assert {f.suffix for f in files} >= {".png", ".html"}
