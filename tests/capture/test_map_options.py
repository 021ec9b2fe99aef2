"""Options of the methods that run the model at capture (`--opt integrated-gradients.steps=4`):
they reach the method in `vitscope dump`, `analyze` and `score`, are recorded beside
/maps/<method>, and a dump serves a `map:` request only when they agree."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("captum")

from vitscope.capture import ensure_dump   # noqa: E402
from vitscope.capture.model_maps import deciding_options   # noqa: E402
from vitscope.cli import main   # noqa: E402
from vitscope.dump import Dump   # noqa: E402
from vitscope.methods import METHODS   # noqa: E402

IG = "map:integrated-gradients"


def dump_cli(ckpt, out, *args):
    res = CliRunner().invoke(main, ["dump", str(ckpt), "--hooks", IG, "-n", "4", "-q",
                                    "-o", str(out), *args])
    return res


def test_dump_opt_reaches_the_method_and_is_recorded(shapes_ckpt, tmp_path):
    runs = {}
    for steps in (2, 32):
        res = dump_cli(shapes_ckpt, tmp_path / f"s{steps}.h5",
                       "--opt", f"integrated-gradients.steps={steps}")
        assert res.exit_code == 0, res.output
        with Dump.open(tmp_path / f"s{steps}.h5") as d:
            runs[steps] = np.asarray(d[IG][:])
            assert d.map_options("integrated-gradients") == {"steps": steps,
                                                             "internal_batch": 64}
        with h5py.File(tmp_path / f"s{steps}.h5") as f:   # beside the maps, too
            assert json.loads(f["maps/integrated-gradients"].attrs["options"])["steps"] == steps
    info = CliRunner().invoke(main, ["dump", "info", str(tmp_path / "s2.h5")])
    assert "integrated-gradients (internal_batch=64, steps=2), explaining target pred" \
        in info.output, info.output
    assert dump_cli(shapes_ckpt, tmp_path / "default.h5").exit_code == 0
    with Dump.open(tmp_path / "default.h5") as d:
        assert np.array_equal(np.asarray(d[IG][:]), runs[32])      # the default is 32 steps
    # 2 steps of a Riemann sum are not 32: another map
    assert not np.allclose(runs[2], runs[32], rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("opt, message", [
    ("integrated-gradients.stpes=4", "has no option 'stpes'; its options: steps"),
    ("occlusion.per_eval=4", "is for map:occlusion, which --hooks does not ask for"),
    ("integrated-gradients.steps=many", "'many' is not an integer"),
    ("steps=4", "not of the form METHOD.KEY=VALUE"),
])
def test_bad_dump_opts_are_one_sentence(shapes_ckpt, tmp_path, opt, message):
    res = dump_cli(shapes_ckpt, tmp_path / "x.h5", "--opt", opt)
    assert res.exit_code != 0 and message in res.output, res.output
    assert "Traceback" not in res.output and not (tmp_path / "x.h5").exists()


def test_a_dump_serves_a_map_request_only_when_the_options_agree(shapes_ckpt, tmp_path):
    kw = dict(data="shapes:val=48", n=4, hooks=[IG], dump_dir=tmp_path)
    two, reused = ensure_dump(shapes_ckpt, map_options={"integrated-gradients": {"steps": 2}},
                              **kw)
    assert not reused
    # the same steps, another internal batch (speed only): served by the same dump
    again, reused = ensure_dump(shapes_ckpt, map_options={"integrated-gradients": {
        "steps": 2, "internal_batch": 7}}, **kw)
    assert reused and again == two
    default, reused = ensure_dump(shapes_ckpt, **kw)   # 32 steps: another dump
    assert not reused and default != two
    with Dump.open(default) as d:
        assert d.map_options("integrated-gradients")["steps"] == 32
        assert not d.covers([IG], 4, map_options=deciding_options(
            ["integrated-gradients"], {"integrated-gradients": {"steps": 2}}))


def test_analyze_and_score_run_the_method_with_the_opt(shapes_ckpt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["analyze", str(shapes_ckpt), "-p", "integrated-gradients",
                                    "-n", "4", "--opt", "integrated-gradients.steps=3",
                                    ])
    assert res.exit_code == 0, res.output
    summary = next((tmp_path / "outputs").rglob("integrated-gradients*/summary.json"))
    assert json.loads(summary.read_text())["options"]["steps"] == 3
    dump = next(p for p in (tmp_path / "outputs" / "dumps").glob("*.h5"))
    # --dump with an --opt its maps were not made with: one sentence
    res = CliRunner().invoke(main, ["analyze", "--dump", str(dump), "-p", "integrated-gradients",
                                    "--opt", "integrated-gradients.steps=5", "-o", "other"])
    assert res.exit_code != 0 and "made with steps=3, not steps=5" in res.output, res.output

    res = CliRunner().invoke(main, ["score", str(shapes_ckpt), "-p", "integrated-gradients",
                                    "-n", "4", "--draws", "1",
                                    "--opt", "integrated-gradients.steps=3"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "outputs" / "run" / "score" / "score.json").read_text())
    assert report["map_options"]["integrated-gradients"]["steps"] == 3
    with Dump.open(report["dump"]) as d:
        assert d.map_options("integrated-gradients")["steps"] == 3


def test_plugin_options_mirror_the_methods():
    """Each map:<method> plugin declares its method's options with the same defaults (what
    `--opt` checks), for every registered method that needs the model."""
    from vitscope.analyze.registry import discover
    from vitscope.names import split_maps
    seen = set()
    for entry in discover().entries:
        if not entry.ok:
            continue
        for name in split_maps(list(entry.requires))[1]:
            method, declared = METHODS[name], entry.option_map()
            for key, default in method.defaults.items():
                assert key in declared and declared[key].default == default, (name, key)
            seen.add(name)
    assert {"integrated-gradients", "occlusion", "scorecam"} <= seen


def test_the_api_runs_the_method_with_its_options(shapes_ckpt):
    import vitscope
    images = np.random.default_rng(0).integers(0, 255, (3, 16, 16, 3), dtype=np.uint8)
    maps = {steps: vitscope.explain(str(shapes_ckpt), images, methods=["integrated-gradients"],
                                    options={"integrated-gradients": {"steps": steps}}
                                    ).maps["integrated-gradients"] for steps in (2, 32)}
    default = vitscope.explain(str(shapes_ckpt), images, methods=["integrated-gradients"])
    assert np.allclose(default.maps["integrated-gradients"], maps[32])
    assert not np.allclose(maps[2], maps[32], rtol=1e-3, atol=1e-5)
