"""Two settings of one plugin side by side in one run folder: each non-default
setting renders into `<plugin>@key=value,...`, index.html and manifest.json name it."""
from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from vitscope.cli import main
from vitscope.analyze.registry import discover
from vitscope.render.setting_folders import changed_options, folder_problem, plugin_of, setting_folder


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_two_settings_of_one_plugin_coexist_without_o(small_dump, tmp_path):
    dump, ckpt = small_dump
    out = tmp_path / "out"
    base = ("analyze", ckpt, "--dump", dump, "-p", "rollout", "-o", out, "--static")
    res = run(*base)
    assert res.exit_code == 0, res.output
    res = run(*base, "--opt", "rollout.fusion=max", "--opt", "rollout.discard_ratio=0.9")
    assert res.exit_code == 0, res.output
    setting = out / "rollout@discard_ratio=0.9,fusion=max"
    assert f"ok      {setting.name}" in res.output
    for folder in (out / "rollout", setting):
        assert (folder / "rollout.png").stat().st_size > 1000
    with np.load(out / "rollout" / "results.npz") as a, np.load(setting / "results.npz") as b:
        assert a["maps"].shape == b["maps"].shape and not np.allclose(a["maps"], b["maps"])

    manifest = json.loads((out / "manifest.json").read_text())["plugins"]
    assert manifest["rollout"]["options"] == {} and manifest["rollout"]["plugin"] == "rollout"
    assert manifest[setting.name]["plugin"] == "rollout"
    assert manifest[setting.name]["options"] == {"fusion": "max", "discard_ratio": 0.9}
    index = (out / "index.html").read_text()
    # Default first, then its setting; the setting's section says which options made it.
    assert index.index("id='rollout'") < index.index(f"id='{setting.name}'")
    section = index[index.index(f"id='{setting.name}'"):]
    assert "fusion=max" in section[:600] and "discard_ratio=0.9" in section[:600]

    # An option at its default names no setting: it re-renders the default folder.
    before = (out / "rollout" / "rollout.png").stat().st_mtime_ns
    res = run(*base, "--opt", "rollout.fusion=mean")
    assert res.exit_code == 0, res.output
    assert (out / "rollout" / "rollout.png").stat().st_mtime_ns != before
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("rollout")) == \
        ["rollout", setting.name]

    # A bad option still leaves both settings' figures alone.
    res = run(*base, "--opt", "rollout.end_layer=7")
    assert res.exit_code != 0 and "end_layer" in res.output
    assert (setting / "rollout.png").is_file() and (out / "rollout" / "rollout.png").is_file()


def test_setting_folder_names_are_portable_and_never_shared():
    rollout = discover().get("rollout")
    assert changed_options(rollout, {"fusion": "mean", "discard_ratio": 0.0}) == {}
    assert changed_options(rollout, {"fusion": "max"}) == {"fusion": "max"}
    assert setting_folder("rollout", {}) == "rollout"
    assert setting_folder("token-attention", {"query": 5}) == "token-attention@query=5"
    assert setting_folder("x", {"show": True, "ratio": 0.25}) == "x@ratio=0.25,show=true"
    assert setting_folder("x", {"r": 0.1234567}) != setting_folder("x", {"r": 0.1234568})
    # Characters a file system or shell could mind are replaced, and a hash keeps apart
    # values that would otherwise map to one name.
    a, b = setting_folder("x", {"layers": "0 2"}), setting_folder("x", {"layers": "0/2"})
    assert a != b and "/" not in a + b and " " not in a + b
    assert a.startswith("x@layers=0_2~") and folder_problem(a) is None
    long = setting_folder("x", {"layers": ",".join(map(str, range(200)))})
    assert len(long) <= 102 and folder_problem(long) is None
    assert plugin_of(long) == "x" and plugin_of("rollout") == "rollout"
    assert folder_problem("rollout@../../etc") is not None
    assert folder_problem("Rollout@fusion=max") is not None
