"""Hook points derived on read (LayerNorm outputs from their stored inputs): they equal the
stored ones to fp16 precision, read like stored datasets without torch or the model, survive
merging, and a norm the derivation does not reproduce is stored as usual."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from vitscope.capture import capture
from vitscope.cli import main
from vitscope.data import load_dataset
from vitscope.dump.derive import TOLERANCE, DerivedDataset, layer_norm, mismatch
from vitscope.dump import Dump, merge
from vitscope.errors import DumpError
from vitscope.model.vit import HookedLayerNorm, ModelConfig, ViT

ROOT = Path(__file__).resolve().parents[2]
NORMS = ["blocks.0.norm1.out", "blocks.0.norm2.out", "blocks.1.norm1.out", "blocks.1.norm2.out",
         "norm.out"]


def trained_like(model: ViT) -> ViT:
    """Norm weights and biases away from 1 and 0 and a residual stream with a large channel,
    as in a trained ViT, so the derivation has real parameters to get right."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.copy_(1 + 0.5 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g))
        model.pos_embed[..., 3] += 8.0      # an outlier channel, like trained ViTs have
    return model


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    cfg = ModelConfig(image_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2,
                      mlp_ratio=2.0, num_classes=10)
    return trained_like(ViT(cfg).eval()), load_dataset("shapes:val=40,train=8", "val", 16)


def dump_pair(setup, tmp_path, dtype="float16", **kwargs):
    model, data = setup
    paths = []
    # one fixed filter for both: "auto" (the default) decides by timing, so two captures
    # may store a dataset differently, and the sizes compared below would differ by that
    kwargs.setdefault("compression", "lzf")
    for derive in (True, False):
        paths.append(capture(model, data, tmp_path / f"{dtype}-{derive}.h5", batch_size=16,
                             dtype=dtype, force=True, device="cpu", derive=derive, **kwargs))
    return paths


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_derived_equal_stored(setup, tmp_path, dtype):
    derived_path, stored_path = dump_pair(setup, tmp_path, dtype)
    with Dump.open(derived_path) as d, Dump.open(stored_path) as s:
        assert sorted(d.derived) == NORMS and not s.derived
        assert d.hooks == s.hooks                       # same hook points, whatever the storage
        assert d.derived["norm.out"]["source"] == "blocks.1.out"   # norm.in is stored as that
        for name in NORMS:
            got, want = d[name], s[name]
            assert isinstance(got, DerivedDataset) and name not in d._f["acts"]
            assert (got.shape, got.dtype, d.dims(name)) == (want.shape, want.dtype, s.dims(name))
            err = mismatch(got[:], want[:])
            assert err <= (TOLERANCE if dtype == "float16" else 1e-5), (name, err)
        for name in set(d.hooks) - set(NORMS):          # the rest is stored bit for bit
            np.testing.assert_array_equal(d[name][:], s[name][:])
    with h5py.File(stored_path) as f:
        norm_bytes = sum(f[f"acts/{n}"].id.get_storage_size() for n in NORMS)
    assert derived_path.stat().st_size < stored_path.stat().st_size - 0.9 * norm_bytes


def test_derived_reads_like_a_dataset(setup, tmp_path):
    derived_path, _ = dump_pair(setup, tmp_path)
    with Dump.open(derived_path) as d:
        ds = d["blocks.0.norm2.out"]
        whole = ds[:]
        assert np.array_equal(np.asarray(ds), whole) and len(ds) == 40
        for key in [(slice(3, 9),), (5,), (slice(None), 0), ([1, 4, 7],), (Ellipsis, 3),
                    (slice(0, 20, 3), slice(1, None), slice(2, 10)), (2, 0, 7)]:
            np.testing.assert_array_equal(ds[key], whole[key], err_msg=str(key))
        # what a plugin does with it: the CLS token of chunks, converted
        np.testing.assert_array_equal(np.asarray(ds[10:20, 0], np.float32),
                                      whole[10:20, 0].astype(np.float32))


def test_layer_norm_is_torch_layer_norm():
    x = torch.randn(4, 7, 16) * 3 + 1
    w, b = torch.randn(16), torch.randn(16)
    want = torch.nn.functional.layer_norm(x, (16,), w, b, 1e-6).numpy()
    np.testing.assert_allclose(layer_norm(x.numpy(), w.numpy(), b.numpy(), 1e-6), want,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer_norm(x.numpy(), None, None, 1e-5),
                               torch.nn.functional.layer_norm(x, (16,), eps=1e-5).numpy(),
                               rtol=1e-5, atol=1e-5)


class NotANorm(HookedLayerNorm):
    """Looks like a LayerNorm (same class, same hook points) but computes something else."""

    def forward(self, x):
        x = getattr(self, "in")(x)
        return self.out(x * self.weight + self.bias)


def test_a_norm_the_derivation_does_not_reproduce_is_stored(setup, tmp_path):
    model, data = setup
    block = model.blocks[0]
    fake = NotANorm(32, 1e-6)
    fake.load_state_dict(block.norm2.state_dict())
    original, block.norm2 = block.norm2, fake
    try:
        from vitscope.model.hooks import name_hook_points
        name_hook_points(model)
        path = capture(model, data, tmp_path / "x.h5", batch_size=16, force=True, device="cpu")
    finally:
        block.norm2 = original
        name_hook_points(model)
    with Dump.open(path) as d:
        assert "blocks.0.norm2.out" not in d.derived and "blocks.0.norm2.out" in d._f["acts"]
        assert "blocks.0.norm1.out" in d.derived


def test_reading_derived_hooks_needs_neither_torch_nor_the_model(setup, tmp_path):
    derived_path, stored_path = dump_pair(setup, tmp_path)
    code = (f"import sys, numpy as np\nfrom vitscope.dump import Dump\n"
            f"from vitscope.dump.derive import mismatch, TOLERANCE\n"
            f"with Dump.open({str(derived_path)!r}) as d, Dump.open({str(stored_path)!r}) as s:\n"
            f"    assert mismatch(d['norm.out'][:], s['norm.out'][:]) <= TOLERANCE\n"
            f"bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\n"
            f"assert not bad, bad[:3]")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_merged_shards_keep_their_derived_hooks(setup, tmp_path):
    model, data = setup
    shards = [capture(model, data, tmp_path / f"s{i}.h5", batch_size=8, force=True,
                      device="cpu", shard=(i, 2)) for i in range(2)]
    whole = capture(model, data, tmp_path / "whole.h5", batch_size=8, force=True, device="cpu")
    merged = merge(shards, tmp_path / "merged.h5")
    with Dump.open(merged) as m, Dump.open(whole) as w:
        assert sorted(m.derived) == NORMS and m["norm.out"].source.is_virtual
        for name in NORMS:
            np.testing.assert_array_equal(m[name][:], w[name][:])
        np.testing.assert_array_equal(m["norm.out"][15:25, 0], w["norm.out"][15:25, 0])


def test_a_damaged_derived_hook_is_a_clear_error(setup, tmp_path):
    derived_path, _ = dump_pair(setup, tmp_path)
    with h5py.File(derived_path, "r+") as f:
        del f["derived/blocks.0.norm1.out/weight"]
        f["derived/blocks.0.norm1.out"].create_dataset("weight", data=np.ones(5, np.float32))
    with Dump.open(derived_path) as d:
        with pytest.raises(DumpError, match="derived hook point 'blocks.0.norm1.out'.*--no-derive"):
            d["blocks.0.norm1.out"]


def test_cli_no_derive_stores_every_hook_point(shapes_ckpt, tmp_path):
    runner = CliRunner()
    for flag, name in (([], "d.h5"), (["--no-derive"], "s.h5")):
        res = runner.invoke(main, ["dump", str(shapes_ckpt), "--limit", "8", "-q", "--device",
                                   "cpu", "-o", str(tmp_path / name), *flag])
        assert res.exit_code == 0, res.output
    with Dump.open(tmp_path / "d.h5") as d, Dump.open(tmp_path / "s.h5") as s:
        assert len(d.derived) == 5 and not s.derived and d.hooks == s.hooks
    info = runner.invoke(main, ["dump", "info", str(tmp_path / "d.h5")])
    assert "derived: layer_norm of blocks.0.norm1.in" in info.output, info.output
    assert os.path.getsize(tmp_path / "d.h5") < os.path.getsize(tmp_path / "s.h5")
