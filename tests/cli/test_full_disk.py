"""Fault suite, a full disk: train, dump, eval and analyze writing onto a small real tmpfs
(mounted for the test where the machine allows it, as root on the CI VM), or else a per-file
size limit (RLIMIT_FSIZE) on the command's process, which fails writes the same way (EFBIG
instead of ENOSPC). Each case: exit 1, one sentence naming the folder (and, on a real disk, its
free space), no partial file left, and everything written before intact and usable."""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import uuid

import pytest

from faultkit import ROOT, cli, one_error_line, snapshot
from vitscope.model.checkpoint import load_checkpoint

TINY = ["--data", "shapes:train=64,val=32", "--batch-size", "16", "--device", "cpu",
        "--set", "model.image_size=16", "--set", "model.embed_dim=32", "--set", "model.depth=1",
        "--set", "model.num_heads=2", "--set", "model.mlp_ratio=2", "--set", "crop_padding=1",
        "--quiet"]


class SmallDisk:
    """A folder on a small file system that `fill` leaves `free` bytes on."""

    def __init__(self, root, real: bool):
        self.root, self.real, self.limit = root, real, None

    def fill(self, free: int) -> None:
        if self.real:
            avail = shutil.disk_usage(self.root).free
            with open(self.root / ".filler", "wb") as f:
                f.truncate(0)
                f.write(b"\0" * max(0, avail - free))
        else:
            self.limit = free

    def empty(self) -> None:
        (self.root / ".filler").unlink(missing_ok=True)
        self.limit = None

    def run(self, *args):
        """The CLI: in this process on a real small disk; in a child with the file size
        limit otherwise (CPython ignores SIGXFSZ, so a write past it fails with EFBIG)."""
        if self.real or self.limit is None:
            return cli(*args)
        limit = self.limit

        def limited():
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        return subprocess.run([sys.executable, "-m", "vitscope", *map(str, args)], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=300,
                              preexec_fn=limited)

    def contents(self):
        return {k: v for k, v in snapshot(self.root).items() if not k.endswith(".filler")}


@pytest.fixture
def disk(tmp_path):
    root = tmp_path / "disk"
    root.mkdir()
    # VITSCOPE_TEST_NO_TMPFS=1 tries the fallback on a machine that could mount.
    mounted = os.geteuid() == 0 and shutil.which("mount") and not os.environ.get(
        "VITSCOPE_TEST_NO_TMPFS") and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", f"vitscope-test-{uuid.uuid4().hex[:8]}",
         str(root)], capture_output=True).returncode == 0
    try:
        yield SmallDisk(root, real=bool(mounted))
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(root)], capture_output=True)


def failed_write(result, disk, *words):
    line = one_error_line(result, "Cannot write", *words, codes=(1,))
    assert (" free)" in line and "No space left on device" in line) if disk.real else \
        "File too large" in line, line
    return line


def no_temporaries(folder):
    left = [p.name for p in folder.rglob("*") if ".tmp" in p.name or p.name.endswith(".partial")]
    assert not left, left


def test_training_on_a_full_disk_keeps_last_pt_and_resumes_when_space_is_back(disk):
    assert cli("train", "--runs-dir", disk.root, "--name", "r", *TINY, "--epochs", 1).exit_code == 0
    run = disk.root / "r"
    last = (run / "last.pt").read_bytes()
    disk.fill(100_000)  # best.pt (53 kB) still fits, last.pt (163 kB) and its copy do not
    result = disk.run("train", "--resume", run / "last.pt", "--epochs", 3)
    failed_write(result, disk, f"'{run / 'last.pt'}'", "still holds epoch 1",
                 f"vitscope train --resume {run / 'last.pt'}")
    assert (run / "last.pt").read_bytes() == last           # never half written
    assert load_checkpoint(run / "last.pt").resume["epoch"] == 1
    no_temporaries(run)
    disk.empty()
    result = cli("train", "--resume", run / "last.pt", "--epochs", 3)
    assert result.exit_code == 0, result.output
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3]
    assert load_checkpoint(run / "last.pt").resume["epoch"] == 3


def test_dump_on_a_full_disk_removes_its_partial_file_and_keeps_earlier_dumps(disk, shapes_ckpt):
    earlier = disk.root / "dumps" / "earlier.h5"
    assert cli("dump", shapes_ckpt, "-o", earlier, "--limit", 4, "--hooks", "cls", "-q").exit_code == 0
    before = disk.contents()
    disk.fill(150_000)
    result = disk.run("dump", shapes_ckpt, "-o", disk.root / "dumps" / "big.h5", "--compression", "none",
                      "-q")
    failed_write(result, disk, f"'{disk.root / 'dumps' / 'big.h5'}'", "partial file was removed")
    disk.empty()
    assert disk.contents() == before                          # no big.h5, no big.h5.partial
    assert cli("dump", "info", earlier).exit_code == 0


def test_eval_on_a_full_disk_keeps_the_earlier_results(disk, shapes_ckpt):
    out = disk.root / "eval"
    assert cli("eval", shapes_ckpt, "-o", out).exit_code == 0
    before = disk.contents()
    disk.fill(20_000)  # the metrics JSON fits, the confusion PNG (50 kB) does not
    failed_write(disk.run("eval", shapes_ckpt, "-o", out, "--tta"), disk, f"nothing in '{out}' changed")
    disk.empty()
    assert disk.contents() == before
    no_temporaries(out)


def test_analyze_on_a_full_disk_is_one_sentence_and_leaves_no_empty_folder(disk, shapes_ckpt):
    dump = disk.root / "d.h5"
    assert cli("dump", shapes_ckpt, "-o", dump, "--limit", 8, "-q", "--hooks",
               "blocks.*.attn.weights,cls").exit_code == 0
    before = disk.contents()
    disk.fill(20_000)
    result = disk.run("analyze", "--dump", dump, "--plugin", "rollout", "-o", disk.root / "fig")
    failed_write(result, disk, "run analyze again")
    disk.empty()
    assert disk.contents() == before     # the dump intact, no partial figures, no empty folder
