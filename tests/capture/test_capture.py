"""Capture: atomic files under interruption, bounded memory, ensure_dump reuse, the CLI, errors."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from vitscope.capture import capture, ensure_dump
from vitscope.model.checkpoint import load_model
from vitscope.cli import main
from vitscope.data import ImageDataset, load_dataset
from vitscope.dump import Dump
from vitscope.errors import DataError, DumpError, HookError
from vitscope.model.vit import ViT

# A capture that pauses inside its third batch (two batches already handed to the writer).
PAUSING_CHILD = textwrap.dedent("""
    import sys, time, torch
    torch.set_num_threads(1)
    from vitscope.capture import capture
    from vitscope.model.checkpoint import load_model
    from vitscope.data import load_dataset
    model, ck = load_model(sys.argv[1])
    ds = load_dataset("shapes:val=48", "val", 16)
    calls = []
    def pause(module, args):
        calls.append(1)
        if len(calls) == 3:
            print("MIDWAY", flush=True)
            time.sleep(120)
    model.register_forward_pre_hook(pause)
    capture(model, ds, sys.argv[2], ckpt=ck, batch_size=4)
    print("DONE", flush=True)
""")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_killed_capture_leaves_no_dump(tmp_path, shapes_ckpt, sig):
    out = tmp_path / "out.h5"
    child = subprocess.Popen([sys.executable, "-c", PAUSING_CHILD, str(shapes_ckpt), str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "MIDWAY", child.stderr.read()
        (partial,) = tmp_path.glob(f"out.h5.*-{child.pid}-*.partial")   # unique to the process
        assert not out.exists()
        child.send_signal(sig)
        _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode != 0 and not out.exists()
    if sig == signal.SIGKILL:  # no cleanup can run: the partial file stays, but never opens
        with pytest.raises(DumpError, match="incomplete|truncated or corrupt|empty"):
            Dump.open(partial)
    else:
        assert not partial.exists(), err


def test_exception_during_capture_leaves_no_dump(tmp_path, shapes_ckpt):
    model, ck = load_model(shapes_ckpt)
    ds = load_dataset("shapes:val=48", "val", 16)
    calls = []

    def fail_third(module, args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom in batch 3")

    handle = model.register_forward_pre_hook(fail_third)
    folder = tmp_path / "dumps"
    with pytest.raises(RuntimeError, match="boom in batch 3"):
        capture(model, ds, folder / "out.h5", ckpt=ck, batch_size=4)
    assert not folder.exists()   # no partial file, and not even the folder it created
    assert all(not m._forward_hooks for m in model.modules())  # capture hooks removed
    handle.remove()
    # An existing dump survives a failed forced re-capture untouched.
    good = capture(model, ds, folder / "out.h5", "cls", ckpt=ck, limit=8)
    before = good.read_bytes()
    model.register_forward_pre_hook(lambda m, a: (_ for _ in ()).throw(RuntimeError("again")))
    with pytest.raises(RuntimeError, match="again"):
        capture(model, ds, good, ckpt=ck, force=True)
    assert good.read_bytes() == before and [p.name for p in folder.iterdir()] == ["out.h5"]


def test_write_failure_stops_the_capture(tmp_path, shapes_ckpt, monkeypatch):
    from vitscope.dump import DumpWriter
    model, ck = load_model(shapes_ckpt)
    ds = load_dataset("shapes:val=48", "val", 16)
    real_write, calls = DumpWriter.write, []

    def disk_full(self, start, arrays):
        calls.append(start)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_write(self, start, arrays)

    monkeypatch.setattr(DumpWriter, "write", disk_full)
    with pytest.raises(DumpError, match=r"Writing '.*out.h5\..*\.partial' failed \(OSError: .*No space "
                                        r"left on device\); check free disk space"):
        capture(model, ds, tmp_path / "d" / "out.h5", ckpt=ck, batch_size=4)
    assert not (tmp_path / "d").exists()


RSS_CHILD = textwrap.dedent("""
    import resource, sys
    import numpy as np, torch
    torch.set_num_threads(1)
    from vitscope.capture import capture
    from vitscope.data import ImageDataset
    from vitscope.model.vit import ModelConfig, ViT
    n = int(sys.argv[2])
    torch.manual_seed(0)
    model = ViT(ModelConfig(image_size=16, patch_size=4, embed_dim=64, depth=2, num_heads=4,
                            num_classes=10)).eval()
    images = np.random.default_rng(0).integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    ds = ImageDataset(images=images, labels=np.zeros(n, np.int64), classes=[], masks=None,
                      spec="random", split="val", paths=None)
    kw = dict(dtype="float32", compression="none", batch_size=64)
    capture(model, ds, sys.argv[1] + ".warmup.h5", limit=128, **kw)  # one-time allocations
    capture(model, ds, sys.argv[1], **kw)
    # VmHWM: this process image's own peak (ru_maxrss survives exec, so a child of a
    # large pytest process would report the parent's size)
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")]
    print(int(hwm[0].split()[1]) // 1024 if hwm else
          resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)  # MiB
""")


def test_peak_memory_does_not_grow_with_the_number_of_images(tmp_path):
    def peak_mib(n):
        out = tmp_path / f"{n}.h5"
        res = subprocess.run([sys.executable, "-c", RSS_CHILD, str(out), str(n)],
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        with Dump.open(out) as d:
            per_image = sum(d[h][0].nbytes for h in d.hooks) / 2**20
        return int(res.stdout.split()[-1]), per_image

    small, per_image = peak_mib(600)
    large, _ = peak_mib(2400)
    held_if_unbounded = 1800 * per_image  # what keeping every activation would add (~120 MiB)
    assert held_if_unbounded > 80
    assert large - small < 24, (small, large)


def test_ensure_dump_reuses_a_covering_dump(tmp_path, shapes_ckpt, monkeypatch):
    dumps = tmp_path / "dumps"
    path, reused = ensure_dump(shapes_ckpt, n=16, hooks=["cls", "blocks.*.attn.weights"],
                               dump_dir=dumps)
    assert not reused and path.parent == dumps and path.name.startswith("run-val-16-")
    with Dump.open(path) as d:
        assert len(d) == 16 and d.attrs["dataset"] == "shapes:val=48"
        assert d.attrs["normalize"] == {"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]}
    (dumps / "junk.h5").write_text("not a dump")  # ignored, not fatal

    def forward_must_not_run(self, x):
        raise AssertionError("the model ran")

    monkeypatch.setattr(ViT, "forward", forward_must_not_run)
    assert ensure_dump(shapes_ckpt, n=8, hooks=["blocks.1.attn.weights"], dump_dir=dumps) == (path, True)
    with pytest.raises(AssertionError, match="the model ran"):  # not covered: more hooks
        ensure_dump(shapes_ckpt, n=8, hooks=["blocks.*.out"], dump_dir=dumps)
    with pytest.raises(AssertionError, match="the model ran"):  # not covered: more images
        ensure_dump(shapes_ckpt, n=17, hooks=["cls"], dump_dir=dumps)
    monkeypatch.undo()
    other, reused = ensure_dump(shapes_ckpt, n=100, hooks=["cls"], dump_dir=dumps)
    assert not reused and other != path
    with Dump.open(other) as d:
        assert len(d) == 48  # the whole split, which then covers any n
    assert ensure_dump(shapes_ckpt, n=1000, hooks=["cls"], dump_dir=dumps) == (other, True)
    assert not list(dumps.glob("*.partial"))


def test_capture_errors(tmp_path, shapes_ckpt, tiny_ckpt):
    with pytest.raises(DumpError, match="does not record the dataset it was trained on; pass --data"):
        ensure_dump(tiny_ckpt, dump_dir=tmp_path)
    model, ck = load_model(shapes_ckpt)
    ds = load_dataset("shapes:val=48", "val", 16)
    out = tmp_path / "x.h5"
    with pytest.raises(HookError, match=r"No hook point matches 'blocks\.\*\.atn\.weights'.*"
                                        r"Available: patch_embed\.out"):
        capture(model, ds, out, ["blocks.*.atn.weights"], ckpt=ck)
    with pytest.raises(DumpError, match="--limit must be a positive"):
        capture(model, ds, out, ckpt=ck, limit=0)
    big = load_dataset("shapes:val=8", "val", 24)
    with pytest.raises(DumpError, match="has 24×24 images but the model expects 16×16"):
        capture(model, big, out, ckpt=ck)
    with pytest.raises(DumpError, match="--shard 2/2 is out of range"):
        capture(model, ds, out, ckpt=ck, shard="2/2")
    with pytest.raises(DumpError, match="must look like i/n"):
        capture(model, ds, out, ckpt=ck, shard="half")
    with pytest.raises(DumpError, match="Shard 0/4 of 3 images is empty"):
        capture(model, ds, out, ckpt=ck, limit=3, shard="0/4")
    capture(model, ds, out, "cls", ckpt=ck, limit=4)
    with pytest.raises(DumpError, match="already exists; pass --force"):
        capture(model, ds, out, "cls", ckpt=ck, limit=4)
    capture(model, ds, out, "cls", ckpt=ck, limit=5, force=True)
    with Dump.open(out) as d:
        assert len(d) == 5
    assert sorted(p.name for p in tmp_path.glob("x.h5*")) == ["x.h5"]


def test_labels_are_mapped_onto_the_model_classes(tmp_path, shapes_ckpt):
    model, ck = load_model(shapes_ckpt)
    ds = load_dataset("shapes:val=20", "val", 16)
    names = list(ds.classes)
    ds.classes = names[::-1]  # the same classes listed in another order
    with Dump.open(capture(model, ds, tmp_path / "x.h5", "cls", ckpt=ck)) as d:
        assert d.labels.tolist() == [names.index(ds.classes[i]) for i in ds.labels[d.indices]]
        assert d.attrs["dataset_classes"] == ds.classes


def run_cli(*args, env=None):
    return CliRunner().invoke(main, ["dump", *map(str, args)], env=env)


def test_cli_dump_merge_and_info(tmp_path, shapes_ckpt, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = run_cli(shapes_ckpt, "--limit", 12, "-q")
    assert res.exit_code == 0, res.output
    default = tmp_path / "outputs" / "dumps" / "run-val-12.h5"
    assert f"Wrote {default.relative_to(tmp_path)}: 12 images" in res.output
    with Dump.open(default) as d:
        per_block = ["norm1.in", "norm1.out", "attn.weights", "attn.out", "norm2.in", "norm2.out",
                     "out"]
        want = (["patch_embed.out"] + [f"blocks.{i}.{h}" for i in (0, 1) for h in per_block]
                + ["norm.out", "cls"])
        assert d.hooks == want and d.attrs["dtype"] == "float16"

    res = run_cli(shapes_ckpt, "--hooks", "cls,blocks.*.attn.weights", "--hooks", "norm.out",
                  "--dtype", "float32", "--compression", "gzip", "--split", "train",
                  "--data", "shapes:train=30", "--limit", 10, "-o", "c.h5", "-q")
    assert res.exit_code == 0, res.output
    with Dump.open("c.h5") as d:
        assert d.hooks == ["blocks.0.attn.weights", "blocks.1.attn.weights", "norm.out", "cls"]
        assert d["cls"].dtype == np.float32 and d["cls"].compression == "gzip"
        assert (d.attrs["dataset"], d.attrs["split"], len(d)) == ("shapes:train=30", "train", 10)

    for i in (0, 1):
        res = run_cli(shapes_ckpt, "--hooks", "cls", "--limit", 9, "--shard", f"{i}/2", "-q")
        assert res.exit_code == 0, res.output
    assert "dump merge outputs/dumps/run-val-9-shard*of2.h5 -o outputs/dumps/run-val-9.h5" in res.output
    shards = sorted((tmp_path / "outputs" / "dumps").glob("run-val-9-shard*"))
    res = run_cli("merge", *shards, "-o", "merged.h5")
    assert res.exit_code == 0 and "9 images from 2 shards" in res.output, res.output
    res = run_cli("info", "merged.h5")
    assert res.exit_code == 0 and "merged from 2 shards" in res.output and "cls" in res.output
    assert "float16, virtual datasets," in res.output and "lzf on" not in res.output

    # Under torchrun (WORLD_SIZE > 1) each rank writes its own shard without --shard.
    res = run_cli(shapes_ckpt, "--hooks", "cls", "-o", "tr.h5", "-q",
                  env={"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"})
    assert res.exit_code == 0, res.output
    with Dump.open("tr-shard1of2.h5") as d:
        assert d.attrs["shard"] == {"index": 1, "count": 2, "start": 24, "stop": 48, "total": 48}


@pytest.mark.parametrize("args,message", [
    (["--limit", "0"], "--limit must be a positive number of images, got 0"),
    (["--hooks", "blocks.*.atn.weights"], "No hook point matches 'blocks.*.atn.weights'"),
    (["--shard", "5/2"], "--shard 5/2 is out of range"),
    (["--data", "shapez"], "Unknown dataset 'shapez'. Did you mean 'shapes'?"),
])
def test_cli_errors(tmp_path, shapes_ckpt, args, message):
    res = run_cli(shapes_ckpt, *args, "-o", tmp_path / "x.h5", "-q")
    assert res.exit_code == 1 and f"Error: {message}" in res.output, res.output
    assert "Traceback" not in res.output and not (tmp_path / "x.h5").exists()


def test_cli_refuses_existing_output_and_non_dumps(tmp_path, shapes_ckpt):
    out = tmp_path / "x.h5"
    assert run_cli(shapes_ckpt, "--hooks", "cls", "--limit", 3, "-o", out, "-q").exit_code == 0
    res = run_cli(shapes_ckpt, "--hooks", "cls", "--limit", 3, "-o", out, "-q")
    assert res.exit_code == 1 and "already exists; pass --force" in res.output
    assert run_cli(shapes_ckpt, "--hooks", "cls", "--limit", 4, "-o", out, "-q", "--force").exit_code == 0
    res = run_cli("info", shapes_ckpt)
    assert res.exit_code == 1 and "is not an HDF5 file, so it is not a vitscope dump" in res.output
    res = run_cli("merge", out, "-o", tmp_path / "m.h5")
    assert res.exit_code == 1 and "is not a shard" in res.output


def test_cli_help_shows_both_usages():
    res = CliRunner().invoke(main, ["dump", "--help"], prog_name="vitscope")
    assert res.exit_code == 0
    assert "vitscope dump CKPT [OPTIONS]" in res.output
    assert "vitscope dump merge SHARD.h5... -o OUT.h5" in res.output
    for option in ("--data", "--limit", "--hooks", "--shard", "--dtype", "--compression", "--force"):
        assert option in res.output
    assert "dump" in CliRunner().invoke(main, ["--help"]).output


def test_capture_needs_no_checkpoint(tmp_path, tiny_vit):
    """During training: metadata from model.cfg, `classes` and `normalize`; no hash."""
    images = np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    ds = ImageDataset(images=images, labels=np.full(6, -1), classes=[], masks=None,
                      spec="folder:/x", split="val", paths=None)
    path = capture(tiny_vit, ds, tmp_path / "t.h5", ["cls"], classes=list("abcde"),
                   normalize=([0.1] * 3, [0.2] * 3), seed=None)
    with Dump.open(path) as d:
        assert d.attrs["checkpoint_sha256"] == "" and d.classes == list("abcde")
        assert d.labels.tolist() == [-1] * 6 and d.masks is None
        assert d.indices.tolist() == list(range(6)) and d.attrs["order"] == "split"
        x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - 0.1) / 0.2
        np.testing.assert_allclose(d.logits[:], tiny_vit(x).detach().numpy(), rtol=1e-5, atol=1e-6)
        assert json.loads(json.dumps(d.attrs["token_layout"]))["grid"] == [4, 4]


def test_a_dump_is_reused_only_for_the_same_pixels(tmp_path, shapes_ckpt, monkeypatch):
    """The spec string `folder:PATH` stays the same when files under PATH change; the data
    fingerprint does not, so the stale dump is not reused."""
    from PIL import Image
    monkeypatch.setenv("VITSCOPE_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("circle", "square"):
            (root / split / c).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
                    root / split / c / f"{i}.png")
    spec, dumps = f"folder:{root}", tmp_path / "dumps"
    first, reused = ensure_dump(shapes_ckpt, data=spec, n=6, hooks=["cls"], dump_dir=dumps)
    assert not reused
    assert ensure_dump(shapes_ckpt, data=spec, n=6, hooks=["cls"], dump_dir=dumps) == (first, True)
    with Dump.open(first) as d:
        assert d.attrs["data_sha256"] == load_dataset(spec, "val", 16).fingerprint()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "val" / "circle" / "1.png")
    second, reused = ensure_dump(shapes_ckpt, data=spec, n=6, hooks=["cls"], dump_dir=dumps)
    assert not reused and second != first
    # The data moved away: a dump that matches in everything else still serves, with a warning.
    root.rename(tmp_path / "moved")
    with pytest.warns(UserWarning, match="without re-checking its images"):
        assert ensure_dump(shapes_ckpt, data=spec, n=6, hooks=["cls"], dump_dir=dumps)[1]
    with pytest.raises(DataError, match="does not exist"):       # nothing to reuse: the error
        ensure_dump(shapes_ckpt, data=spec, n=6, hooks=["norm.out"], dump_dir=dumps)


def test_analyze_reuses_what_vitscope_dump_wrote(tmp_path, shapes_ckpt, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_cli(shapes_ckpt, "--hooks", "cls", "-q").exit_code == 0   # the whole split: 48
    made = Path("outputs/dumps/run-val-48.h5")
    assert made.is_file()
    assert ensure_dump(shapes_ckpt, n=20, hooks=["cls"]) == (made, True)


def test_shards_named_with_o_get_their_own_files(tmp_path, shapes_ckpt):
    out = tmp_path / "s.h5"
    for i in (0, 1):
        res = run_cli(shapes_ckpt, "--hooks", "cls", "--limit", 10, "--shard", f"{i}/2", "-o", out, "-q")
        assert res.exit_code == 0, res.output
    assert f"vitscope dump merge {tmp_path}/s-shard*of2.h5 -o {out}" in res.output
    assert sorted(p.name for p in tmp_path.glob("s*.h5")) == ["s-shard0of2.h5", "s-shard1of2.h5"]
    # a name that already carries the suffix is kept as it is
    res = run_cli(shapes_ckpt, "--hooks", "cls", "--limit", 10, "--shard", "1/2", "-o",
                  tmp_path / "t-shard1of2.h5", "-q")
    assert res.exit_code == 0 and (tmp_path / "t-shard1of2.h5").is_file(), res.output
    assert f"-o {tmp_path}/t.h5" in res.output


def test_cli_dump_bad_device_and_output_path(tmp_path, shapes_ckpt):
    res = run_cli(shapes_ckpt, "--device", "tpu", "-q")
    assert res.exit_code == 1 and "Error: Unknown device 'tpu'; use one of auto" in res.output
    if not torch.cuda.is_available():
        res = run_cli(shapes_ckpt, "--device", "cuda:1", "-q")
        assert res.exit_code == 1 and "sees no CUDA GPU; use --device cpu" in res.output
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    res = run_cli(shapes_ckpt, "--hooks", "cls", "-o", blocker / "x.h5", "-q")
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert f"Error: Cannot write to the folder '{blocker}' (" in res.output
    assert blocker.read_text() == "not a folder"


def test_dump_info_shows_the_filter_each_hook_got(tmp_path, shapes_ckpt):
    out = tmp_path / "x.h5"
    assert run_cli(shapes_ckpt, "--limit", 16, "-o", out, "-q").exit_code == 0
    res = run_cli("info", out)
    assert res.exit_code == 0, res.output
    with Dump.open(out) as d:
        filters = {h: d[h].compression or "raw" for h in d.hooks if h not in d.derived}
        derived = {h: s["source"] for h, s in d.derived.items()}
    lines = {l.split()[0]: l for l in res.output.splitlines() if l.startswith("  ")}
    for hook, used in filters.items():
        assert lines[hook].rstrip().endswith(used), lines[hook]
    for hook, source in derived.items():   # computed on read (vitscope.dump.derive), not stored
        assert lines[hook].rstrip().endswith(f"derived: layer_norm of {source}"), lines[hook]
    assert set(filters.values()) <= {"lzf", "raw"}
    if "raw" in filters.values():
        assert f"lzf on {sum(f == 'lzf' for f in filters.values())} of {len(filters)}" in res.output


def test_the_training_data_of_a_checkpoint_is_named_when_it_is_gone(tmp_path, monkeypatch):
    from vitscope.model.checkpoint import save_checkpoint
    from vitscope.model.vit import ModelConfig
    monkeypatch.chdir(tmp_path)
    model = ViT(ModelConfig(image_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2,
                            num_classes=3)).eval()
    ckpt = save_checkpoint(tmp_path / "m.pt", model, classes=["a", "b", "c"],
                           train_config={"data": f"folder:{tmp_path / 'gone'}", "image_size": 16})
    res = run_cli(ckpt, "-q")
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert f"Error: '{ckpt}' was trained on --data folder:{tmp_path / 'gone'}, which cannot be " \
           f"loaded here (the folder" in res.output
    assert "pass --data with images of the model's classes" in res.output
    res = CliRunner().invoke(main, ["analyze", str(ckpt), "--plugin", "rollout"])
    assert res.exit_code == 1 and "was trained on --data" in res.output
    assert not (tmp_path / "outputs").exists()   # no empty output folders left behind


BATCH_RSS_CHILD = textwrap.dedent("""
    import resource, sys
    import numpy as np, torch
    torch.set_num_threads(1)
    from vitscope.capture import capture, memory
    from vitscope.data import ImageDataset
    from vitscope.model.vit import ModelConfig, ViT
    torch.manual_seed(0)
    model = ViT(ModelConfig(image_size=64, patch_size=4, embed_dim=32, depth=2, num_heads=2,
                            num_classes=10)).eval()          # 257 tokens: attention dominates
    images = np.random.default_rng(0).integers(0, 256, (64, 64, 64, 3), dtype=np.uint8)
    ds = ImageDataset(images=images, labels=np.zeros(64, np.int64), classes=[], masks=None,
                      spec="random", split="val", paths=None)
    hooks = ["blocks.*.attn.weights", "grad:blocks.*.attn.weights"]
    memory.BATCH_MEMORY = int(sys.argv[2])
    batch = None if sys.argv[3] == "auto" else int(sys.argv[3])
    capture(model, ds, sys.argv[1], hooks, batch_size=batch, compression="none")
    # VmHWM: this process image's own peak (ru_maxrss survives exec, so a child of a
    # large pytest process would report the parent's size)
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")]
    print(int(hwm[0].split()[1]) // 1024 if hwm else
          resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)  # MiB
""")


def test_the_automatic_batch_keeps_a_gradient_capture_within_its_memory(tmp_path, monkeypatch):
    """At 257 tokens with attention gradients, 64 images a batch hold hundreds of MB; the
    automatic batch (BATCH_MEMORY) holds a few images and gives the same dump."""
    import vitscope.capture as C
    from vitscope.model.vit import ModelConfig
    model = ViT(ModelConfig(image_size=64, patch_size=4, embed_dim=32, depth=2, num_heads=2,
                            num_classes=10)).eval()
    names, grads = C.resolve_request(model, ["blocks.*.attn.weights", "grad:blocks.*.attn.weights"])
    per_image = C.capture_bytes_per_image(model, names, grads)
    attention = 2 * 2 * 257 * 257 * 4                 # blocks × heads × T × T, float32
    assert 2 * attention <= per_image <= 12 * attention
    assert C.capture_bytes_per_image(model, names, []) < per_image   # no graph without grads
    assert C.auto_batch_size(model, names, grads, budget=3 * per_image) == 3
    assert C.auto_batch_size(model, names, grads, budget=1) == 1
    assert C.auto_batch_size(model, ["cls"], []) == C.DEFAULT_BATCH   # small: capped at 64

    budget = 4 * per_image
    peaks = {}
    for batch in ("auto", "64"):
        res = subprocess.run([sys.executable, "-c", BATCH_RSS_CHILD, str(tmp_path / f"{batch}.h5"),
                              str(budget), batch], capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        peaks[batch] = int(res.stdout.split()[-1])
    # 64 images a batch hold about 60 × per_image more (~280 MB) than 4 do.
    assert peaks["64"] - peaks["auto"] > 40 * per_image / 2**20 / 2, peaks
    with Dump.open(tmp_path / "auto.h5") as a, Dump.open(tmp_path / "64.h5") as b:
        for name in a.names:
            np.testing.assert_allclose(a[name][:], b[name][:], rtol=1e-3, atol=1e-6)
        np.testing.assert_allclose(a["grad:blocks.1.attn.weights"][:],
                                   b["grad:blocks.1.attn.weights"][:], rtol=1e-2, atol=1e-6)
