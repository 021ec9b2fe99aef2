"""Gradients in the dump: capture against torch.autograd, targets, reuse, the CLI, errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from vitscope.capture import capture, ensure_dump
from vitscope.model.checkpoint import load_model
from vitscope.cli import main
from vitscope.data import load_dataset, to_model_input
from vitscope.dump import Dump
from vitscope.errors import DumpError
from vitscope.model.hooks import attach

GRAD_HOOKS = ["grad:blocks.*.attn.weights", "grad:blocks.1.norm1.in", "grad:blocks.0.out",
              "grad:blocks.1.norm1.out", "grad:cls"]


def reference_grads(model, x, target, name):
    """d logit[target] / d <hook output>, one image at a time, with the hook point's output
    replaced by a leaf tensor: the textbook definition, independent of capture's views."""
    out = []
    for i in range(len(x)):
        values = {}
        with torch.no_grad(), attach(model, {name: lambda t, n: values.setdefault(n, t.clone())}):
            model(x[i:i + 1])
        leaf = values[name].requires_grad_(True)
        with attach(model, {name: lambda t, n: leaf}):
            logits = model(x[i:i + 1])
        out.append(torch.autograd.grad(logits[0, target[i]], leaf)[0][0])
    return torch.stack(out).numpy()


@pytest.mark.parametrize("target", ["pred", "label", "3"])
def test_captured_gradients_equal_autograd_of_the_target_logit(tmp_path, shapes_ckpt, target):
    model, ck = load_model(shapes_ckpt)
    ds = load_dataset("shapes:val=10,train=10", "val", 16)
    path = capture(model, ds, tmp_path / "g.h5", ["blocks.*.attn.weights", *GRAD_HOOKS], ckpt=ck,
                   batch_size=4, target=target)           # batches of 4, 4, 2: batching is exact
    with Dump.open(path) as dump:
        x = to_model_input(torch.from_numpy(np.ascontiguousarray(ds.images[dump.indices])),
                           *ck.train_config["normalize"].values())
        with torch.no_grad():
            logits = model(x)
        want = {"pred": logits.argmax(1).numpy(), "label": ds.labels[dump.indices],
                "3": np.full(len(dump), 3)}[target]
        assert np.array_equal(dump.target, want) and dump.target_spec == target
        assert dump.grad_hooks == ["blocks.0.attn.weights", "blocks.0.out", "blocks.1.norm1.in",
                                   "blocks.1.norm1.out", "blocks.1.attn.weights", "cls"]
        for name in dump.grad_hooks:
            ref = reference_grads(model, x, want, name)
            got = dump[f"grad:{name}"][:]
            # gradients are stored in float32 by default (float16 flushes small ones)
            assert got.dtype == np.float32 and got.shape == ref.shape
            scale = np.abs(ref).max()
            assert scale > 0, name
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6 * scale, err_msg=name)
        assert dump.grad_dtype == "float32" and dump.grad_precision()["underflow"] == 0
        assert dump.dims("grad:blocks.0.attn.weights") == ["N", "H", "T", "T"]
    # the LayerNorm branch and the whole residual stream are different gradients of one tensor
    with Dump.open(path) as dump:
        assert not np.allclose(dump["grad:blocks.1.norm1.in"][:], dump["grad:blocks.0.out"][:])


def test_without_gradients_the_forward_stays_in_inference_mode(tmp_path, shapes_ckpt):
    model, ck = load_model(shapes_ckpt)
    ds = load_dataset("shapes:val=6,train=6", "val", 16)
    modes = []
    model.register_forward_pre_hook(lambda m, a: modes.append(
        (torch.is_inference_mode_enabled(), torch.is_grad_enabled())))
    with Dump.open(capture(model, ds, tmp_path / "a.h5", "cls", ckpt=ck)) as dump:
        assert dump.grad_hooks == [] and dump.target_spec == "pred"
        assert np.array_equal(dump.target, dump.preds)        # /target is always recorded
        assert "grads" not in dump._f
    # (a first forward of one image sizes the batch: auto_batch_size; inference mode too)
    assert modes and set(modes) == {(True, False)}, modes
    capture(model, ds, tmp_path / "b.h5", ["grad:cls"], ckpt=ck)
    assert modes[-1] == (False, True)
    assert all(p.grad is None for p in model.parameters())   # weights are left untouched


def test_dumps_for_another_target_do_not_cover(tmp_path, shapes_ckpt):
    dumps = tmp_path / "dumps"
    hooks = ["blocks.*.attn.weights", "grad:blocks.*.attn.weights"]
    path, reused = ensure_dump(shapes_ckpt, n=8, hooks=hooks, dump_dir=dumps)
    assert not reused
    assert ensure_dump(shapes_ckpt, n=8, hooks=hooks, dump_dir=dumps, target="pred") == (path, True)
    # activations alone do not depend on the target
    assert ensure_dump(shapes_ckpt, n=8, hooks=["blocks.0.attn.weights"], dump_dir=dumps,
                       target=2) == (path, True)
    other, reused = ensure_dump(shapes_ckpt, n=8, hooks=hooks, dump_dir=dumps, target=2)
    assert not reused and other != path
    with Dump.open(other) as d:
        assert d.target_spec == "2" and (d.target == 2).all()
        assert not d.covers(["grad:blocks.*.attn.weights"], 8, target="pred")
        assert not d.covers(["grad:blocks.*.out"], 8, target=2)   # not captured
        assert d.covers(["grad:blocks.1.attn.weights"], 8, target="2")


def test_bad_targets_are_one_sentence(tmp_path, shapes_ckpt):
    model, ck = load_model(shapes_ckpt)
    ds = load_dataset("shapes:val=6,train=6", "val", 16)
    for target, message in ((99, r"--target 99 is not a class of this model, which has 10 "
                                 r"classes \(0–9\)"),
                            ("best", "--target must be pred, label, a class index 0–9")):
        with pytest.raises(DumpError, match=message):
            capture(model, ds, tmp_path / "x.h5", ["grad:cls"], ckpt=ck, target=target)
    unlabeled = ds.subset(np.arange(6))
    unlabeled.labels = np.full(6, -1)
    with pytest.raises(DumpError, match="--target label needs a label for every image"):
        capture(model, unlabeled, tmp_path / "x.h5", ["grad:cls"], ckpt=ck, target="label")
    assert list(tmp_path.iterdir()) == [tmp_path / "run"]       # nothing written


def test_cli_dump_with_gradients_and_bad_target(tmp_path, shapes_ckpt):
    runner = CliRunner()
    out = tmp_path / "g.h5"
    r = runner.invoke(main, ["dump", str(shapes_ckpt), "--hooks", "blocks.*.attn.weights",
                             "--hooks", "grad:blocks.*.attn.weights", "--target", "label",
                             "--limit", "6", "-o", str(out), "-q"])
    assert r.exit_code == 0, r.output
    assert "2 hook points + 2 gradients (target label)" in r.output
    info = runner.invoke(main, ["dump", "info", str(out)])
    assert "target       label" in info.output and "grad:blocks.1.attn.weights" in info.output
    for args, message in ((["--target", "99"], "--target 99 is not a class of this model"),
                          (["--hooks", "grad:blocks.*.atn.weights"],
                           "No hook point matches 'blocks.*.atn.weights'")):
        bad = tmp_path / "bad.h5"
        r = runner.invoke(main, ["dump", str(shapes_ckpt), "--hooks", "grad:cls", "-o", str(bad),
                                 *args])
        assert r.exit_code != 0 and message in r.output and r.output.count("\n") == 1, r.output
        assert not bad.exists()


def test_merged_shards_keep_gradients_and_targets(tmp_path, shapes_ckpt):
    from vitscope.dump import merge
    model, ck = load_model(shapes_ckpt)
    ds = load_dataset("shapes:val=10,train=10", "val", 16)
    kw = dict(hooks=["cls", "grad:cls"], ckpt=ck, limit=10, target="label")
    whole = capture(model, ds, tmp_path / "w.h5", **kw)
    shards = [capture(model, ds, tmp_path / f"s{i}.h5", shard=(i, 2), **kw) for i in (0, 1)]
    merged = merge(shards, tmp_path / "m.h5")
    with Dump.open(whole) as a, Dump.open(merged) as b:
        assert b.grad_hooks == ["cls"] and b.target_spec == "label"
        np.testing.assert_array_equal(a["grad:cls"][:], b["grad:cls"][:])
        np.testing.assert_array_equal(a.target, b.target)
