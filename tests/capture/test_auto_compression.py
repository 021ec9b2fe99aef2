"""Compression "auto" (capture's default): lzf only where it shrinks a dataset and its measured
cost fits in the share of the model's pace the capture gives it; the dump reads the same
whatever was chosen. Real HDF5 files, a real tiny ViT, the real CLI."""
from __future__ import annotations

import json

import h5py
import numpy as np
from click.testing import CliRunner

from vitscope.capture import capture
from vitscope.cli import main
from vitscope.data import load_dataset
from vitscope.dump import Dump, DumpWriter


def arrays(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    smooth = np.repeat(rng.random((n, 4, 1, 1)), 64, axis=2).repeat(64, axis=3)
    return {"acts/smooth": smooth.astype(np.float16),                    # compresses well
            "acts/noise": rng.standard_normal((n, 4, 64, 64)).astype(np.float16),   # does not
            "labels": np.arange(n, dtype=np.int64)}


def written(path, budget) -> dict[str, str | None]:
    data = arrays(8)
    w = DumpWriter(path, 8, {}, batch_size=8, compression="auto", compress_budget=budget)
    w.write(0, data)
    w.finish()
    with h5py.File(path) as f:
        for key, value in data.items():          # read back bit for bit, whatever the filter
            np.testing.assert_array_equal(f[key][()], value)
        choice = json.loads(f.attrs["compression_choice"])
        return {k: f[k].compression for k in data} | {"choice": choice}


def test_auto_compresses_what_pays_within_the_budget(tmp_path):
    free = written(tmp_path / "free.h5", None)          # no pace known: lzf where it pays
    assert free["acts/smooth"] == "lzf" and free["acts/noise"] is None
    assert free["choice"]["acts/noise"] == "none: lzf would save under 10%"
    broke = written(tmp_path / "broke.h5", 0.0)         # no time to spare: nothing compressed
    assert broke["acts/smooth"] is None and broke["acts/noise"] is None
    assert broke["choice"]["acts/smooth"].startswith("none: lzf would cost ")
    rich = written(tmp_path / "rich.h5", 60.0)          # a minute a batch: all that pays
    assert rich["acts/smooth"] == "lzf" and rich["choice"]["acts/smooth"] == "lzf"


def test_a_capture_defaults_to_auto_and_reads_as_an_uncompressed_one(tmp_path, shapes_ckpt):
    from vitscope.model.checkpoint import load_checkpoint
    ckpt = load_checkpoint(shapes_ckpt)
    model = ckpt.build_model()
    ds = load_dataset("shapes:val=24", "val", image_size=16)
    hooks = ["blocks.*.attn.weights", "cls"]
    auto = capture(model, ds, tmp_path / "auto.h5", hooks, device="cpu", batch_size=8)
    raw = capture(model, ds, tmp_path / "raw.h5", hooks, device="cpu", batch_size=8,
                  compression="none")
    with Dump.open(auto) as a, Dump.open(raw) as b:
        assert a.attrs["compression"] == "auto" and b.attrs["compression"] == "none"
        for hook in b.hooks:
            np.testing.assert_array_equal(a[hook][()], b[hook][()])
    with h5py.File(auto) as f:
        choice = json.loads(f.attrs["compression_choice"])
    assert set(choice) >= {"acts/blocks.0.attn.weights", "acts/cls", "logits"}
    assert all(v == "lzf" or v.startswith("none: ") for v in choice.values())


def test_dump_command_takes_auto_and_info_says_what_it_chose(tmp_path, shapes_ckpt):
    out = tmp_path / "d.h5"
    res = CliRunner().invoke(main, ["dump", str(shapes_ckpt), "--limit", "16", "--hooks",
                                    "blocks.*.attn.weights", "--compression", "auto", "-o",
                                    str(out), "--device", "cpu", "-q"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["dump", "info", str(out)])
    assert res.exit_code == 0, res.output
    with Dump.open(out) as d:
        used = sum(d[h].compression == "lzf" for h in d.hooks)
    assert f"float16, auto: lzf on {used} of 2 hook points" in res.output, res.output
    res = CliRunner().invoke(main, ["dump", str(shapes_ckpt), "--compression", "zstd", "-o",
                                    str(tmp_path / "e.h5")])
    assert res.exit_code == 2 and "'zstd' is not one of 'auto', 'lzf', 'gzip', 'none'" in \
        res.output, res.output
