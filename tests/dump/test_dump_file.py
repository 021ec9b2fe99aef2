"""Dump files: contents equal the model's activations, the reading API, merge, and each error."""
from __future__ import annotations

import os
import shutil

import h5py
import numpy as np
import pytest
import torch

from vitscope.capture import DEFAULT_HOOKS, capture
from vitscope.model.checkpoint import load_model
from vitscope.data import load_dataset, normalization, to_model_input
from vitscope.dump import FORMAT, Dump, TokenLayout, merge
from vitscope.errors import DumpError
from vitscope.model.hooks import run_with_cache
from vitscope.model.vit import ModelConfig, ViT


@pytest.fixture(scope="module")
def shapes16():
    return load_dataset("shapes:val=48", "val", 16)


@pytest.fixture
def loaded(shapes_ckpt):
    return load_model(shapes_ckpt)


def model_input(images, ckpt):
    return to_model_input(torch.from_numpy(np.ascontiguousarray(images)), *normalization(ckpt))


def test_dump_equals_single_image_run_with_cache(tmp_path, loaded, shapes16):
    model, ck = loaded
    path = capture(model, shapes16, tmp_path / "all.h5", "*", ckpt=ck, limit=10, batch_size=4,
                   dtype="float32")
    with Dump.open(path) as d:
        assert len(d) == 10 and d.hooks == list(model.hook_points())  # every hook, forward order
        assert len(set(d.indices)) == 10 and list(d.indices) != list(range(10))  # shuffled
        for i in range(10):
            src = d.indices[i]
            np.testing.assert_array_equal(d.images[i], shapes16.images[src])
            np.testing.assert_array_equal(d.masks[i], shapes16.masks[src])
            assert d.labels[i] == shapes16.labels[src]
            logits, cache = run_with_cache(model, model_input(shapes16.images[src][None], ck))
            np.testing.assert_allclose(d.logits[i], logits[0].detach().numpy(), rtol=1e-5, atol=1e-6)
            for name in d.hooks:
                np.testing.assert_allclose(d[name][i], cache[name][0].numpy(), rtol=1e-5,
                                           atol=1e-6, err_msg=name)
        assert d.preds.tolist() == d.logits[:].argmax(1).tolist()
        # Hook points fed the very same tensor are stored once and hard-linked.
        assert d.attrs["aliases"]["blocks.1.norm1.in"] == "blocks.0.out"
        assert d["blocks.1.norm1.in"].id == d["blocks.0.out"].id


def test_attention_output_rebuilt_from_dumped_weights_and_values(tmp_path, loaded, shapes16):
    """attn.out == proj(weights @ v), v from the dumped norm1.out; also equal to what the fused
    SDPA path computes when nothing hooks the weights."""
    model, ck = loaded
    path = capture(model, shapes16, tmp_path / "fp16.h5", ckpt=ck, limit=12, batch_size=5)
    x = model_input(shapes16.images, ck)
    with Dump.open(path) as d:
        assert d["blocks.0.attn.weights"].dtype == np.float16
        _, fused = run_with_cache(model, x[d.indices], names="blocks.*.attn.out")
        assert not any(b.attn.weights.active for b in model.blocks)
        for i, block in enumerate(model.blocks):
            attn = block.attn
            h, dh = attn.num_heads, attn.head_dim
            weights = torch.from_numpy(d[f"blocks.{i}.attn.weights"][:].astype(np.float32))
            normed = torch.from_numpy(d[f"blocks.{i}.norm1.out"][:].astype(np.float32))
            D = normed.shape[-1]
            wv, bv = attn.qkv.weight[2 * D:], attn.qkv.bias[2 * D:]
            v = (normed @ wv.T + bv).reshape(*normed.shape[:2], h, dh).transpose(1, 2)
            mixed = (weights @ v).transpose(1, 2).reshape(normed.shape)
            rebuilt = attn.proj(mixed).detach().numpy()
            scale = np.abs(rebuilt).max()
            for ref in (d[f"blocks.{i}.attn.out"][:].astype(np.float32),
                        fused[f"blocks.{i}.attn.out"].numpy()):
                assert np.abs(rebuilt - ref).max() <= 5e-3 * scale + 1e-4


def test_reading_api(tmp_path, shapes16):
    cfg = ModelConfig(image_size=16, patch_size=8, embed_dim=8, depth=12, num_heads=2,
                      mlp_ratio=1.0, num_classes=10)
    torch.manual_seed(0)
    model = ViT(cfg).eval()
    path = capture(model, shapes16, tmp_path / "d.h5", ["blocks.*.attn.weights", "cls"],
                   classes=["c%d" % i for i in range(10)], limit=20, batch_size=8)
    d = Dump.open(path)
    with d:
        assert d.path == path and len(d) == 20
        ds = d["blocks.3.attn.weights"]
        assert isinstance(ds, h5py.Dataset) and ds.chunks[0] <= 20     # lazy and chunked along N
        assert ds[2:5].shape == (3, 2, 5, 5) and d.dims("blocks.3.attn.weights") == ["N", "H", "T", "T"]
        names = d.match("blocks.*.attn.weights")
        assert names == [f"blocks.{i}.attn.weights" for i in range(12)]   # blocks.10 after 9
        assert d.match("blocks.1*.attn.weights") == ["blocks.1.attn.weights",
                                                     "blocks.10.attn.weights", "blocks.11.attn.weights"]
        assert d.match("norm.out") == [] and "cls" in d
        assert d.layout == TokenLayout(1, (2, 2), 8, 16) and d.layout.num_tokens == 5
        assert d.classes == ["c%d" % i for i in range(10)]
        assert d.labels.dtype == np.int64 and d.preds.dtype == np.int64 and d.preds.shape == (20,)
        assert d.logits.shape == (20, 10) and d.logits.dtype == np.float32
        assert d.images.shape == (20, 16, 16, 3) and d.images.dtype == np.uint8
        assert d.model_config == cfg.to_dict() and d.attrs["format"] == FORMAT
        assert d.attrs["normalize"] == {"mean": [0.5] * 3, "std": [0.5] * 3}
        assert d.attrs["checkpoint_sha256"] == "" and d.attrs["seed"] == 0
        with pytest.raises(DumpError, match=r"no hook 'blocks.3.attn.out'.*blocks.0–11.attn.weights, cls"):
            d["blocks.3.attn.out"]
        # covers: names or patterns, resolved against every hook point of the model.
        assert d.covers(["blocks.*.attn.weights"], 20) and d.covers("cls", 5)
        assert not d.covers(["blocks.*.attn.weights"], 21)          # too few images
        assert not d.covers(["blocks.*.out"], 5)                     # not captured
        assert not d.covers(["blocks.*.atn.weights"], 5)             # matches nothing
        assert d.covers(["cls"], 5, data="shapes:val=48", split="val", checkpoint_sha256="")
        assert not d.covers(["cls"], 5, split="train")
        assert not d.covers(["cls"], 5, data="shapes")
        assert not d.covers(["cls"], 5, checkpoint_sha256="ab" * 32)
    assert not d._f.id.valid  # closed by the context manager
    with Dump.open(capture(model, shapes16, tmp_path / "all.h5", "cls")) as whole:
        assert whole.covers("cls", 1000)  # the whole split covers any larger request


def bad_file(tmp_path, kind, good):
    p = tmp_path / f"{kind}.h5"
    if kind == "missing":
        return p
    if kind == "text":
        p.write_text("not hdf5")
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "foreign":
        with h5py.File(p, "w") as f:
            f["weights"] = np.zeros(3)
    elif kind == "truncated":
        data = good.read_bytes()
        p.write_bytes(data[: len(data) // 2])
    elif kind in ("newer", "incomplete"):
        shutil.copy(good, p)
        with h5py.File(p, "r+") as f:
            f.attrs["version" if kind == "newer" else "complete"] = 99 if kind == "newer" else False
    elif kind in ("bad-json", "bad-layout"):
        shutil.copy(good, p)
        with h5py.File(p, "r+") as f:
            f.attrs["token_layout"] = "{not json" if kind == "bad-json" else '{"grid": [4, 4]}'
    return p


@pytest.mark.parametrize("kind,message", [
    ("missing", "does not exist"), ("text", "not an HDF5 file"), ("empty", "empty"),
    ("foreign", "not a vitscope dump.*weights"), ("truncated", "truncated or corrupt"),
    ("newer", "version 99, newer.*upgrade vitscope"), ("incomplete", "incomplete dump"),
    ("bad-json", "not a valid vitscope dump: attribute .token_layout. is not valid JSON"),
    ("bad-layout", "not a valid vitscope dump: its token_layout cannot be read .KeyError"),
])
def test_open_errors(tmp_path, loaded, shapes16, kind, message):
    model, ck = loaded
    good = capture(model, shapes16, tmp_path / "good.h5", ckpt=ck, limit=16)
    with pytest.raises(DumpError, match=message) as e:
        Dump.open(bad_file(tmp_path, kind, good))
    assert str(e.value).count(". ") == 0  # one sentence
    Dump.open(good).close()


def datasets(f: h5py.File) -> dict[str, np.ndarray]:
    out = {}
    f.visititems(lambda k, v: out.__setitem__(k, v[:]) if isinstance(v, h5py.Dataset) else None)
    return out


def test_merge_of_two_shards_equals_one_dump(tmp_path, loaded, shapes16, monkeypatch):
    model, ck = loaded
    kw = dict(ckpt=ck, limit=9, batch_size=1)  # same batches in both: bit-equal results
    single = capture(model, shapes16, tmp_path / "single.h5", **kw)
    shard_dir = tmp_path / "shards"
    shards = [capture(model, shapes16, shard_dir / f"s{i}.h5", shard=f"{i}/2", **kw) for i in (1, 0)]
    merged = merge(shards, shard_dir / "merged.h5")
    assert not list(shard_dir.glob("*.partial"))
    assert merged.stat().st_size < 0.2 * sum(s.stat().st_size for s in shards)  # no copy
    monkeypatch.chdir(tmp_path)  # shards are found relative to the merged file, not the cwd
    with h5py.File(single) as a, h5py.File(merged) as b:
        want, got = datasets(a), datasets(b)
        assert sorted(want) == sorted(got) and b["acts/cls"].is_virtual
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    with Dump.open(merged) as m, Dump.open(single) as s:
        assert len(m) == 9 and m.hooks == s.hooks and "shard" not in m.attrs
        assert m.covers(DEFAULT_HOOKS, 9, checkpoint_sha256=s.attrs["checkpoint_sha256"])
    # Shards that do not belong together, or an incomplete set, are refused.
    other = capture(model, shapes16, tmp_path / "o1.h5", shard="1/2", **{**kw, "limit": 8})
    with pytest.raises(DumpError, match="does not belong"):
        merge([shards[1], other], tmp_path / "bad.h5")
    with pytest.raises(DumpError, match=r"shard\(s\) 1 missing of 2"):
        merge([shards[1]], tmp_path / "bad.h5")
    with pytest.raises(DumpError, match="not a shard"):
        merge([single], tmp_path / "bad.h5")
    with pytest.raises(DumpError, match="already exists"):
        merge(shards, merged)
    assert not (tmp_path / "bad.h5").exists()
    os.remove(shards[0])
    with pytest.raises(DumpError, match="shard 's1.h5' is missing"):
        Dump.open(merged)


def test_an_in_order_prefix_does_not_serve_a_shuffled_request(tmp_path, loaded, shapes16):
    model, ck = loaded
    with Dump.open(capture(model, shapes16, tmp_path / "o.h5", "cls", ckpt=ck, limit=20,
                           seed=None)) as d:
        assert d.covers("cls", 10) and not d.covers("cls", 10, seed=0)
    with Dump.open(capture(model, shapes16, tmp_path / "s.h5", "cls", ckpt=ck, limit=20,
                           seed=3)) as d:
        assert d.covers("cls", 10, seed=3) and not d.covers("cls", 10, seed=0)
    with Dump.open(capture(model, shapes16, tmp_path / "w.h5", "cls", ckpt=ck, seed=None)) as d:
        assert d.covers("cls", len(shapes16), seed=0)  # every image anyway: order is moot


def test_unwritable_outputs_are_one_sentence(tmp_path, loaded, shapes16):
    model, ck = loaded
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    for i in (0, 1):
        capture(model, shapes16, tmp_path / f"s{i}.h5", "cls", ckpt=ck, limit=6, shard=(i, 2))
    with pytest.raises(DumpError, match="Cannot write to the folder .*a-file.* choose another path"):
        merge([tmp_path / "s0.h5", tmp_path / "s1.h5"], blocker / "m.h5")
    if os.path.isdir("/proc/self"):  # writable to os.access as root, refused by the kernel
        with pytest.raises(DumpError, match=r"Cannot write to the folder '/proc' \("):
            capture(model, shapes16, "/proc/x.h5", "cls", ckpt=ck, limit=2)
    assert blocker.read_text() == "keep me"


def test_merge_refuses_to_write_over_one_of_its_shards(tmp_path, loaded, shapes16):
    model, ck = loaded
    shards = [capture(model, shapes16, tmp_path / f"s{i}.h5", "cls", ckpt=ck, limit=6, shard=(i, 2))
              for i in (0, 1)]
    before = shards[0].read_bytes()
    with pytest.raises(DumpError, match="is one of the shard files being merged"):
        merge(shards, shards[0], force=True)
    assert shards[0].read_bytes() == before


def test_version1_dump_still_opens_and_renders(tmp_path):
    """A dump written before version 2 (integer sizes, no prefix kinds) keeps working."""
    import json

    import h5py

    from vitscope.analyze.registry import discover
    from vitscope.analyze.run import render_plugins
    from vitscope.testing import make_dump

    path = make_dump(tmp_path / "v1.h5", hooks=["blocks.*.attn.weights", "cls"])
    with h5py.File(path, "r+") as f:
        f.attrs["version"] = 1
        f.attrs["token_layout"] = json.dumps({"num_prefix_tokens": 1, "grid": [4, 4],
                                              "patch_size": 4, "image_size": 16})
    with Dump.open(path) as dump:
        assert dump.layout.prefix == (("cls", 1),) and dump.layout.image_size == (16, 16)
    results = render_plugins(path, discover(autoload=False).select(["rollout"]), tmp_path / "out",
                             interactive=False)
    assert results[0].ok, results[0].error
