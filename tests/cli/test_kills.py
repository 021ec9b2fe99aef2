"""Fault suite, kills: `vitscope train` SIGKILLed at many moments (no handler runs, nothing is
cleaned up) is resumed with --resume every time, and the run ends with exactly the weights and
metrics of a run that was never interrupted: README's exact-resume claim under the fault that
matters. Plus the leftovers a kill can leave (a torn metrics line, half-written temporaries),
made here on purpose."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import torch
from click.testing import CliRunner

from faultkit import ROOT
from vitscope.model.checkpoint import load_checkpoint
from vitscope.cli import main

EPOCHS = 20
KILLS = 8
TINY = ["--data", "shapes:train=64,val=32", "--batch-size", "16", "--device", "cpu",
        "--set", "model.image_size=16", "--set", "model.embed_dim=16", "--set", "model.depth=1",
        "--set", "model.num_heads=2", "--set", "model.mlp_ratio=2", "--set", "crop_padding=1",
        "--set", "augment=trivial", "--epochs", str(EPOCHS)]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vitscope", "train", *map(str, args)],
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for_training(child: subprocess.Popen) -> bool:
    """Block until the child prints its start line (data and model are ready); False if it
    exited first."""
    for line in child.stdout:
        if line.startswith("vitscope train:"):
            return True
    return False


def finish(child: subprocess.Popen, timeout=300) -> tuple[int, str]:
    out, err = child.communicate(timeout=timeout)
    return child.returncode, err


def weights(path):
    ckpt = load_checkpoint(path)
    return ckpt.state_dict, ckpt.resume


def metrics(run):
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]


def test_sigkill_at_many_moments_then_resume_gives_the_uninterrupted_run(tmp_path):
    runs = tmp_path / "runs"
    child = start("--runs-dir", runs, "--name", "whole", *TINY)
    assert wait_for_training(child)
    t0 = time.perf_counter()
    for line in child.stdout:   # one line per epoch: the time to the last is the training time
        if line.startswith(f"epoch {EPOCHS:>3}/{EPOCHS}"):
            train_seconds = time.perf_counter() - t0
    code, err = finish(child)
    assert code == 0, err

    rng = random.Random(15)
    run, kills, resumed = runs / "killed", 0, 0
    args = ["--runs-dir", runs, "--name", "killed", *TINY]
    while True:
        child = start(*args)
        if not wait_for_training(child):
            code, err = finish(child)
            if f"has already finished all {EPOCHS} epochs" in err and code == 1:
                break  # killed after its last checkpoint: the run is complete
            raise AssertionError(f"`vitscope train {' '.join(map(str, args[:2]))}` failed "
                                 f"before training (exit {code}): {err}")
        if kills < KILLS:
            # anywhere in a stretch of training: mid-step, mid-evaluation, mid-checkpoint
            # write; short enough that KILLS of them land before the run is done
            time.sleep(rng.uniform(0.0, train_seconds / 8))
            child.send_signal(signal.SIGKILL)
        code, err = finish(child)
        if code == 0:
            break
        assert code == -signal.SIGKILL, f"exit {code}: {err}"
        kills += 1
        if (run / "last.pt").exists():
            args, resumed = ["--resume", run / "last.pt"], resumed + 1
        else:  # killed before its first epoch ended: nothing to resume, start it again
            args = ["--runs-dir", runs, "--name", "killed", *TINY, "--overwrite"]
    assert kills == KILLS and resumed >= KILLS // 2, (kills, resumed)

    got, want = weights(run / "last.pt"), weights(runs / "whole" / "last.pt")
    assert got[1]["epoch"] == want[1]["epoch"] == EPOCHS
    assert got[0].keys() == want[0].keys()
    for key in want[0]:
        assert torch.equal(got[0][key], want[0][key]), key   # bit for bit
    assert [m["epoch"] for m in metrics(run)] == list(range(1, EPOCHS + 1))
    assert [m["val_acc"] for m in metrics(run)] == [m["val_acc"] for m in metrics(runs / "whole")]
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "config.json", "curves.png",
                                                     "last.pt", "metrics.jsonl"]


def test_resume_over_what_a_kill_leaves_behind(tmp_path):
    """A torn last line in metrics.jsonl (a kill while appending) and temporaries of writes
    that a kill interrupted: --resume ignores and removes them, and rewrites the metrics from
    what last.pt records."""
    runs = tmp_path / "runs"
    small = [a if a != str(EPOCHS) else "3" for a in TINY]
    run = runs / "r"
    assert CliRunner().invoke(main, ["train", "--runs-dir", str(runs), "--name", "r", *small,
                                     "--quiet"]).exit_code == 0
    lines = (run / "metrics.jsonl").read_text().splitlines()
    # epoch 3's line torn (a kill or power cut mid-append), last.pt of epoch 3 written
    _, resume = weights(run / "last.pt")
    assert resume["epoch"] == 3
    raw = torch.load(run / "last.pt", weights_only=True)
    (run / "metrics.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:25])
    (run / "last.pt.tmp").write_bytes((run / "last.pt").read_bytes()[:999])
    (run / "best.pt.tmp").write_bytes(b"PK\x03\x04")
    (run / ".curves.tmp-4242.png").write_bytes(b"\x89PNG")
    result = CliRunner().invoke(main, ["train", "--resume", str(run / "last.pt"), "--epochs", "4",
                                       "--quiet"])
    assert result.exit_code == 0, result.output
    assert [m["epoch"] for m in metrics(run)] == [1, 2, 3, 4]
    # epoch 3's line came back from last.pt's own record of it
    assert metrics(run)[2]["val_acc"] == raw["metrics"]["val_acc"]
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "config.json", "curves.png",
                                                     "last.pt", "metrics.jsonl"]
