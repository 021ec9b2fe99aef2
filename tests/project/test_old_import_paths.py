"""Import paths of version 0.1 keep working for one release: every moved module and name is
served from its new home with a DeprecationWarning that names it, and a plugin written against
the old paths (the example plugin, unchanged) still imports, registers and renders."""
from __future__ import annotations

import importlib
import json
import subprocess
import sys
import warnings

import pytest

from vitscope._internal.compat import MOVED_MODULES


CHECK_ALL = """
import importlib, json, sys, warnings
from vitscope._internal.compat import MOVED_MODULES
bad = []
for old, new in sorted(MOVED_MODULES.items()):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        mod = importlib.import_module(old)
    msgs = [str(x.message) for x in w if x.category is DeprecationWarning]
    if mod is not importlib.import_module(new) or not any(old in m and new in m for m in msgs):
        bad.append((old, new, repr(mod), msgs))
print(json.dumps(bad))
"""


def test_every_moved_module_is_its_new_module_with_a_warning():
    """In a fresh interpreter (nothing imported yet): each old name is the very module object
    of its new home, and importing it warns with both paths."""
    out = subprocess.run([sys.executable, "-c", CHECK_ALL], capture_output=True, text=True,
                         check=True)
    assert json.loads(out.stdout) == []
    assert len(MOVED_MODULES) >= 40


def test_moved_names_of_the_plugin_module_warn_and_work():
    import vitscope.plugin as plugin
    from vitscope.analyze.registry import discover
    from vitscope.plugin.masks import pointing
    with pytest.warns(DeprecationWarning, match="vitscope.analyze.registry.discover"):
        assert plugin.discover is discover
    with pytest.warns(DeprecationWarning, match="vitscope.plugin.masks.pointing"):
        assert plugin.pointing_hits is pointing
    with pytest.raises(AttributeError):
        plugin.no_such_name


def test_from_vitscope_import_an_old_module_works():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sys.modules.pop("vitscope.mosaic", None)
        from vitscope import mosaic
    assert mosaic is importlib.import_module("vitscope.render.mosaic")
    assert any("vitscope.render.mosaic" in str(w.message) for w in caught)


def test_the_example_plugin_written_against_old_paths_still_works(tmp_path):
    """examples/vitscope-attention-entropy imports vitscope.figures and vitscope.plugin.Option
    as version 0.1 documented; it is installed (make install) and renders through the CLI."""
    code = ("import warnings\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    import vitscope_attention_entropy as m\n"
            "print(m.AttentionEntropy.name)\n"
            "print([str(x.message) for x in w if x.category is DeprecationWarning])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    name, messages = out.stdout.splitlines()[:2]
    assert name == "attention-entropy" and "vitscope.render.figures" in messages
    from vitscope.analyze.run import render_plugins
    from vitscope.analyze.registry import discover
    from vitscope.testing import make_dump
    dump = make_dump(tmp_path / "d.h5", hooks=["blocks.*.attn.weights", "cls"])
    (res,) = render_plugins(dump, [discover().get("attention-entropy")], tmp_path / "out",
                            interactive=False)
    assert res.ok, res.error
    assert any(f.suffix == ".png" for f in res.files)
