"""The shipped CIFAR-10 checkpoint: README's offline commands work on a fresh install."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vitscope.model.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
CKPT = ROOT / "examples" / "checkpoints" / "vit-cifar10.pt"
IMAGES = sorted((ROOT / "examples" / "images").glob("*.jpg"))
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def vitscope(*args, cwd):
    env = {**os.environ, "MPLBACKEND": "Agg", "NO_PROXY": "*", "http_proxy": "http://127.0.0.1:9",
           "https_proxy": "http://127.0.0.1:9"}  # any network use would fail
    return subprocess.run([sys.executable, "-m", "vitscope", *map(str, args)], cwd=cwd, env=env,
                           capture_output=True, text=True, timeout=600)


def test_shipped_checkpoint_is_small_and_records_its_accuracy():
    assert CKPT.stat().st_size <= 15 * 2**20
    ck = load_checkpoint(CKPT)
    assert ck.classes == CIFAR10
    assert ck.metrics["val_acc"] > 0.7  # measured on the 5,000-image val split when trained
    assert 1 <= len(IMAGES) <= 20


def test_predict_the_sample_images_offline(tmp_path):
    res = vitscope("predict", CKPT, *IMAGES, "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    preds = json.loads(res.stdout)
    assert len(preds) == len(IMAGES)
    # File names carry the true class (`cat_0000.jpg`); a trained model gets most right.
    truth = [p.name.rsplit("_", 1)[0] for p in IMAGES]
    top1 = [p["predictions"][0]["class"] for p in preds]
    assert sum(t == p for t, p in zip(truth, top1)) >= len(IMAGES) // 2, list(zip(truth, top1))


def test_analyze_all_on_the_sample_images_offline(tmp_path):
    res = vitscope("analyze", "--all", CKPT, "--data", f"folder:{ROOT / 'examples' / 'images'}",
                   "-o", tmp_path / "out", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    index = (tmp_path / "out" / "index.html").read_text()
    for plugin in ("token-attention", "cls-heatmap", "rollout", "cls-embedding", "norm-activations"):
        assert plugin in index
        assert any((tmp_path / "out" / plugin).glob("*.png")), plugin
    # the demo is labelled and whole (no val carve-out), with file names.
    summary = json.loads((tmp_path / "out" / "cls-embedding" / "summary.json").read_text())
    assert summary.get("images") == len(IMAGES), summary
    assert summary["coloured_by"] == "label" and summary["silhouette_head"] is not None
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["run"]["split"] == "all" and manifest["run"]["images"] == len(IMAGES)
    from vitscope.dump import Dump
    with Dump.open(manifest["run"]["dump"]) as d:
        truth = [CIFAR10.index(n.rsplit("_", 1)[0]) for n in d.file_names]
        assert d.labels.tolist() == truth
    assert "cat_0000.jpg" in (tmp_path / "out" / "cls-embedding" / "cls_embedding.html").read_text()
