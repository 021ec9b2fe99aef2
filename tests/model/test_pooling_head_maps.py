"""SigLIP has no CLS token: `cls-heatmap` and `rollout` read its attention-pooling head's query
instead (`pool.weights`), through the real CLI on a small random-weights SigLIP, and say so.
The maps are checked against the pooling attention and the rollout computed here from the
Hugging Face model itself (its eager attention and its own pooling head), not through vitscope's
hooks. A CLS model's maps and dump are as before (no pooling point asked for)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from vitscope.cli import main
from vitscope.dump import Dump

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
from clip_models import VISION, pet_folder, save_folder  # noqa: E402

READOUT = "pooling-head query attention, not a CLS row"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def photos(tmp_path):
    """Four 40×40 images in cat/ and dog/ (labels, so the class means have groups)."""
    return pet_folder(tmp_path / "photos", per_class=2)


def own_pooling_and_rollout(folder, pixels: torch.Tensor):
    """(B×H×P pooling attention, B×P rollout read out by its head-mean query) from the
    transformers model: eager attention of every layer, and the head's MultiheadAttention
    asked for its per-head weights on the final (post-LayerNorm) tokens."""
    model = transformers.SiglipModel.from_pretrained(folder, attn_implementation="eager").eval()
    vision = model.vision_model
    with torch.no_grad():
        out = vision(pixel_values=pixels, output_attentions=True)
        head = vision.head
        probe = head.probe.repeat(len(pixels), 1, 1)
        _, pool = head.attention(probe, out.last_hidden_state, out.last_hidden_state,
                                 need_weights=True, average_attn_weights=False)
    pool = pool[:, :, 0].numpy().astype(np.float64)                      # B×H×P
    query = pool.mean(axis=1)
    for attn in reversed(out.attentions):                              # q · Â_L · … · Â_1
        a = attn.numpy().astype(np.float64).mean(axis=1) + np.eye(attn.shape[-1])
        query = np.einsum("bt,bts->bs", query, a / a.sum(-1, keepdims=True))
    return pool, query


def test_siglip_maps_read_the_pooling_head_and_say_so(tmp_path, monkeypatch, photos):
    monkeypatch.chdir(tmp_path)
    save_folder("SiglipModel", tmp_path / "siglip")
    res = run("import", f"hf:{tmp_path / 'siglip'}", "-o", tmp_path / "siglip.pt")
    assert res.exit_code == 0, res.output
    res = run("analyze", tmp_path / "siglip.pt", "-p", "cls-heatmap", "-p", "rollout", "--data",
              f"folder:{photos}", "-o", tmp_path / "out")
    assert res.exit_code == 0 and "FAILED" not in res.output, res.output
    dump_path = next((tmp_path / "outputs" / "dumps").glob("*.h5"))
    with Dump.open(dump_path) as d:
        assert d.layout.cls_index is None and "pool.weights" in d.names   # asked for, captured
        from vitscope.data import normalization, to_model_input
        from vitscope.model.checkpoint import load_checkpoint
        mean, std = normalization(load_checkpoint(tmp_path / "siglip.pt"))
        pixels = to_model_input(torch.from_numpy(np.asarray(d.images[:])), mean, std)
    pool, rollout = own_pooling_and_rollout(tmp_path / "siglip", pixels)
    side = VISION["image_size"] // VISION["patch_size"]

    heat = np.load(tmp_path / "out" / "cls-heatmap" / "results.npz")
    np.testing.assert_allclose(heat["pool_to_patches"].reshape(pool.shape), pool, atol=2e-3)
    np.testing.assert_allclose(heat["pool_to_patches_head_mean"].reshape(4, -1),
                               pool.mean(axis=1), atol=2e-3)
    summary = json.loads((tmp_path / "out" / "cls-heatmap" / "summary.json").read_text())
    assert summary["readout"] == READOUT
    assert summary["uniform_patch_share"] == round(1 / side ** 2, 4)       # the baseline
    lo, hi = summary["peak_patch_share_95ci"]
    assert lo <= summary["peak_patch_share"] <= hi
    assert READOUT in (tmp_path / "out" / "cls-heatmap" / "cls_heatmap.html").read_text()
    assert (tmp_path / "out" / "cls-heatmap" / "pool_to_patches.png").stat().st_size > 1000

    roll = np.load(tmp_path / "out" / "rollout" / "results.npz")
    assert roll["rollout"].shape == (4, side, side)
    np.testing.assert_allclose(roll["rollout"].reshape(4, -1), rollout, atol=2e-3)
    assert not np.allclose(rollout, rollout.mean(axis=1, keepdims=True), atol=1e-4)  # not flat
    summary = json.loads((tmp_path / "out" / "rollout" / "summary.json").read_text())
    assert summary["readout"] == READOUT
    assert READOUT in (tmp_path / "out" / "rollout" / "rollout.html").read_text()

    # every static figure says it in its title, with all its text on the canvas
    from figure_text import saved_figures
    from vitscope.analyze.registry import discover
    from vitscope.testing import render_options
    registry = discover()
    with saved_figures() as figures, Dump.open(dump_path) as d:
        for name in ("cls-heatmap", "rollout"):
            plugin = registry.get(name).plugin
            plugin.render(d, tmp_path / name, render_options(plugin, interactive=False,
                                                             run_dir=tmp_path))
    assert len(figures) >= 3 and [f"{f.name}: {p}" for f in figures for p in f.problems] == []
    for f in figures:
        texts = [t.get_text() for t in f.figure.findobj(lambda a: hasattr(a, "get_text"))]
        assert any(READOUT in t for t in texts), (f.name, texts)


def test_the_python_api_reads_the_same_pooling_head(tmp_path, monkeypatch):
    """vitscope.explain(…, methods=["rollout"]) on a SigLIP: the one implementation, the same
    read-out, where it used to refuse for want of a CLS token."""
    import vitscope
    save_folder("SiglipModel", tmp_path / "siglip")
    assert run("import", f"hf:{tmp_path / 'siglip'}", "-o", tmp_path / "s.pt").exit_code == 0
    pixels = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    ex = vitscope.explain(str(tmp_path / "s.pt"), pixels, methods=["rollout"])
    x = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    _, rollout = own_pooling_and_rollout(tmp_path / "siglip", x)
    np.testing.assert_allclose(ex.maps["rollout"].reshape(2, -1), rollout, atol=1e-4)


def test_a_cls_model_still_reads_its_cls_rows(tmp_path, monkeypatch, photos):
    """(A model with neither a CLS token nor a pooling head: tests/analyze/test_no_cls_token.)"""
    monkeypatch.chdir(tmp_path)
    save_folder("CLIPModel", tmp_path / "clip")
    res = run("import", f"hf:{tmp_path / 'clip'}", "-o", tmp_path / "clip.pt")
    assert res.exit_code == 0, res.output
    res = run("analyze", tmp_path / "clip.pt", "-p", "cls-heatmap", "--data", f"folder:{photos}",
              "-o", tmp_path / "out2")
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "out2" / "cls-heatmap" / "summary.json").read_text())
    assert "readout" not in summary and "cls_to_patches" in np.load(
        tmp_path / "out2" / "cls-heatmap" / "results.npz")
    dump_path = next((tmp_path / "outputs" / "dumps").glob("*clip*.h5"))
    with Dump.open(dump_path) as d:
        assert "pool.weights" not in d.names and d.match("blocks.*.attn.weights.cls_row")


def test_a_siglip_without_its_pooling_head_is_one_sentence(tmp_path):
    """transformers' SigLIP with vision_use_head=False returns no pooled output: nothing to
    explain, said in one sentence (it used to fail with a TypeError)."""
    from clip_models import perturbed
    headless = perturbed(transformers.SiglipVisionModel(
        transformers.SiglipVisionConfig(**VISION, vision_use_head=False))).eval()
    headless.save_pretrained(tmp_path / "headless")
    res = run("import", f"hf:{tmp_path / 'headless'}", "-o", tmp_path / "h.pt")
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert res.output.strip().splitlines()[-1].startswith("Error: This SiglipVisionModel has no "
                                                          "attention-pooling head"), res.output
    assert not (tmp_path / "h.pt").exists()
