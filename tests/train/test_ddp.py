"""DDP through torchrun on the CPU (gloo, 2 processes) against a single-process run."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch.distributed as dist

from vitscope.model.checkpoint import load_checkpoint

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

ARGS = ["--data", "shapes:train=1600,val=600", "--batch-size", "32", "--lr", "2e-3",
        "--device", "cpu", "--set", "warmup_epochs=0.2", "--set", "label_smoothing=0",
        "--set", "crop_padding=1", "--set", "model.image_size=16", "--set", "model.embed_dim=32",
        "--set", "model.depth=2", "--set", "model.num_heads=2", "--set", "model.mlp_ratio=2",
        "--set", "model.stem=conv", "--set", "model.stem_channels=[16,32]"]


# Asks every rank to stop (as Ctrl-C does) once global step K is reached, then runs the CLI.
STOP_AT_STEP = """
import sys
from vitscope.train import engine
K = int(sys.argv.pop(1))
train_step = engine.Trainer.train_step
def stop_at_k(self, x, targets):
    if self.global_step == K:
        self.stop_requested = True
    return train_step(self, x, targets)
engine.Trainer.train_step = stop_at_k
from vitscope.cli import main
main(prog_name="vitscope")
"""


def vitscope(tmp_path, *args, nproc=1, stop_at=None, expect=0, with_stderr=False):
    entry = ["-m", "vitscope"] if stop_at is None else [str(tmp_path / "stop_at.py"), str(stop_at)]
    if stop_at is not None:
        (tmp_path / "stop_at.py").write_text(STOP_AT_STEP)
    launcher = [sys.executable, *entry] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
         *entry]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([*launcher, "train", *args], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == expect, out.stdout + out.stderr
    return out.stdout + (out.stderr if with_stderr else "")


def metrics(run_dir):
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_torchrun_two_processes_match_one_process_and_only_rank0_writes(tmp_path):
    single = vitscope(tmp_path, *ARGS, "--epochs", "3", "--name", "single", "--quiet")
    assert single == ""
    out = vitscope(tmp_path, *ARGS, "--epochs", "3", "--name", "ddp", nproc=2)

    # Rank 0 alone reports: one header and one summary line per epoch, not two.
    assert out.count("vitscope train:") == 1 and "x2 DDP" in out
    assert [l.split()[1] for l in out.splitlines() if l.startswith("epoch ")] == ["1/3", "2/3", "3/3"]
    # ... and alone writes: exactly one run folder with one set of files, nothing elsewhere.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["ddp", "single"]
    ddp_dir = tmp_path / "runs/ddp"
    assert {p.name for p in ddp_dir.iterdir()} == {"best.pt", "last.pt", "config.json",
                                                    "metrics.jsonl", "curves.png"}
    ddp, one = metrics(ddp_dir), metrics(tmp_path / "runs/single")
    assert len(ddp) == 3 and ddp[-1]["val_acc"] > 0.2 and one[-1]["val_acc"] > 0.2
    assert abs(ddp[-1]["val_acc"] - one[-1]["val_acc"]) < 0.12  # same recipe, within noise
    last = load_checkpoint(ddp_dir / "last.pt")
    assert last.train_config["world_size"] == 2 and len(last.resume["rng"]) == 2

    # Interrupted mid-epoch 2 (step 60 of 50 per epoch) and resumed under torchrun: the same
    # weights and the same per-epoch train metrics as the uninterrupted run.
    out = vitscope(tmp_path, *ARGS, "--epochs", "3", "--name", "cut", "--quiet", nproc=2,
                   stop_at=60, expect=1, with_stderr=True)  # torchrun's status: workers gave 130
    assert out.count("Training was interrupted at epoch 2, step 11/50") == 1  # rank 0 only
    cut_dir = tmp_path / "runs/cut"
    assert load_checkpoint(cut_dir / "last.pt").resume["step_in_epoch"] == 11
    vitscope(tmp_path, "--resume", str(cut_dir / "last.pt"), "--quiet", nproc=2)
    keys = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc")
    cut = [[m[k] for k in keys] for m in metrics(cut_dir)]
    assert len(cut) == 3
    for resumed, straight in zip(cut, [[m[k] for k in keys] for m in ddp]):
        assert resumed == pytest.approx(straight, rel=1e-6)

    # Resume works under torchrun too: continue the DDP run for one more epoch.
    out = vitscope(tmp_path, "--resume", str(ddp_dir / "last.pt"), "--epochs", "4", nproc=2)
    assert [m["epoch"] for m in metrics(ddp_dir)] == [1, 2, 3, 4]
    assert load_checkpoint(ddp_dir / "last.pt").resume["epoch"] == 4
