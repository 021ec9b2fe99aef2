"""`dump merge` carries the maps stored with the model (/maps/<method>, with their target
and options), and refuses shards whose maps disagree, in one sentence."""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from vitscope.capture import capture
from vitscope.cli import main
from vitscope.data import load_dataset
from vitscope.dump import Dump, merge
from vitscope.errors import DumpError
from vitscope.model.checkpoint import load_model

SCORECAM = "map:scorecam"     # native (no Captum): runs wherever vitscope does


@pytest.fixture
def setup(shapes_ckpt):
    model, ck = load_model(shapes_ckpt)
    return model, ck, load_dataset("shapes:val=48", "val", 16)


def shards(setup, folder, hooks=(("cls", SCORECAM), ("cls", SCORECAM)), options=(None, None),
           targets=("pred", "pred")):
    model, ck, ds = setup
    return [capture(model, ds, folder / f"s{i}.h5", list(hooks[i]), ckpt=ck, limit=6,
                    shard=(i, 2), target=targets[i], map_options=options[i]) for i in (0, 1)]


def test_merged_maps_equal_one_capture_and_keep_their_options(setup, tmp_path):
    model, ck, ds = setup
    opts = {"scorecam": {"block": 0}}
    parts = shards(setup, tmp_path, options=(opts, opts))
    res = CliRunner().invoke(main, ["dump", "merge", *map(str, parts), "-o",
                                    str(tmp_path / "m.h5")])
    assert res.exit_code == 0, res.output
    whole = capture(model, ds, tmp_path / "whole.h5", ["cls", SCORECAM], ckpt=ck, limit=6,
                    map_options=opts)
    with Dump.open(tmp_path / "m.h5") as m, Dump.open(whole) as w:
        assert m.model_maps == ["scorecam"] and len(m) == 6
        assert np.allclose(m[SCORECAM][:], w[SCORECAM][:], atol=1e-6)
        assert np.array_equal(m.target, w.target)
        assert m.map_options("scorecam") == {"block": 0, "batch": 64}
        assert m._f["maps/scorecam"].attrs["options"] == w._f["maps/scorecam"].attrs["options"]
        assert m.covers([SCORECAM], 6, map_options={"scorecam": {"block": 0}})
        assert not m.covers([SCORECAM], 6, map_options={"scorecam": {"block": 1}})


@pytest.mark.parametrize("case, message", [
    ("one only", r"only '.*s0.h5' holds the maps of scorecam \(/maps\)"),
    ("options", r"their scorecam maps were made with different options \(batch=64, block=0 "
                r"and batch=64, block=1\)"),
    ("target", r"their maps explain different targets \(pred and label\)"),
])
def test_shards_whose_maps_disagree_are_one_sentence(setup, tmp_path, case, message):
    kw = {"one only": dict(hooks=(("cls", SCORECAM), ("cls",))),
          "options": dict(options=({"scorecam": {"block": 0}}, {"scorecam": {"block": 1}})),
          "target": dict(targets=("pred", "label"))}[case]
    parts = shards(setup, tmp_path, **kw)
    with pytest.raises(DumpError, match=message) as e:
        merge(parts, tmp_path / "m.h5")
    assert "\n" not in str(e.value) and not (tmp_path / "m.h5").exists()
