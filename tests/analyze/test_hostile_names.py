"""Fault suite, file names that are not UTF-8 and commits that cannot be finished (#26 item 11):
names are bytes on Linux; vitscope carries them (surrogateescape), stores them as the bytes
they are, shows them escaped, and a run folder whose interrupted commit cannot be finished is
rolled back with one warning instead of being broken for every later run."""
from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

from faultkit import cli
from plugin_dists import write_distribution


def bytes_path(folder: Path, name: bytes) -> str:
    """`folder/name` for a name that is not UTF-8, as Python carries it (surrogateescape)."""
    return os.fsdecode(os.path.join(os.fsencode(str(folder)), name))


def test_image_names_that_are_not_utf8_are_analysed_and_shown_escaped(small_dump, tmp_path,
                                                                       monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, ckpt = small_dump
    images = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for cls in ("disk", "square"):
        (images / cls).mkdir(parents=True)
        for name in (b"a\xff.png", b"b.png"):
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(
                bytes_path(images / cls, name))
    out = tmp_path / "folder"
    result = cli("analyze", "-p", "rollout", ckpt, "--data", f"folder:{images}", "-n", 4,
                 "-o", out)
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    page = (out / "rollout" / "rollout.html").read_text(encoding="utf-8")
    assert '"a\\\\xff.png' in page                     # the caption, shown escaped (in JSON)
    from vitscope.dump import Dump
    with Dump.open(json.loads((out / "manifest.json").read_text())["run"]["dump"]) as d:
        assert os.fsencode(d.paths[0]).endswith(b"a\xff.png") or any(
            os.fsencode(p).endswith(b"a\xff.png") for p in d.paths)   # the bytes on disk

    one = bytes_path(images / "disk", b"a\xff.png")
    result = cli("analyze", "-p", "rollout", ckpt, "--image", one, "-o", tmp_path / "one")
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output

    odd = bytes_path(tmp_path, b"out\xff")
    dump, _ = small_dump
    result = cli("analyze", "-p", "rollout", "--dump", dump, "-o", odd)
    assert result.exit_code == 0, result.output
    assert "out\\udcff" in result.output                      # shown escaped, not a crash
    page = Path(odd, "index.html").read_text(encoding="utf-8")
    assert "out\\xff" in page and not list(Path(odd).glob(".vitscope-commit-*"))


BAD_NAME = textwrap.dedent('''
    import os
    class BadName:
        """Writes a figure whose name is not UTF-8."""
        name = "bad-name"
        requires = ()
        def render(self, dump, out_dir, options):
            path = os.path.join(os.fsencode(str(out_dir)), b"fig_\\xff\\xfe.png")
            with open(path, "wb") as f:
                f.write(b"\\x89PNG\\r\\n\\x1a\\n")
            return None
''')


def test_a_figure_name_that_is_not_utf8_never_breaks_the_run_folder(small_dump, tmp_path,
                                                                    monkeypatch):
    root = write_distribution(tmp_path / "site", "bad-names", "bad_name_plugin", BAD_NAME,
                              {"bad-name": "{mod}:BadName"})
    monkeypatch.syspath_prepend(str(root))
    dump, _ = small_dump
    out = tmp_path / "out"
    try:
        result = cli("analyze", "--dump", dump, "-p", "bad-name", "-o", out)
    finally:
        sys.modules.pop("bad_name_plugin", None)
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    index = (out / "index.html").read_text(encoding="utf-8")
    assert "fig_\\xff\\xfe.png" in index and "fig_%FF%FE.png" in index   # shown, and linked
    result = cli("analyze", "--dump", dump, "-p", "rollout", "-o", out)     # the folder works
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["bad-name", "index.html", "manifest.json",
                                                     "plotly.min.js", "rollout"]


def test_a_commit_that_cannot_be_finished_is_rolled_back_with_one_warning(small_dump, tmp_path,
                                                                          recwarn):
    dump, _ = small_dump
    out = tmp_path / "out"
    assert cli("analyze", "--dump", dump, "-p", "rollout", "-o", out).exit_code == 0
    figure = (out / "rollout" / "rollout.png").read_bytes()
    # what a killed run left: its new rollout folder and a journal whose pages cannot be made
    staged = out / ".vitscope-new-4242abc-rollout"
    shutil.copytree(out / "rollout", staged)
    (staged / "rollout.png").write_bytes(b"from the killed run")
    (out / ".vitscope-commit-4242abc.json").write_text(json.dumps(
        {"token": "4242abc", "swap": ["rollout"], "logs": [], "manifest": {"plugins": [1, 2]}}))
    result = cli("analyze", "--dump", dump, "-p", "rollout", "-o", out)
    assert result.exit_code == 0, result.output
    warnings = [str(w.message) for w in recwarn]      # the CLI prints each as one Warning: line
    assert len(warnings) == 1 and "could not be finished" in warnings[0] \
        and "rolled back" in warnings[0], warnings
    assert (out / "rollout" / "rollout.png").read_bytes() == figure
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "manifest.json",
                                                     "plotly.min.js", "rollout"]
