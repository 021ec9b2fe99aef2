"""Analysis at dataset scale: a plugin's memory is bounded by its chunk, not by the number of
images; chunked results equal one-chunk (in-memory) results; results.npz written chunk by
chunk; numba's cache in vitscope's cache folder; `analyze --dump` without torch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from vitscope.plugin import reading as maps
from vitscope.dump import Dump
from vitscope.render.figures import Results, save_results
from vitscope.plugin.reading import ClassMeans, NanMean
from vitscope.plugins import BUILTINS
from vitscope.analyze.registry import discover
from vitscope.testing import make_dump, render_options

ROOT = Path(__file__).resolve().parents[2]
SMALL, LARGE = 160, 640          # images: the memory test compares N with 4N
FAST = {"cls-embedding": {"umap": False}}   # UMAP's own memory grows with N by its nature
# scikit-learn fits a probe on every held-out image's features at once: N×D per layer
IN_MEMORY = ("probe",)


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    return {n: make_dump(root / f"d{n}.h5", n=n, depth=2, num_heads=2) for n in (SMALL, LARGE)}


def render(name, dump_path, out_dir, **values):
    plugin = discover().get(name).load().plugin
    with Dump.open(dump_path) as dump:
        plugin.render(dump, out_dir, render_options(plugin, static=False, interactive=False,
                                                    **{**FAST.get(name, {}), **values}))
    return dict(np.load(out_dir / "results.npz"))


def small_steps(monkeypatch, rows: int = 40, nbytes: int = 64 << 10) -> None:
    """Chunks of at most `rows` images: both dumps of the memory test span several."""
    monkeypatch.setattr(maps, "READ_ROWS", rows)
    monkeypatch.setattr(maps, "READ_BYTES", nbytes)


def traced_peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("name", [n for n in BUILTINS if n not in IN_MEMORY])
def test_plugin_memory_is_bounded_by_its_chunk(name, dumps, tmp_path, monkeypatch):
    """Peak Python allocation (numpy included) on 4N images stays within a fixed margin of
    the peak on N images. Keeping any per-image map in memory (the old rollout and
    cls-heatmap did) costs kilobytes per image here, i.e. megabytes over the 480 extra
    images, and fails."""
    small_steps(monkeypatch)
    from vitscope.plugins import cls_embedding     # its silhouette sample is capped, at 2,000
    monkeypatch.setattr(cls_embedding, "SILHOUETTE_SAMPLE", 100)
    render(name, dumps[SMALL], tmp_path / "warm")    # imports and caches out of the figures
    small = traced_peak(lambda: render(name, dumps[SMALL], tmp_path / "small"))
    large = traced_peak(lambda: render(name, dumps[LARGE], tmp_path / "large"))
    # per image only a few numbers may stay (labels, mask scores): 64 B × 480 images ≈ 30 kB
    assert large <= 1.1 * small + (96 << 10), (name, small, large)


@pytest.mark.parametrize("name", list(BUILTINS))
def test_chunked_results_equal_one_chunk(name, dumps, tmp_path, monkeypatch):
    """Every number in results.npz is the same whether the images come in chunks of 7 or
    all at once (float32 precision)."""
    monkeypatch.setattr(maps, "READ_ROWS", 10 ** 9)
    monkeypatch.setattr(maps, "READ_BYTES", 1 << 40)
    whole = render(name, dumps[SMALL], tmp_path / "whole")
    small_steps(monkeypatch, rows=7, nbytes=1)
    chunked = render(name, dumps[SMALL], tmp_path / "chunked")
    assert whole.keys() == chunked.keys()
    for key in whole:
        a, b = whole[key], chunked[key]
        assert a.shape == b.shape and a.dtype == b.dtype, key
        if a.dtype.kind == "f":
            np.testing.assert_allclose(b, a, rtol=2e-6, atol=1e-7, err_msg=key)
        else:
            np.testing.assert_array_equal(b, a, err_msg=key)


def test_norm_statistics_streamed_equal_in_memory(dumps, tmp_path, monkeypatch):
    """norm-activations' moments, maxima, channel means and token norms, computed over
    chunks of 7 images, equal numpy on the whole float32 arrays."""
    small_steps(monkeypatch, rows=7, nbytes=1)
    saved = render("norm-activations", dumps[SMALL], tmp_path)
    blocks, kinds = list(saved["blocks"]), list(saved["kinds"])
    with Dump.open(dumps[SMALL]) as dump:
        for i, b in enumerate(blocks):
            for j, kind in enumerate(kinds):
                x = np.asarray(dump[f"blocks.{b}.{kind}"][:], np.float32)
                np.testing.assert_allclose(saved["mean"][i, j], x.mean(dtype=np.float64),
                                           rtol=1e-6, atol=1e-9)
                np.testing.assert_allclose(saved["std"][i, j], x.std(dtype=np.float64), rtol=1e-6)
                assert saved["max_abs"][i, j] == np.abs(x).max()
                np.testing.assert_allclose(saved["channel_abs_mean"][i, j],
                                           np.abs(x).mean(axis=(0, 1), dtype=np.float64), rtol=1e-6)
                norms = np.linalg.norm(x, axis=-1)
                np.testing.assert_allclose(saved["token_norm_mean"][i, j], norms.mean(), rtol=1e-6)
                np.testing.assert_allclose(saved["cls_norm_mean"][i, j], norms[:, 0].mean(),
                                           rtol=1e-6)
            residual = np.linalg.norm(np.asarray(dump[f"blocks.{b}.norm1.in"][:], np.float32),
                                      axis=-1)
            np.testing.assert_allclose(saved["residual_token_norms"][:, i], residual, rtol=1e-6)


def test_plugins_stream_a_merged_dump_of_shards(tmp_path):
    """`analyze` on `dump merge` of shards reads the shards through HDF5 virtual datasets, in
    order, copying nothing: the same results as one dump of the same images, in chunks that
    cross the shard boundaries, and the merged file stays a few kB."""
    import torch

    from vitscope.capture import capture
    from vitscope.data import load_dataset
    from vitscope.dump import merge
    from vitscope.model.vit import ModelConfig, ViT

    torch.manual_seed(0)
    model = ViT(ModelConfig(image_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2,
                            mlp_ratio=2.0, num_classes=10)).eval()
    data = load_dataset("shapes:val=90,train=8", "val", 16)
    one = capture(model, data, tmp_path / "one.h5", batch_size=16, force=True, device="cpu")
    shards = [capture(model, data, tmp_path / f"s{i}.h5", batch_size=16, force=True,
                      device="cpu", shard=(i, 3)) for i in range(3)]
    merged = merge(shards, tmp_path / "merged.h5")
    assert merged.stat().st_size < 200_000
    mp = pytest.MonkeyPatch()
    try:
        small_steps(mp, rows=13, nbytes=1 << 30)       # chunks of 13 across shards of 30
        for name in ("cls-heatmap", "rollout", "norm-activations", "cls-embedding"):
            a = render(name, one, tmp_path / "one" / name)
            b = render(name, merged, tmp_path / "merged" / name)
            for key in a:
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name}: {key}")
    finally:
        mp.undo()
    assert sorted(p.name for p in tmp_path.glob("*.h5")) == ["merged.h5", "one.h5", "s0.h5",
                                                             "s1.h5", "s2.h5"]


# ------------------------------------------------------------------------- the pieces

def test_results_written_in_chunks_are_what_savez_writes(tmp_path):
    rng = np.random.default_rng(0)
    maps16 = rng.normal(size=(25, 3, 4)).astype(np.float16)
    with Results(tmp_path / "a") as r:
        for i in range(0, 25, 6):
            r.append("maps", maps16[i:i + 6])
        r["layers"] = np.arange(3)
        r["fusion"] = "mean"
        files = r.save({"images": 25, "ratio": float("nan")})
    save_results(tmp_path / "b", {"maps": maps16, "layers": np.arange(3), "fusion": "mean"})
    a, b = np.load(tmp_path / "a" / "results.npz"), np.load(tmp_path / "b" / "results.npz")
    assert sorted(a.files) == sorted(b.files)
    for key in a.files:
        assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key
    assert json.loads(files[1].read_text()) == {"images": 25, "ratio": None}
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["results.npz", "summary.json"]


def test_results_refuse_rows_of_another_shape_and_leave_nothing(tmp_path):
    with pytest.raises(ValueError, match="rows of"):
        with Results(tmp_path) as r:
            r.append("maps", np.zeros((2, 3), np.float32))
            r.append("maps", np.zeros((2, 4), np.float32))
    assert list(tmp_path.iterdir()) == []      # the spilled rows went with the block


def test_class_means_in_chunks_equal_one_hot_means():
    rng = np.random.default_rng(1)
    values = rng.normal(size=(50, 2, 3))
    labels = rng.integers(-1, 5, 50)           # -1: unknown; class 4 of 6 absent... some
    acc = ClassMeans(6, (2, 3))
    for i in range(0, 50, 7):
        acc.add(values[i:i + 7], labels[i:i + 7])
    means, counts = acc.result()
    for c in range(6):
        rows = values[labels == c]
        assert counts[c] == len(rows)
        np.testing.assert_allclose(means[c], rows.mean(axis=0) if len(rows) else 0, rtol=1e-6)


def test_nan_mean_ignores_nan_per_position():
    x = np.array([[1.0, np.nan], [3.0, np.nan], [np.nan, np.nan]])
    m = NanMean()
    m.add(x[:2])
    m.add(x[2:])
    np.testing.assert_array_equal(m.result(), [2.0, np.nan])


def test_read_chunks_reads_only_the_selection(dumps):
    with Dump.open(dumps[SMALL]) as dump:
        ds = dump["blocks.0.attn.weights"]
        got = np.concatenate([x for _, x in maps.read_chunks(ds, 50, 16, select=(slice(None), 0))])
        assert got.dtype == np.float32 and got.shape == (50, ds.shape[1], ds.shape[3])
        np.testing.assert_array_equal(got, ds[:50, :, 0, :].astype(np.float32))


# ------------------------------------------------------------------------------- numba cache

CACHE_PROBE = """
import json, sys, warnings
import numpy as np
from vitscope.render.umap_cache import load_umap, numba_cache_dir
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    umap = load_umap()
f = umap.distances.euclidean          # compiled by umap without cache=True
f(np.zeros(3, np.float32), np.ones(3, np.float32))
print(json.dumps({"dir": str(numba_cache_dir()), "hits": sum(f.stats.cache_hits.values()),
                  "warnings": [str(w.message) for w in caught if "cache" in str(w.message)]}))
"""


def _probe(env_cache: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["VITSCOPE_CACHE"] = env_cache
    out = subprocess.run([sys.executable, "-c", CACHE_PROBE], check=True, capture_output=True,
                         text=True, env=env, cwd=ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
def test_numba_code_is_cached_in_vitscope_cache_folder(tmp_path):
    first = _probe(str(tmp_path))
    assert first["dir"] == str(tmp_path / "numba") and first["hits"] == 0
    assert list((tmp_path / "numba").rglob("*euclidean*.nbi"))   # umap's function, cached there
    second = _probe(str(tmp_path))                                # a new process loads it
    assert second["hits"] == 1 and not second["warnings"]


def test_unwritable_numba_cache_is_a_warning_not_a_failure(tmp_path, monkeypatch):
    from vitscope.render.umap_cache import enable_numba_cache

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("VITSCOPE_CACHE", str(blocker))   # a file: numba/ cannot be made in it
    with pytest.warns(UserWarning, match="set VITSCOPE_CACHE"):
        assert enable_numba_cache() is None
    assert "NUMBA_CACHE_DIR" not in os.environ           # numba keeps its default, the run goes on


# ---------------------------------------------------------------------------- no torch

def test_analyze_from_a_dump_imports_no_torch(dumps, tmp_path):
    """Rendering from a dump needs no model: `analyze --dump` never pays torch's import
    (about 1 s and 500 MB of memory)."""
    code = (f"import sys; from vitscope.cli import main\n"
            f"try: main(['analyze', '--dump', {str(dumps[SMALL])!r}, '--plugin', 'rollout', "
            f"'-o', {str(tmp_path / 'o')!r}], standalone_mode=False)\n"
            f"except SystemExit as e: assert not e.code, e.code\n"
            f"bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\n"
            f"assert not bad, bad[:3]")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT,
                   env={**os.environ, "MPLBACKEND": "Agg"})
    assert (tmp_path / "o" / "rollout" / "results.npz").is_file()
