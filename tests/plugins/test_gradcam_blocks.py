"""gradcam asks only for the block it draws: by default analyze captures norm1.out and its
gradient of that one block (the backward pass stops there); `gradcam.slider=true` asks for
every block and draws the slider over them."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from vitscope.cli import main
from vitscope.dump import Dump


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def analyze(ckpt, out, *opts):
    res = CliRunner().invoke(main, ["analyze", str(ckpt), "-p", "gradcam", "--images", "6",
                                    "-o", str(out), *opts], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    with Dump.open(manifest["run"]["dump"]) as d:
        return [n for n in d.names if "norm1.out" in n], d.model_names


def test_only_the_drawn_block_by_default_and_every_block_with_the_slider(shapes_ckpt, tmp_path):
    held, model = analyze(shapes_ckpt, tmp_path / "one")
    last = max(int(n.split(".")[1]) for n in model if n.startswith("blocks."))
    assert held == [f"blocks.{last}.norm1.out", f"grad:blocks.{last}.norm1.out"]
    assert "gradcam.slider=true" in (tmp_path / "one" / "gradcam" / "gradcam.html").read_text()
    held, _ = analyze(shapes_ckpt, tmp_path / "first", "--opt", "gradcam.block=0")
    assert held == ["blocks.0.norm1.out", "grad:blocks.0.norm1.out"]
    held, _ = analyze(shapes_ckpt, tmp_path / "all", "--opt", "gradcam.slider=true")
    assert len(held) == 2 * (last + 1)
    summary = json.loads((tmp_path / "all" / "gradcam@slider=true" / "summary.json").read_text())
    assert summary["block"] == last
