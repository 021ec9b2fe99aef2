"""`vitscope train` failing before it starts (no empty run folder, a --runs-dir that is a file),
--quiet silencing wandb, and overwriting a checkpoint; small real runs through the real CLI."""
from __future__ import annotations

import os

import pytest
import torch
from click.testing import CliRunner

from vitscope.checkpoint import load_checkpoint, save_checkpoint
from vitscope.cli import main

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
