"""Checkpoints: round trip, the rebuilt model, and one clear error per bad file."""
from __future__ import annotations

import os

import pytest
import torch

from click.testing import CliRunner

from vitscope.model.checkpoint import load_checkpoint, load_model, save_checkpoint
from vitscope.cli import main
from vitscope.errors import CheckpointError


def test_round_trip_rebuilds_the_model_from_the_file_alone(tiny_ckpt, tiny_vit):
    model, ck = load_model(tiny_ckpt)
    assert ck.classes == list("abcde") and ck.metrics["val_acc"] == 0.5
    assert ck.model_config == tiny_vit.cfg
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(model(x), tiny_vit(x))
    raw = torch.load(tiny_ckpt, weights_only=True)
    assert raw["format"] == "vitscope-checkpoint" and raw["version"] == 1
    assert set(raw) >= {"model_config", "train_config", "classes", "state_dict", "metrics",
                        "vitscope_version"}


def test_half_checkpoint_loads_into_float_model(tmp_path, tiny_vit):
    path = save_checkpoint(tmp_path / "half.pt", tiny_vit, half=True)
    model, _ = load_model(path)
    assert next(model.parameters()).dtype == torch.float32
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(model(x), tiny_vit(x), atol=2e-3, rtol=0)


def test_save_is_atomic(tmp_path, tiny_vit, monkeypatch):
    path = save_checkpoint(tmp_path / "a.pt", tiny_vit, metrics={"epoch": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]  # no temporary left behind
    real_save = torch.save

    def save_half_then_fail(obj, f, *args, **kwargs):  # e.g. the disk fills up mid-write
        f.write(b"PK\x03\x04 the first bytes of a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, tiny_vit, metrics={"epoch": 2})
    monkeypatch.setattr(torch, "save", real_save)
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]  # the partial .tmp is removed
    assert load_checkpoint(path).metrics == {"epoch": 1}    # and the old file is intact


def err(path):
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg
    return msg


def test_missing_file(tmp_path):
    assert "does not exist" in err(tmp_path / "nope.pt")


def test_truncated_file(tmp_path, tiny_ckpt):
    data = tiny_ckpt.read_bytes()
    bad = tmp_path / "trunc.pt"
    bad.write_bytes(data[: len(data) // 2])
    assert "truncated or corrupt" in err(bad)
    bad.write_bytes(b"not a torch file at all")
    assert "is not a torch file (neither a torch zip archive nor a pickle" in err(bad)
    bad.write_bytes(b"")
    assert "empty" in err(bad)


def test_plain_state_dict(tmp_path, tiny_vit):
    path = tmp_path / "sd.pt"
    torch.save(tiny_vit.state_dict(), path)
    assert "plain state_dict" in err(path)


def test_other_projects_checkpoint(tmp_path, tiny_vit):
    path = tmp_path / "other.pt"
    torch.save({"model": tiny_vit.state_dict(), "optimizer": {}, "epoch": 3}, path)
    msg = err(path)
    assert "not a vitscope checkpoint" in msg and "epoch, model, optimizer" in msg


def test_newer_version(tmp_path, tiny_ckpt):
    raw = torch.load(tiny_ckpt, weights_only=True)
    raw["version"] = 99
    path = tmp_path / "new.pt"
    torch.save(raw, path)
    assert "format version 99, newer than" in err(path)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickled_object_is_refused_and_never_runs(tmp_path, tiny_ckpt):
    marker = str(tmp_path / "code-ran")
    raw = torch.load(tiny_ckpt, weights_only=True)
    raw["metrics"] = {"payload": _RunsCode(marker)}
    path = tmp_path / "evil.pt"
    torch.save(raw, path)
    assert "pickled Python objects" in err(path)
    assert not os.path.exists(marker)


def test_weights_that_do_not_fit_the_config_name_the_keys(tmp_path, tiny_ckpt):
    raw = torch.load(tiny_ckpt, weights_only=True)
    raw["model_config"]["depth"] = 3
    path = tmp_path / "mismatch.pt"
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="do not fit its model_config") as e:
        load_model(path)
    message = str(e.value)
    assert "missing blocks.2.norm1.weight, blocks.2.norm1.bias, blocks.2.attn.qkv.weight and " \
           "9 more" in message and "\n" not in message

    raw = torch.load(tiny_ckpt, weights_only=True)
    raw["state_dict"]["head.weight"] = torch.zeros(7, 32)
    raw["state_dict"]["extra.scale"] = torch.ones(1)
    del raw["state_dict"]["norm.bias"]
    torch.save(raw, path)
    with pytest.raises(CheckpointError) as e:
        load_model(path)
    assert ("(missing norm.bias; unexpected extra.scale; shape of head.weight is (7, 32) "
            "instead of (5, 32))") in str(e.value)


@pytest.mark.parametrize("key, value, fragment", [
    ("metrics", [0.5, 0.6], "invalid 'metrics' field (a list, expected a dict)"),
    ("train_config", "cifar10", "invalid 'train_config' field (a str, expected a dict)"),
    ("classes", "abcde", "invalid 'classes' field (a str, expected a list of class names)"),
    ("classes", ["a", 2], "invalid classes list (it holds 2, expected class names as strings)"),
    ("arch", ["vit"], "invalid 'arch' field (a list, expected a string)"),
])
def test_fields_of_the_wrong_type_are_one_error(tmp_path, tiny_ckpt, key, value, fragment):
    raw = torch.load(tiny_ckpt, weights_only=True)
    raw[key] = value
    path = tmp_path / "edited.pt"
    torch.save(raw, path)
    assert fragment in err(path)
    res = CliRunner().invoke(main, ["info", str(path)])  # once a TypeError
    assert res.exit_code == 1 and res.output.startswith("Error:") and fragment in res.output


@pytest.mark.parametrize("save", [
    lambda obj, path: torch.save(obj, path, _use_new_zipfile_serialization=False, pickle_protocol=4),
    lambda obj, path: path.write_bytes(__import__("pickle").dumps(obj, protocol=4)),
], ids=["legacy-torch-protocol-4", "raw-pickle"])
def test_files_the_safe_loader_cannot_parse_say_how_to_convert(tmp_path, save):
    path = tmp_path / "old.pt"
    save({"weight": torch.zeros(2)}, path)
    message = err(path)
    assert "is a raw pickle (or an old-style torch file with pickle protocol 4+)" in message
    assert "re-save it with torch.save" in message


def test_a_dump_given_as_checkpoint_says_what_it_is(tmp_path):
    from vitscope.testing import make_dump
    dump = make_dump(tmp_path / "d.h5", n=2, hooks=["cls"])
    message = err(dump)
    assert "is an HDF5 file (an activation dump?), not a checkpoint" in message
    assert f"vitscope analyze --dump {dump}" in message
