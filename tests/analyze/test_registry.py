"""Plugin discovery, validation, isolation of broken plugins, `--opt` parsing, `vitscope plugins`.

Fake third-party plugins are real installed distributions: a `*.dist-info` folder with an
`entry_points.txt` on sys.path, which importlib.metadata finds exactly like a pip install.
"""
from __future__ import annotations

import configparser
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from vitscope.cli import main
from vitscope.errors import PluginError
from vitscope.plugin import Option
from plugin_dists import FAKE_ENTRY_POINTS, write_fake_distribution
from vitscope.analyze.registry import AUTOLOAD_ENV, discover
from vitscope.plugins import BUILTINS
from vitscope.analyze.options import parse_opts

ROOT = Path(__file__).resolve().parents[2]

@pytest.fixture
def fake_plugins(tmp_path, monkeypatch, request):
    module = f"fake_vitscope_plugins_{abs(hash(request.node.name)) % 10**8}"
    root = write_fake_distribution(tmp_path / "site", module, FAKE_ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(root))
    yield root
    sys.modules.pop(module, None)


def test_builtins_come_from_the_entry_points_declared_in_setup_cfg():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    declared = dict(line.split(" = ") for line in
                    cfg["options.entry_points"]["vitscope.plugins"].strip().splitlines())
    assert declared == BUILTINS
    registry = discover()
    for name in BUILTINS:
        entry = registry.get(name)
        assert entry.ok, entry.error
        assert entry.builtin and entry.package == "vitscope"
        assert entry.requires and all(isinstance(r, str) for r in entry.requires)


def test_discovery_imports_no_plugin_module():
    code = ("import sys, vitscope.cli, vitscope.plugin as p; r = p.discover(); "
            "print(len(r.names()), any(m.startswith('vitscope.plugins.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    count, imported = out.stdout.split()
    assert int(count) >= 5 and imported == "False"


def test_broken_plugins_are_reported_by_name_package_reason_and_fix(fake_plugins):
    registry = discover()
    good = registry.get("fake-good")
    assert good.ok and good.package == "fake-vitscope-plugins" and good.version == "0.3"
    expected = {
        "fake-no-render": "no 'render' attribute",
        "fake-bad-signature": "does not take (dump, out_dir, options)",
        "fake-bad-default": "default of its option 'ratio'",
        "fake-import-error": "ModuleNotFoundError",
    }
    for name, reason in expected.items():
        entry = registry.get(name)
        assert not entry.ok, name
        assert reason in entry.error, (name, entry.error)
        problem = entry.problem()
        assert problem.startswith(f"Plugin '{name}' (package fake-vitscope-plugins 0.3)")
        assert "pip uninstall fake-vitscope-plugins" in problem
    # the clash: the built-in keeps the name, the impostor is listed as broken
    rollouts = [e.load() for e in registry.entries if e.name == "rollout"]
    assert [e.builtin for e in rollouts] == [True, False]
    assert rollouts[0].ok and "already taken" in rollouts[1].error
    for name in BUILTINS:
        assert registry.get(name).ok


def test_autoload_can_be_disabled(fake_plugins, monkeypatch):
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    registry = discover()
    assert set(registry.names()) == set(BUILTINS)
    with pytest.raises(PluginError, match=f"{AUTOLOAD_ENV}=1 loads only the built-ins"):
        registry.get("fake-good")


def test_unknown_plugin_suggests_the_closest_name():
    registry = discover()
    with pytest.raises(PluginError) as err:
        registry.get("rolout")
    msg = str(err.value)
    assert msg.startswith("No plugin 'rolout'. Did you mean 'rollout'? Installed: ")
    assert "cls-heatmap" in msg and msg.endswith("(vitscope plugins).")
    with pytest.raises(PluginError, match="No plugin 'zzz'. Installed"):
        registry.get("zzz")


def test_opt_parsing_converts_and_validates():
    registry = discover()
    chosen = registry.select(["rollout", "token-attention"])
    values = parse_opts(["rollout.discard_ratio=0.9", "rollout.fusion=max",
                         "token-attention.query=12", "token-attention.gif=no"], chosen, registry)
    assert values == {"rollout": {"discard_ratio": 0.9, "fusion": "max"},
                      "token-attention": {"query": "12", "gif": False}}
    bad = {
        "rollout.discard_ratio": "not of the form plugin.key=value",
        "discard_ratio=0.9": "not of the form plugin.key=value",
        "rolout.fusion=max": "Did you mean 'rollout'?",
        "cls-heatmap.layers=all": "not selected; add --plugin cls-heatmap",
        "rollout.discard=0.9": "has no option 'discard'. Did you mean 'discard_ratio'?",
        "rollout.discard_ratio=lots": "invalid: expected float",
        "rollout.discard_ratio=1.5": "invalid: expected a value <= 0.99",
        "rollout.fusion=median": "invalid: expected one of mean, max, min",
        "token-attention.gif=maybe": "invalid: expected true or false",
        "token-attention.layers=first,deepest": "'deepest' is not a layer",
        "token-attention.query=corner": "expected cls, top",
    }
    for spec, message in bad.items():
        with pytest.raises(PluginError, match=message.replace("(", r"\(").replace("?", r"\?")):
            parse_opts([spec], chosen, registry)


def test_option_declaration_checks_its_own_values():
    opt = Option("k", int, 3, "count", min=1)
    assert opt.convert("4") == 4 and opt.convert(None) is None
    with pytest.raises(ValueError):
        opt.convert("0")
    assert Option("b", bool, False).convert("Yes") is True


def test_plugins_command_lists_broken_ones_without_breaking(fake_plugins):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake_plugins),
                                                         os.environ.get("PYTHONPATH", "")])}
    exe = Path(sys.executable).with_name("vitscope")
    out = subprocess.run([str(exe), "plugins", "--verbose"], capture_output=True, text=True,
                         env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    row = next(l for l in lines if l.startswith("fake-import-error"))
    assert "fake-vitscope-plugins 0.3" in row and "broken" in row
    assert any("reason: importing fake_module_that_does_not_exist_xyz:Plugin failed" in l
               for l in lines)
    assert any("fix:" in l and "pip uninstall fake-vitscope-plugins" in l for l in lines)
    good = next(l for l in lines if l.startswith("fake-good"))
    assert " ok " in good and "blocks.*.attn.weights" in good
    assert any("--opt fake-good.level (int, default 1): how much" in l for l in lines)
    assert any(l.startswith("rollout ") and " ok " in l for l in lines)


def test_plugins_json(fake_plugins):
    import json
    res = CliRunner().invoke(main, ["plugins", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.output) if r["package"] != "vitscope"}
    assert rows["fake-good"]["status"] == "ok"
    assert rows["fake-no-render"]["status"] == "broken" and rows["fake-no-render"]["fix"]
