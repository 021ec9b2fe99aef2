"""Methods that need the model, stored at capture time: `vitscope score -p occlusion -p
integrated-gradients` captures `/maps/<method>` into the dump, the plugins read them from
there, and the stored maps equal what the Python API computes on the same model and images."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import vitscope
from vitscope.cli import main
from vitscope.dump import Dump

pytest.importorskip("captum", reason="pip install 'vitscope[captum]'")


def test_score_runs_model_methods_through_the_dump(shapes_ckpt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["score", str(shapes_ckpt), "-p", "occlusion", "-p",
                                    "integrated-gradients", "-n", "6", "--draws", "1",
                                    "--device", "cpu"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "outputs" / "run" / "score" / "score.json").read_text())
    assert set(report["methods"]) == {"occlusion", "integrated-gradients"}
    for m in report["methods"].values():
        assert m["class_sensitivity"]["runner-up"]["rho"]["n"] >= 1
        assert m["randomization"]["steps"][-1]["rho"]["n"] >= 1
    with Dump.open(report["dump"]) as dump:
        assert sorted(dump.model_maps) == ["integrated-gradients", "occlusion"]
        assert dump.dims("map:occlusion") == ["N", "h", "w"]
        stored = {m: dump[f"map:{m}"][:] for m in dump.model_maps}
        pixels, target = np.asarray(dump.images[:]), dump.target
    ex = vitscope.explain(str(shapes_ckpt), pixels, methods=["occlusion", "integrated-gradients"],
                          target=target.tolist())
    for name, maps in stored.items():
        assert maps.shape == (6, 4, 4) and np.ptp(maps) > 0
        np.testing.assert_allclose(maps, ex.maps[name], rtol=1e-4, atol=1e-6, err_msg=name)


def test_a_map_request_for_a_hook_method_is_one_sentence(shapes_ckpt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["dump", str(shapes_ckpt), "--hooks", "map:gradcam",
                                    "-n", "4", "-o", str(tmp_path / "d.h5")])
    assert res.exit_code != 0 and "computed from hook points" in res.output, res.output
    assert res.output.startswith("Error: ") and res.output.count("\n") == 1, res.output
