"""Fault suite, the command line: bad values for the options that reach files and seeds.
The first five are the issue's; the rest held before and must keep holding. Each is one
sentence (exit 2 for click's own range checks, 1 for vitscope's) and nothing is written."""
from __future__ import annotations

import pytest

from faultkit import cli, one_error_line, snapshot

DEEP = "[" * 5000 + "]" * 5000


def deep_recipe(tmp):
    path = tmp / "deep.toml"
    path.write_text(f"epochs = 1\nbetas = {DEEP}\n")
    return path


CASES = [
    # (id, argv builder (ckpt, tmp), words)
    ("train-config-empty", lambda c, t: ["train", "--config", ""], "--config got an empty recipe name"),
    ("dump-seed-negative", lambda c, t: ["dump", c, "--seed", -1, "-o", t / "d.h5"],
     "-1 is not in the range 0<=x<=9223372036854775807"),
    ("dump-seed-huge", lambda c, t: ["dump", c, "--seed", 10 ** 30, "-o", t / "d.h5"],
     "is not in the range 0<=x<=9223372036854775807"),
    ("set-deeply-nested", lambda c, t: ["train", "--set", f"betas={DEEP}"],
     "--set betas nests 5,000 levels deep, more than the 32 allowed"),
    ("recipe-deeply-nested", lambda c, t: ["train", "--config", deep_recipe(t)],
     "nests 5,000 levels deep"),
    ("train-config-blank", lambda c, t: ["train", "--config", "   "], "--config got an empty recipe name"),
    ("set-too-long", lambda c, t: ["train", "--set", "name=" + "x" * (1 << 21)],
     "--set name is 2,097,152 bytes, more than the 1,048,576 allowed"),
    ("train-seed-huge", lambda c, t: ["train", "--seed", 10 ** 30], "seed must be an integer >= 0"),
    ("train-seed-negative", lambda c, t: ["train", "--seed", -5], "seed must be an integer >= 0"),
    ("train-lr-nan", lambda c, t: ["train", "--lr", "nan"], "lr must be a finite number"),
    ("train-depth-bool", lambda c, t: ["train", "--set", "model.depth=true"], "model.depth must be an integer"),
    ("train-epochs-zero", lambda c, t: ["train", "--epochs", 0], "epochs must be an integer >= 1"),
    ("dump-limit-zero", lambda c, t: ["dump", c, "--limit", 0, "-o", t / "d.h5"], "--limit must be a positive"),
    ("dump-batch-zero", lambda c, t: ["dump", c, "--batch-size", 0, "-o", t / "d.h5"],
     "--batch-size must be a positive integer"),
    ("dump-shard-out-of-range", lambda c, t: ["dump", c, "--shard", "5/2", "-o", t / "d.h5"], "out of range"),
    ("dump-shard-garbage", lambda c, t: ["dump", c, "--shard", "x", "-o", t / "d.h5"], "must look like i/n"),
    ("eval-limit-zero", lambda c, t: ["eval", c, "--limit", 0, "-o", t / "e"], "0 is not in the range x>=1"),
    ("analyze-images-zero", lambda c, t: ["analyze", c, "--all", "-n", 0, "-o", t / "a"],
     "0 is not in the range x>=1"),
]


@pytest.mark.parametrize("case, argv, words", CASES, ids=[c[0] for c in CASES])
def test_bad_values_are_one_sentence_and_write_nothing(tmp_path, shapes_ckpt, monkeypatch,
                                                       case, argv, words):
    monkeypatch.chdir(tmp_path)   # where a default run or output folder would appear
    args = argv(shapes_ckpt, tmp_path)
    before = snapshot(tmp_path)
    one_error_line(cli(*args), words)
    assert snapshot(tmp_path) == before
