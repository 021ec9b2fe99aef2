"""The example plugin, discovered through its entry point and run by the real `vitscope analyze`."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

os.environ.setdefault("MPLBACKEND", "Agg")

from vitscope.cli import main  # noqa: E402
from vitscope.dump import Dump  # noqa: E402
from vitscope.plugin import discover  # noqa: E402
from vitscope.testing import make_dump  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("entropy")
    dump = make_dump(root / "tiny.h5", n=6, checkpoint=root / "tiny.pt")
    return root, dump


def test_registered_through_its_entry_point():
    entry = discover().get("attention-entropy")
    assert entry.ok, entry.error
    assert entry.package == "vitscope-attention-entropy" and not entry.builtin


def test_runs_through_vitscope_analyze(tiny):
    root, dump_path = tiny
    out = root / "out"
    res = CliRunner().invoke(main, ["analyze", str(root / "tiny.pt"), "--dump", str(dump_path),
                                    "--plugin", "attention-entropy", "-o", str(out)])
    assert res.exit_code == 0, res.output
    folder = out / "attention-entropy"
    png = folder / "attention_entropy.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (folder / "attention_entropy.html").read_text()
    assert "Plotly.newPlot" in html and 'src="http' not in html
    assert "attention-entropy" in (out / "index.html").read_text()

    # the numbers match a direct computation from the dump
    with Dump.open(dump_path) as dump:
        names = dump.match("blocks.*.attn.weights")
        attn = np.stack([np.asarray(dump[n][:], np.float64) for n in names])   # L×N×H×T×T
        T = dump.layout.num_tokens
    direct = -(attn * np.log(np.clip(attn, 1e-12, None))).sum(-1)             # L×N×H×T
    saved = np.load(folder / "results.npz")
    np.testing.assert_allclose(saved["entropy"], direct.mean(axis=(1, 3)), rtol=1e-6)
    np.testing.assert_allclose(saved["entropy_cls"], direct[..., 0].mean(axis=1), rtol=1e-6)
    assert (saved["entropy"] <= np.log(T) + 1e-9).all()
    assert json.loads((folder / "summary.json").read_text())["images"] == 6


def test_entropy_vs_depth_has_whole_layer_ticks(tiny, monkeypatch):
    """Layers are whole numbers: the line plot's x ticks must not read 0.5, 1.5."""
    import matplotlib.figure

    from vitscope.testing import render_options
    ticks = []
    real_savefig = matplotlib.figure.Figure.savefig

    def record_layer_ticks(fig, *args, **kwargs):
        for ax in fig.axes:
            if ax.get_xlabel() == "layer" and ax.lines:     # the entropy-vs-depth panel
                lo, hi = ax.get_xlim()
                ticks.extend(t for t in ax.get_xticks() if lo <= t <= hi)
        return real_savefig(fig, *args, **kwargs)
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record_layer_ticks)
    root, dump_path = tiny
    # In this process (analyze renders each plugin in a child, out of the patch's reach).
    plugin = discover().get("attention-entropy").load().plugin
    with Dump.open(dump_path) as dump:
        plugin.render(dump, root / "ticks", render_options(plugin, interactive=False))
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
