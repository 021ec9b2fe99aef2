"""CLS slices of the attention: `blocks.{i}.attn.weights.cls_row` / `.cls_col` are
hook points of their own (N×H×T), stored at 2/T of the full weights, served by a dump of the
full weights too; cls-heatmap asks for nothing more."""
from __future__ import annotations

import json

import h5py
import numpy as np
from click.testing import CliRunner

from vitscope.capture import capture
from vitscope.model.checkpoint import load_model
from vitscope.cli import main
from vitscope.data import load_dataset
from vitscope.dump.derive import SliceView
from vitscope.dump import Dump
from vitscope.names import match_names, with_slices

SLICE_HOOKS = ["blocks.*.attn.weights.cls_row", "blocks.*.attn.weights.cls_col"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_only_a_pattern_naming_a_slice_matches_it():
    names = with_slices(["blocks.0.attn.weights", "blocks.0.attn.out", "cls"])
    assert names == ["blocks.0.attn.weights", "blocks.0.attn.weights.cls_row",
                     "blocks.0.attn.weights.cls_col", "blocks.0.attn.out", "cls"]
    assert with_slices(["blocks.0.attn.weights"], has_cls=False) == ["blocks.0.attn.weights"]
    assert match_names("**", names) == ["blocks.0.attn.weights", "blocks.0.attn.out", "cls"]
    assert match_names("blocks.*.attn.**", names) == ["blocks.0.attn.weights", "blocks.0.attn.out"]
    assert match_names("blocks.*.attn.weights.*", names) == []
    assert match_names("blocks.*.attn.weights.cls_row", names) == ["blocks.0.attn.weights.cls_row"]
    assert match_names("blocks.**.cls_col", names) == ["blocks.0.attn.weights.cls_col"]


def test_slices_are_captured_small_and_equal_the_full_attention(tmp_path, shapes_ckpt):
    model, ck = load_model(shapes_ckpt)
    ds = load_dataset("shapes:val=48", "val", 16)
    full = capture(model, ds, tmp_path / "full.h5", ["blocks.*.attn.weights"], ckpt=ck, limit=12)
    part = capture(model, ds, tmp_path / "part.h5", SLICE_HOOKS, ckpt=ck, limit=12)
    with Dump.open(full) as f, Dump.open(part) as p:
        assert p.hooks == ["blocks.0.attn.weights.cls_row", "blocks.0.attn.weights.cls_col",
                           "blocks.1.attn.weights.cls_row", "blocks.1.attn.weights.cls_col"]
        c = f.layout.cls_index
        T = f.layout.num_tokens
        for name in f.match("blocks.*.attn.weights"):
            a = f[name][:]
            assert p[f"{name}.cls_row"].shape == (12, a.shape[1], T)
            assert p.dims(f"{name}.cls_row") == ["N", "H", "T"]
            np.testing.assert_array_equal(p[f"{name}.cls_row"][:], a[:, :, c, :])
            np.testing.assert_array_equal(p[f"{name}.cls_col"][:], a[:, :, :, c])
            # the full dump serves the same slices, read through HDF5's selection
            view = f[f"{name}.cls_row"]
            assert isinstance(view, SliceView) and view.shape == (12, a.shape[1], T)
            np.testing.assert_array_equal(view[3:7], a[3:7, :, c, :])
            np.testing.assert_array_equal(f[f"{name}.cls_col"][[1, 4], :, 2:], a[[1, 4], :, 2:, c])
            np.testing.assert_array_equal(f[f"{name}.cls_row"][..., 5], a[:, :, c, 5])
            np.testing.assert_array_equal(np.asarray(f[f"{name}.cls_col"]), a[:, :, :, c])
        assert f.covers(SLICE_HOOKS, 12) and p.covers(SLICE_HOOKS, 12)
        assert not p.covers(["blocks.*.attn.weights"], 12)
        assert f.match("blocks.*.attn.weights.cls_row") == p.match("blocks.*.attn.weights.cls_row")
    assert part.stat().st_size < full.stat().st_size


def test_a_slice_reads_the_cls_index_of_the_layout(tmp_path):
    """A model whose CLS sits after other prefix tokens: the row and column at that index."""
    a = np.random.default_rng(0).random((3, 2, 5, 5)).astype(np.float32)
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["a"] = a
        row, col = SliceView("r", f["a"], 2, 1), SliceView("c", f["a"], 3, 1)
        np.testing.assert_array_equal(row[:], a[:, :, 1, :])
        np.testing.assert_array_equal(col[1:, 0], a[1:, 0, :, 1])
        assert row.shape == (3, 2, 5) and len(col) == 3


def test_hooks_lists_the_slices_and_cls_heatmap_captures_only_them(shapes_ckpt, tmp_path,
                                                                     monkeypatch):
    res = run("hooks", shapes_ckpt, "--match", "blocks.*.attn.weights.cls_*")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert len(lines) == 4 and lines[0].split() == ["blocks.0.attn.weights.cls_row", "B×4×17"]
    assert "cls_row" not in run("hooks", shapes_ckpt, "--match", "**").output

    monkeypatch.chdir(tmp_path)
    res = run("analyze", shapes_ckpt, "-p", "cls-heatmap", "-n", 12, "-o", "slices")
    assert res.exit_code == 0, res.output
    (dump,) = (tmp_path / "outputs" / "dumps").glob("*.h5")
    with Dump.open(dump) as d:
        assert set(d.hooks) == set(match_names("blocks.*.attn.weights.cls_*", d.readable))
    # The same figures' numbers from a dump of the full default hooks.
    res = run("dump", shapes_ckpt, "-n", 12, "-o", tmp_path / "full.h5")
    assert res.exit_code == 0, res.output
    res = run("analyze", shapes_ckpt, "--dump", tmp_path / "full.h5", "-p", "cls-heatmap",
              "-o", "full")
    assert res.exit_code == 0, res.output
    with np.load(tmp_path / "slices" / "cls-heatmap" / "results.npz") as a, \
            np.load(tmp_path / "full" / "cls-heatmap" / "results.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-3, atol=1e-6, err_msg=key)
    summary = json.loads((tmp_path / "slices" / "cls-heatmap" / "summary.json").read_text())
    assert summary
    assert dump.stat().st_size < (tmp_path / "full.h5").stat().st_size / 3


def test_token_attention_with_query_cls_captures_only_the_cls_rows(shapes_ckpt, tmp_path,
                                                                    monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = run("analyze", shapes_ckpt, "-p", "token-attention", "-n", 12, "--static", "-o", "a")
    assert res.exit_code == 0, res.output
    (dump,) = (tmp_path / "outputs" / "dumps").glob("*.h5")
    with Dump.open(dump) as d:
        assert set(d.hooks) == set(d.match("blocks.*.attn.weights.cls_row"))
    res = run("dump", shapes_ckpt, "-n", 12, "-o", tmp_path / "full.h5")
    assert res.exit_code == 0, res.output
    res = run("analyze", shapes_ckpt, "--dump", tmp_path / "full.h5", "-p", "token-attention",
              "--static", "-o", "b")
    assert res.exit_code == 0, res.output
    with np.load(tmp_path / "a" / "token-attention" / "results.npz") as a, \
            np.load(tmp_path / "b" / "token-attention" / "results.npz") as b:
        np.testing.assert_allclose(a["maps"], b["maps"], rtol=1e-3, atol=1e-6)
        assert (a["query_token"] == b["query_token"]).all()
    # Another query reads every row: a dump of CLS rows does not serve it, the full one does.
    res = run("analyze", shapes_ckpt, "--dump", dump, "-p", "token-attention",
              "--opt", "token-attention.query=top", "-o", "c")
    assert res.exit_code != 0 and "blocks.*.attn.weights" in res.output
    res = run("analyze", shapes_ckpt, "--dump", tmp_path / "full.h5", "-p", "token-attention",
              "--opt", "token-attention.query=top", "--static", "-o", "c")
    assert res.exit_code == 0, res.output


def test_a_broken_requires_for_falls_back_to_requires():
    import warnings

    from vitscope.analyze.registry import discover
    entry = discover().get("token-attention")
    assert entry.requires_for({"query": "cls"}) == ("blocks.*.attn.weights.cls_row",)
    assert entry.requires_for({"query": "top"}) == entry.requires == ("blocks.*.attn.weights",)
    entry.plugin.requires_for = lambda options: 42      # on this instance only
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert entry.requires_for({"query": "cls"}) == entry.requires
        assert any("requires_for() failed" in str(w.message) for w in caught)
    finally:
        del entry.plugin.requires_for


def test_slices_of_a_stored_attention_are_not_stored_twice(tmp_path, shapes_ckpt):
    model, ck = load_model(shapes_ckpt)
    ds = load_dataset("shapes:val=48", "val", 16)
    path = capture(model, ds, tmp_path / "both.h5", ["blocks.*.attn.weights", *SLICE_HOOKS],
                   ckpt=ck, limit=4)
    with Dump.open(path) as d:
        assert d.hooks == ["blocks.0.attn.weights", "blocks.1.attn.weights"]
        assert d.covers(["blocks.*.attn.weights", *SLICE_HOOKS], 4)
        assert isinstance(d["blocks.1.attn.weights.cls_col"], SliceView)
