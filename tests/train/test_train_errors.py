"""`vitscope train` failing before it starts (no empty run folder, a --runs-dir that is a file),
--quiet silencing wandb, and overwriting a checkpoint; small real runs through the real CLI."""
from __future__ import annotations

import os

import pytest
import torch
from click.testing import CliRunner

from vitscope.model.checkpoint import load_checkpoint, save_checkpoint
from vitscope.cli import main
from vitscope.train import engine

# A one-block ViT on 16-pixel shapes: one epoch takes about a second on a 2-core CPU.
TINY = ["--device", "cpu", "--batch-size", "16", "--epochs", "1",
        "--set", "model.image_size=16", "--set", "model.embed_dim=32", "--set", "model.depth=1",
        "--set", "model.num_heads=2", "--set", "model.mlp_ratio=2", "--set", "crop_padding=1"]
DATA = "shapes:train=64,val=32"


def train(runs_dir, *args, data=DATA):
    return CliRunner().invoke(main, ["train", "--runs-dir", str(runs_dir), *TINY, "--data", data,
                                     *map(str, args)])


@pytest.mark.parametrize("args", [
    ["--data", "shapes:bogus=3"],      # a bad dataset spec, found while loading the data
    ["--batch-size", "512"],           # larger than the 64 training images, found after loading
])
def test_a_run_that_fails_to_start_leaves_no_run_folder(tmp_path, args):
    res = train(tmp_path / "runs", "--name", "x", *args)
    assert res.exit_code == 1 and res.output.startswith("Error:"), res.output
    assert not (tmp_path / "runs" / "x").exists()


def test_a_failed_start_keeps_folders_that_existed_before(tmp_path):
    empty = tmp_path / "runs" / "empty"
    empty.mkdir(parents=True)  # an empty folder may be reused, and is not ours to delete
    res = train(tmp_path / "runs", "--name", "empty", data="shapes:bogus=3")
    assert res.exit_code == 1 and empty.is_dir()

    old = tmp_path / "runs" / "old"
    old.mkdir()
    (old / "best.pt").write_bytes(b"an earlier run")
    res = train(tmp_path / "runs", "--name", "old", "--overwrite", data="shapes:bogus=3")
    assert res.exit_code == 1  # --overwrite replaces the old run only once the new one can start
    assert (old / "best.pt").read_bytes() == b"an earlier run"

    res = train(tmp_path / "runs", "--name", "old", "--overwrite", "--quiet")
    assert res.exit_code == 0, res.output
    assert load_checkpoint(old / "best.pt").resume is None and (old / "last.pt").is_file()


# A learning rate that overflows the weights at the first optimizer steps: a value that passes
# every check and fails only once training runs.
BLOWS_UP = ["--lr", "1e30", "--set", "grad_clip=0", "--set", "warmup_epochs=0"]


def files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def fail_step(monkeypatch, from_step, error=None):
    """Make every training step from global step `from_step` on fail: with `error`, by raising
    it; else by turning the loss into NaN (as an exploding run does)."""
    real_step = engine.Trainer.train_step

    def step(self, x, targets):
        if self.global_step >= from_step and error is not None:
            raise error
        loss, logits = real_step(self, x, targets)
        return (loss * float("nan") if self.global_step >= from_step else loss), logits

    monkeypatch.setattr(engine.Trainer, "train_step", step)


def test_a_run_that_fails_in_its_first_epoch_removes_its_folder_so_the_retry_starts(tmp_path):
    runs = tmp_path / "runs"
    res = train(runs, "--name", "x", *BLOWS_UP)
    assert res.exit_code == 1 and "NaN or infinite at step" in res.output, res.output
    assert "no checkpoint was written" in res.output and "Traceback" not in res.output
    assert not (runs / "x").exists()  # no config.json / metrics.jsonl left to block the retry
    res = train(runs, "--name", "x", "--quiet")
    assert res.exit_code == 0, res.output

    (runs / "empty").mkdir()  # reused, so emptied again rather than removed
    res = train(runs, "--name", "empty", *BLOWS_UP)
    assert res.exit_code == 1 and (runs / "empty").is_dir() and not any((runs / "empty").iterdir())


@pytest.mark.parametrize("failure", ["step raises", "loss NaN"])
def test_overwrite_keeps_the_old_run_when_the_new_one_fails_before_its_first_checkpoint(
        tmp_path, monkeypatch, failure):
    runs = tmp_path / "runs"
    assert train(runs, "--name", "old", "--quiet").exit_code == 0
    before = files(runs / "old")
    assert {"best.pt", "last.pt", "config.json", "metrics.jsonl"} <= set(before)
    # Data, model and Trainer are all built; the first training step fails.
    fail_step(monkeypatch, 0, RuntimeError("boom") if failure == "step raises" else None)
    res = train(runs, "--name", "old", "--overwrite", "--seed", 1)
    assert res.exit_code == 1
    if failure == "step raises":
        assert isinstance(res.exception, RuntimeError) and str(res.exception) == "boom"
    else:
        assert "NaN or infinite at step 0 (epoch 1" in res.output
        assert f"'{runs / 'old'}' holds the previous run again" in res.output
    assert files(runs / "old") == before
    assert [p.name for p in runs.iterdir()] == ["old"]  # nothing moved aside is left over


def test_overwrite_replaces_the_old_run_once_the_new_one_wrote_a_checkpoint(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    assert train(runs, "--name", "old", "--quiet").exit_code == 0
    old_best = (runs / "old/best.pt").read_bytes()
    fail_step(monkeypatch, 4)  # 64 images in batches of 16: the first step of epoch 2
    res = train(runs, "--name", "old", "--overwrite", "--seed", 1, "--epochs", 2)
    assert res.exit_code == 1 and "NaN or infinite at step 4 (epoch 2" in res.output, res.output
    assert "last.pt still holds epoch 1" in res.output
    assert [p.name for p in runs.iterdir()] == ["old"]
    assert (runs / "old/best.pt").read_bytes() != old_best  # the new run's epoch 1 is kept
    assert load_checkpoint(runs / "old/last.pt").train_config["seed"] == 1


def test_ctrl_c_in_the_first_epoch_of_an_overwrite_keeps_both_runs(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    assert train(runs, "--name", "old", "--quiet").exit_code == 0
    before = files(runs / "old")
    real_step = engine.Trainer.train_step

    def ctrl_c_at_step_2(self, x, targets):
        if self.global_step == 2:
            self.stop_requested = True       # what the SIGINT handler does
        return real_step(self, x, targets)
    monkeypatch.setattr(engine.Trainer, "train_step", ctrl_c_at_step_2)
    res = train(runs, "--name", "old", "--overwrite", "--seed", 1, "--quiet")
    assert res.exit_code == 130, res.output
    aside = next(runs.glob("old.replaced-*"))
    assert f"the run it replaces is kept in '{aside}' until you delete it" in res.output
    assert files(aside) == before                                   # the old run, untouched
    assert load_checkpoint(runs / "old/last.pt").resume["step_in_epoch"] == 3  # resumable
    monkeypatch.undo()
    res = CliRunner().invoke(main, ["train", "--resume", str(runs / "old/last.pt"), "--quiet"])
    assert res.exit_code == 0, res.output


def test_a_run_left_aside_by_a_killed_overwrite_is_named(tmp_path):
    runs = tmp_path / "runs"
    (runs / "k").mkdir(parents=True)
    (runs / "k" / "config.json").write_text("{}")             # a start killed with SIGKILL
    (runs / "k.replaced-4242").mkdir()
    res = train(runs, "--name", "k")
    assert res.exit_code == 1, res.output
    assert f"left the run it replaced in '{runs / 'k.replaced-4242'}'" in res.output
    assert "--resume" not in res.output                      # there is no last.pt to resume


def test_runs_dir_that_is_a_file_is_one_error_naming_it(tmp_path):
    not_a_folder = tmp_path / "runs.txt"
    not_a_folder.write_text("notes\n")
    for runs_dir in (not_a_folder, not_a_folder / "nested"):
        res = train(runs_dir, "--name", "x")
        assert res.exit_code == 1 and "Traceback" not in res.output, res.output
        assert res.output.strip().splitlines() == [res.output.strip()]  # one line
        assert res.output.startswith(f"Error: --runs-dir '{runs_dir}' is not a folder")
        assert f"'{not_a_folder}' is a file" in res.output and "pass --runs-dir a folder" in res.output
    assert not_a_folder.read_text() == "notes\n"


@pytest.fixture
def fresh_wandb(monkeypatch):
    """wandb with no session yet: it reads WANDB_* once per session (and warns on changes)."""
    wandb = pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline, the vitscope default
    monkeypatch.delenv("WANDB_SILENT", raising=False)
    wandb.teardown()
    yield wandb
    wandb.teardown()


def test_quiet_silences_wandb_unless_wandb_silent_is_set(tmp_path, monkeypatch, capfd, fresh_wandb):
    res = train(tmp_path / "runs", "--name", "quiet", "--log", "wandb", "--quiet")
    assert res.exit_code == 0, res.output
    out, err = capfd.readouterr()
    assert res.output == "" and "wandb" not in out + err
    assert "WANDB_SILENT" not in os.environ
    assert list((tmp_path / "runs/quiet/wandb").glob("offline-run-*/run-*.wandb"))

    res = train(tmp_path / "runs", "--name", "loud", "--log", "wandb")  # same session, no --quiet
    assert res.exit_code == 0, res.output
    assert "wandb: Tracking run" in res.output + "".join(capfd.readouterr())

    monkeypatch.setenv("WANDB_SILENT", "false")  # the user's own setting wins over --quiet
    fresh_wandb.teardown()
    res = train(tmp_path / "runs", "--name", "user", "--log", "wandb", "--quiet")
    assert res.exit_code == 0, res.output
    assert "wandb: Tracking run" in res.output + "".join(capfd.readouterr())


def test_saving_over_a_checkpoint_replaces_it_whole(tmp_path, tiny_vit):
    path = save_checkpoint(tmp_path / "last.pt", tiny_vit, metrics={"epoch": 1})
    with torch.no_grad():
        for p in tiny_vit.parameters():
            p.add_(1.0)
    save_checkpoint(path, tiny_vit, metrics={"epoch": 2})
    ck = load_checkpoint(path)
    assert ck.metrics == {"epoch": 2}
    for name, value in tiny_vit.state_dict().items():
        torch.testing.assert_close(ck.state_dict[name], value, msg=name)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left behind


def test_data_paths_are_recorded_absolute_and_resume_refuses_overwrite(tmp_path, monkeypatch):
    from PIL import Image
    monkeypatch.chdir(tmp_path)
    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / "imgs" / split / c).mkdir(parents=True)
            for i in range(16):
                Image.new("RGB", (16, 16), (i * 9, 40 if c == "a" else 200, 0)).save(
                    tmp_path / "imgs" / split / c / f"{i}.png")
    monkeypatch.setenv("VITSCOPE_CACHE", str(tmp_path / "cache"))
    res = train("runs", "--name", "f", "--quiet", data="folder:imgs")
    assert res.exit_code == 0, res.output
    tc = load_checkpoint(tmp_path / "runs/f/last.pt").train_config
    assert tc["data"] == f"folder:{tmp_path / 'imgs'}" and tc["data_dir"] == str(tmp_path / "data")
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path / "other")           # resumable from any working folder
    res = CliRunner().invoke(main, ["train", "--resume", "../runs/f/last.pt", "--epochs", "2",
                                    "--quiet"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["train", "--resume", "../runs/f/last.pt", "--epochs", "3",
                                    "--overwrite"])
    assert res.exit_code == 1 and "--overwrite cannot be combined with it" in res.output
