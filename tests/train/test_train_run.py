"""`vitscope train` end to end on small real shapes runs: outputs, resume, faults, CNN."""
from __future__ import annotations

import json
import os
import re
import signal
import sys

import pytest
import torch
from click.testing import CliRunner

from vitscope.model.checkpoint import load_checkpoint, load_model
from vitscope.cli import main
from vitscope.errors import TrainingInterrupted
from vitscope.train import engine
from vitscope.train.config import make_config, parse_sets
from vitscope.train.runner import run

# A ViT small enough for seconds per epoch on a 2-core CPU, on 16-pixel shapes. ViTs need a
# few hundred steps to leave chance level here, hence small batches.
MODEL = ["--set", "model.image_size=16", "--set", "model.embed_dim=32", "--set", "model.depth=1",
         "--set", "model.num_heads=2", "--set", "model.mlp_ratio=2", "--set", "model.stem=conv",
         "--set", "model.stem_channels=[16,32]", "--set", "crop_padding=1",
         "--set", "label_smoothing=0", "--set", "warmup_epochs=0.2"]
TINY = ["--data", "shapes:train=400,val=100", "--batch-size", "16", "--lr", "1e-3",
        "--device", "cpu", *MODEL]


def train(tmp_path, *args, data="shapes:train=400,val=100"):
    return CliRunner().invoke(main, ["train", "--runs-dir", str(tmp_path / "runs"), *TINY,
                                     "--data", data, *map(str, args)])


def metrics(run_dir):
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_epochs_beat_chance_and_write_every_output(tmp_path):
    res = train(tmp_path, "--epochs", 2, "--name", "vit", data="shapes:train=4000,val=400")
    assert res.exit_code == 0, res.output
    run_dir = tmp_path / "runs" / "vit"
    assert {p.name for p in run_dir.iterdir()} == {"best.pt", "last.pt", "config.json",
                                                   "metrics.jsonl", "curves.png"}
    lines = metrics(run_dir)
    assert [m["epoch"] for m in lines] == [1, 2]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s", "seconds"):
        assert all(isinstance(m[key], float) for m in lines), key
    assert lines[-1]["val_acc"] > 0.25  # chance is 0.10 on ten classes (400 val images)
    assert "epoch   2/2" in res.output and "best val_acc" in res.output

    model, ck = load_model(run_dir / "best.pt")
    tc = ck.train_config
    assert tc["data"] == "shapes:train=4000,val=400" and tc["image_size"] == 16
    assert set(tc["normalize"]) == {"mean", "std"} and len(tc["normalize"]["mean"]) == 3
    assert tc["epochs"] == 2 and tc["model"]["stem_channels"] == [16, 32]  # the full TrainConfig
    assert ck.metrics["val_acc"] == max(m["val_acc"] for m in lines) and "epoch" in ck.metrics
    assert ck.classes[:3] == ["disk", "square", "triangle"] and ck.resume is None
    last = load_checkpoint(run_dir / "last.pt")
    assert last.resume["epoch"] == 2 and "optimizer" in last.resume
    assert json.loads((run_dir / "config.json").read_text())["normalize"] == tc["normalize"]
    import torch
    assert tc["cpu_threads"] == torch.get_num_threads() >= 1   # the result depends on it


def test_quiet_prints_nothing_and_existing_run_folder_is_never_overwritten(tmp_path):
    res = train(tmp_path, "--epochs", 1, "--name", "x", "--quiet")
    assert res.exit_code == 0 and res.output == ""
    before = (tmp_path / "runs/x/best.pt").read_bytes()
    res = train(tmp_path, "--epochs", 1, "--name", "x")
    assert res.exit_code == 1
    assert "already exists" in res.output and "--overwrite" in res.output
    assert "--resume" in res.output and "--name" in res.output and "Traceback" not in res.output
    assert (tmp_path / "runs/x/best.pt").read_bytes() == before
    res = train(tmp_path, "--epochs", 1, "--name", "x", "--quiet", "--overwrite", "--seed", 1)
    assert res.exit_code == 0 and (tmp_path / "runs/x/best.pt").read_bytes() != before


def tiny_config(tmp_path, name, **extra):
    sets = [a for a in MODEL if a != "--set"]
    return make_config(overrides={**parse_sets(sets), "data": "shapes:train=400,val=100",
                                  "batch_size": 16, "device": "cpu", "lr": 1e-3, "quiet": True,
                                  "runs_dir": str(tmp_path / "runs"), "name": name, **extra})


def assert_same_weights(a, b):
    sa, sb = load_checkpoint(a).state_dict, load_checkpoint(b).state_dict
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], atol=1e-6, rtol=0, msg=k)


def test_resume_after_a_signal_at_epoch_end_equals_an_uninterrupted_run(tmp_path):
    extra = dict(epochs=2, ema=True, augment="trivial", mixup_alpha=0.2, cutmix_alpha=1.0)
    run(tiny_config(tmp_path, "full", **extra))

    def interrupt(model, epoch, run_dir):  # a real SIGINT, delivered at the end of epoch 1
        assert not model.training  # callbacks get the eval-mode model
        os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted, match="--resume"):
        run(tiny_config(tmp_path, "part", **extra), callbacks=[interrupt])
    part = tmp_path / "runs/part"
    assert load_checkpoint(part / "last.pt").resume["epoch"] == 1
    res = CliRunner().invoke(main, ["train", "--resume", str(part / "last.pt"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert_same_weights(tmp_path / "runs/full/last.pt", part / "last.pt")
    assert [m["epoch"] for m in metrics(part)] == [1, 2]
    assert metrics(part)[1]["val_acc"] == metrics(tmp_path / "runs/full")[1]["val_acc"]


def test_resume_in_the_middle_of_an_epoch_is_exact(tmp_path, monkeypatch):
    run(tiny_config(tmp_path, "full", epochs=2, augment="randaugment", randaug_ops=2))
    real_step = engine.Trainer.train_step

    def step_then_signal(self, x, targets):
        out = real_step(self, x, targets)
        if self.global_step == 30:  # the 31st step: epoch 2, batch 6 of 25
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(engine.Trainer, "train_step", step_then_signal)
    with pytest.raises(TrainingInterrupted, match="epoch 2, step 6/25"):
        run(tiny_config(tmp_path, "part", epochs=2, augment="randaugment", randaug_ops=2))
    monkeypatch.setattr(engine.Trainer, "train_step", real_step)
    last = tmp_path / "runs/part/last.pt"
    assert load_checkpoint(last).resume["step_in_epoch"] == 6
    res = CliRunner().invoke(main, ["train", "--resume", str(last), "--quiet"])
    assert res.exit_code == 0, res.output
    assert_same_weights(tmp_path / "runs/full/last.pt", last)


def test_resume_rejects_weights_only_files_finished_runs_and_changed_settings(tmp_path):
    run(tiny_config(tmp_path, "r", epochs=1))
    runner = CliRunner()
    res = runner.invoke(main, ["train", "--resume", str(tmp_path / "runs/r/best.pt")])
    assert res.exit_code == 1 and "no resume state" in res.output and "last.pt" in res.output
    res = runner.invoke(main, ["train", "--resume", str(tmp_path / "runs/r/last.pt")])
    assert res.exit_code == 1 and "already finished all 1 epochs" in res.output
    res = runner.invoke(main, ["train", "--resume", str(tmp_path / "runs/r/last.pt"), "--lr", "1"])
    assert res.exit_code == 1 and "lr cannot change" in res.output


def poison_loss(monkeypatch, from_step):
    """From global step `from_step` on, the loss is NaN (as when a run explodes)."""
    real_step = engine.Trainer.train_step

    def step(self, x, targets):
        loss, logits = real_step(self, x, targets)
        return (loss * float("nan") if self.global_step >= from_step else loss), logits

    monkeypatch.setattr(engine.Trainer, "train_step", step)


@pytest.mark.parametrize("save_every, kept", [
    (1, r"runs/nan/last\.pt still holds epoch 1;"),
    (2, r"no last\.pt was written yet \(\S+runs/nan/best\.pt holds epoch 1\);"),
])
def test_nan_loss_stops_naming_step_and_lr_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch,
                                                                               save_every, kept):
    poison_loss(monkeypatch, 25 + 3)  # 400 images in batches of 16: the 4th step of epoch 2
    res = train(tmp_path, "--epochs", 3, "--name", "nan", "--set", f"save_every={save_every}")
    assert res.exit_code == 1, res.output
    assert re.search(r"NaN or infinite at step 28 \(epoch 2, lr 0\.000\d+\)", res.output), res.output
    assert re.search(kept, res.output), res.output
    assert "Traceback" not in res.output
    run_dir = tmp_path / "runs/nan"
    assert [m["epoch"] for m in metrics(run_dir)] == [1]
    assert load_checkpoint(run_dir / "best.pt").metrics["epoch"] == 1
    if save_every == 1:
        assert load_checkpoint(run_dir / "last.pt").resume["epoch"] == 1
    else:
        assert not (run_dir / "last.pt").exists()
    for path in run_dir.glob("*.pt"):  # what was saved before the blow-up holds finite weights
        assert all(torch.isfinite(v).all() for v in load_checkpoint(path).state_dict.values()
                   if v.is_floating_point()), path


def test_cnn_baseline_trains_through_the_same_pipeline(tmp_path):
    res = CliRunner().invoke(main, [
        "train", "--model", "cnn", "--set", "model.channels=[16,32]", "--set", "model.image_size=16",
        "--data", "shapes:train=2000,val=400", "--epochs", "2", "--batch-size", "16", "--lr", "2e-3",
        "--device", "cpu", "--runs-dir", str(tmp_path / "runs"), "--name", "cnn", "--quiet"])
    assert res.exit_code == 0, res.output
    model, ck = load_model(tmp_path / "runs/cnn/best.pt")
    assert ck.arch == "cnn" and type(model).__name__ == "SmallCNN"
    assert ck.metrics["val_acc"] > 0.3


@pytest.mark.parametrize("logger, module", [("wandb", "wandb"), ("tensorboard", "torch.utils.tensorboard")])
def test_missing_logger_package_fails_before_training_with_the_install_command(tmp_path, monkeypatch,
                                                                                logger, module):
    monkeypatch.setitem(sys.modules, module, None)  # as if the package were not installed
    res = train(tmp_path, "--epochs", 1, "--name", "log", "--log", logger)
    assert res.exit_code == 1
    assert f"--log {logger} needs the {logger} package" in res.output
    assert f"pip install {logger}" in res.output and not (tmp_path / "runs/log").exists()


def test_tensorboard_and_wandb_offline_logging(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    pytest.importorskip("torch.utils.tensorboard")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    res = train(tmp_path, "--epochs", 1, "--name", "log", "--log", "tensorboard", "--log", "wandb",
                "--quiet")
    assert res.exit_code == 0, res.output
    run_dir = tmp_path / "runs/log"
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))


def test_analyze_every_renders_plugins_at_those_epochs_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # analyses go to ./outputs/<run>/epoch_XXX
    res = train(tmp_path, "--epochs", 2, "--name", "an", "--analyze-every", 2, "--plugin", "rollout",
                "--quiet")
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "outputs/an/epoch_001").exists()
    assert list((tmp_path / "outputs/an/epoch_002/rollout").glob("*.png"))


def test_analyze_flags_are_checked_and_a_broken_analysis_module_is_one_error(tmp_path, monkeypatch):
    res = train(tmp_path, "--epochs", 1, "--plugin", "rollout")
    assert res.exit_code == 1 and "--plugin runs only with --analyze-every" in res.output
    res = train(tmp_path, "--epochs", 1, "--analyze-every", 1)
    assert res.exit_code == 1 and "needs at least one --plugin" in res.output
    monkeypatch.setitem(sys.modules, "vitscope.analyze.epochs", None)
    res = train(tmp_path, "--epochs", 1, "--name", "x", "--analyze-every", 1, "--plugin", "rollout")
    assert res.exit_code == 1 and "needs vitscope.analyze.epochs" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "runs/x").exists()


def test_patience_stops_early_and_says_so(tmp_path):
    # A learning rate too small to change predictions (and no BatchNorm statistics in a patch
    # stem): val_acc never improves after epoch 1.
    res = train(tmp_path, "--epochs", 6, "--name", "pat", "--patience", 2, "--lr", "1e-12",
                "--set", "model.stem=patch")
    assert res.exit_code == 0, res.output
    assert [m["epoch"] for m in metrics(tmp_path / "runs/pat")] == [1, 2, 3]
    assert "early stop: no better val_acc for 2 epochs" in res.output
    assert load_checkpoint(tmp_path / "runs/pat/last.pt").resume["epoch"] == 3
