"""The plugin boundary: what a plugin can do wrong, and that none of it reaches the CLI,
the other plugins or the run folder.

Plugins here are real installed distributions (a *.dist-info folder on sys.path, found by
importlib.metadata like a pip install), rendered by the real CLI; each renders in its own
child process (vitscope.analyze.isolation), so hangs, crashes and exits are real too.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from plugin_dists import write_distribution
from vitscope.cli import main
from vitscope.analyze.registry import discover

EVIL = textwrap.dedent('''
    import os, sys, threading, time
    from pathlib import Path
    from vitscope.plugin import Option

    class Good:
        """Works: writes one file."""
        name = "b-good"
        requires = ("blocks.*.attn.weights",)
        def render(self, dump, out_dir, options):
            p = Path(out_dir) / "good.txt"
            p.write_text(f"{len(dump)} images, {len(dump.hooks)} hooks, cwd {os.getcwd()}")
            return [p]

    class Vandal:
        """Closes the dump, changes dump.hooks and the working folder, then succeeds."""
        name = "a-vandal"
        requires = ("blocks.*.attn.weights",)
        def render(self, dump, out_dir, options):
            dump.hooks.clear()
            dump.close()
            os.chdir("/")
            p = Path(out_dir) / "vandal.txt"
            p.write_text("done")
            return [p]

    class Hangs:
        name = "hangs"
        requires = ()
        def render(self, dump, out_dir, options):
            time.sleep(3600)

    class Exits:
        name = "exits"
        requires = ()
        def render(self, dump, out_dir, options):
            os._exit(0)

    class SysExit:
        name = "sys-exit"
        requires = ()
        def render(self, dump, out_dir, options):
            sys.exit(3)

    class ExitInInit:
        name = "exit-in-init"
        requires = ()
        def __init__(self):
            sys.exit(0)
        def render(self, dump, out_dir, options):
            return []

    class RaisingDescription:
        name = "raising-description"
        requires = ()
        @property
        def description(self):
            raise RuntimeError("no description today")
        def render(self, dump, out_dir, options):
            return []

    class RaisingOptions:
        name = "raising-options"
        requires = ()
        @property
        def options(self):
            raise ValueError("options unavailable")
        def render(self, dump, out_dir, options):
            return []

    class ListSummary:
        name = "list-summary"
        requires = ()
        def render(self, dump, out_dir, options):
            p = Path(out_dir) / "summary.json"
            p.write_text("[1, 2, 3]")
            return [p]

    class ReturnsDatasets:
        name = "returns-datasets"
        requires = ("blocks.*.attn.weights",)
        def render(self, dump, out_dir, options):
            ds = dump[dump.hooks[0]]
            dump.close()
            return [ds]

    class Elsewhere:
        name = "elsewhere"
        requires = ()
        def render(self, dump, out_dir, options):
            p = Path(out_dir).parent / "not-mine.txt"
            p.write_text("outside")
            return [p]

    class Flaky:
        """Fails when FLAKY is set: for re-runs that fail."""
        name = "flaky"
        requires = ()
        def render(self, dump, out_dir, options):
            p = Path(out_dir) / "flaky.txt"
            p.write_text("partial output")
            if os.environ.get("FLAKY"):
                raise RuntimeError("flaked")
            return [p]

    class Lingers:
        """Leaves a forked child and a non-daemon thread behind."""
        name = "lingers"
        requires = ()
        def render(self, dump, out_dir, options):
            pid = os.fork()
            if pid == 0:
                time.sleep(3600)
                os._exit(0)
            (Path(out_dir) / "lingers.pid").write_text(str(pid))   # its folder: all it may write
            threading.Thread(target=time.sleep, args=(3600,), daemon=False).start()
            p = Path(out_dir) / "lingers.txt"
            p.write_text("left a child")
            return [p]
''')

EVIL_EPS = {name: f"{{mod}}:{cls}" for name, cls in [
    ("b-good", "Good"), ("a-vandal", "Vandal"), ("hangs", "Hangs"), ("exits", "Exits"),
    ("sys-exit", "SysExit"), ("exit-in-init", "ExitInInit"),
    ("raising-description", "RaisingDescription"), ("raising-options", "RaisingOptions"),
    ("list-summary", "ListSummary"), ("returns-datasets", "ReturnsDatasets"),
    ("elsewhere", "Elsewhere"), ("lingers", "Lingers"), ("flaky", "Flaky"),
    (".", "Good"), ("..", "Good"), ("index.html", "Good"), ("Up Case", "Good")]}


@pytest.fixture
def evil(tmp_path, monkeypatch, request):
    module = f"evil_plugins_{abs(hash(request.node.name)) % 10**8}"
    root = write_distribution(tmp_path / "site", "evil-plugins", module, EVIL, EVIL_EPS)
    monkeypatch.syspath_prepend(str(root))
    yield root
    sys.modules.pop(module, None)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def lines_of(output: str, prefix: str) -> dict[str, str]:
    out = {}
    for line in output.splitlines():
        if line.startswith(prefix):
            out[line.split()[1]] = line
    return out


# ------------------------------------------------------------------------- discovery

def test_unsafe_names_raising_attributes_and_exit_in_init_are_broken_not_fatal(evil):
    res = run("plugins", "--verbose")
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output
    registry = discover()
    expected = {
        "exit-in-init": "creating", "raising-description": "reading its 'description' attribute "
        "raised RuntimeError: no description today",
        "raising-options": "reading its 'options' attribute raised ValueError",
        ".": "not a safe plugin name", "..": "not a safe plugin name",
        "index.html": "reserved", "Up Case": "not a safe plugin name",
    }
    for name, reason in expected.items():
        entry = registry.first(name).load()
        assert not entry.ok and reason in entry.error, (name, entry.error)
        assert f"reason: {entry.error}" in res.output
    assert "SystemExit" in registry.first("exit-in-init").error
    js = run("plugins", "--json")
    assert js.exit_code == 0
    rows = {r["name"]: r for r in json.loads(js.output)}
    assert rows[".."]["status"] == "broken" and rows["b-good"]["status"] == "ok"


def _broken_distributions(root: Path) -> None:
    """Three distributions that cannot be decoded, beside a working plugin package."""
    source = "from pathlib import Path\nclass P:\n    name = 'meta-broken'\n    requires = ()\n" \
             "    def render(self, dump, out_dir, options):\n" \
             "        p = Path(out_dir) / 'x.txt'; p.write_text('x'); return [p]\n"
    write_distribution(root, "meta-broken", "meta_broken_plugin", source,
                       {"meta-broken": "{mod}:P"},
                       metadata=b"Metadata-Version: 2.1\nName: meta\xff-broken\nVersion: 0.1\n")
    write_distribution(root, "eps-broken", None, None, {},
                       entry_text=b"[vitscope.plugins]\nbad\xff = nowhere:Plugin\n")
    write_distribution(root, "other-broken", None, None, {},
                       entry_text=b"[console_scripts]\nx\xfe = y:z\n")   # not a plugin package


def test_undecodable_metadata_never_breaks_the_cli(tmp_path, small_dump):
    """A byte 0xff in METADATA or entry_points.txt, for real on sys.path of a real process."""
    site = tmp_path / "site"
    _broken_distributions(site)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site),
                                                         os.environ.get("PYTHONPATH", "")])}
    exe = str(Path(sys.executable).with_name("vitscope"))
    listing = subprocess.run([exe, "plugins", "-v"], capture_output=True, text=True, env=env)
    assert listing.returncode == 0, listing.stderr
    assert "Traceback" not in listing.stderr + listing.stdout
    rollout = next(line for line in listing.stdout.splitlines() if line.startswith("rollout "))
    assert " ok " in rollout
    # Its metadata is unreadable but its entry points are fine: it still works.
    assert "meta-broken" in listing.stdout
    assert "eps-broken" in listing.stdout and "unreadable" in listing.stdout
    assert "other-broken" not in listing.stdout + listing.stderr   # not a plugin package
    for autoload_off in (False, True):
        js = subprocess.run([exe, "plugins", "--json"], capture_output=True, text=True,
                            env={**env, "VITSCOPE_DISABLE_PLUGIN_AUTOLOAD": "1"} if autoload_off
                            else env)
        assert js.returncode == 0 and "Traceback" not in js.stderr, js.stderr
        names = {r["name"] for r in json.loads(js.stdout)}
        assert "rollout" in names and ("meta-broken" in names) != autoload_off
    dump_path, ckpt = small_dump
    out = tmp_path / "out"
    res = subprocess.run([exe, "analyze", "--dump", str(dump_path), "-p", "rollout",
                          "--static", "-o", str(out)], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr and (out / "rollout" / "rollout.png").is_file()


# ------------------------------------------------------------------------- rendering

def test_a_plugin_cannot_break_the_next_one_or_the_run_folder(evil, small_dump, tmp_path,
                                                              monkeypatch):
    dump_path, _ = small_dump
    monkeypatch.chdir(tmp_path)
    out = Path("rel-out")            # a relative -o: the vandal's chdir must not move it
    res = run("analyze", "--dump", dump_path, "-p", "a-vandal", "-p", "b-good",
              "-p", "list-summary", "-p", "returns-datasets", "-p", "elsewhere", "-o", out)
    assert res.exit_code == 1, res.output
    assert os.getcwd() == str(tmp_path)
    ok, failed = lines_of(res.output, "ok"), lines_of(res.output, "FAILED")
    assert set(ok) == {"a-vandal", "b-good"}
    good = (tmp_path / out / "b-good" / "good.txt").read_text()
    from vitscope.dump import Dump
    with Dump.open(dump_path) as d:
        hooks = len(d.hooks)
    assert good == f"12 images, {hooks} hooks, cwd {tmp_path}"   # its own dump, hooks, folder
    assert "summary.json holds a JSON list" in failed["list-summary"]
    assert "returned a CheckedDataset among its files" in failed["returns-datasets"]
    assert "outside its output folder" in failed["elsewhere"]
    assert "Traceback" not in res.output
    index = (tmp_path / out / "index.html").read_text()
    assert "b-good" in index and "summary.json holds a JSON list" in index
    manifest = json.loads((tmp_path / out / "manifest.json").read_text())
    assert manifest["plugins"]["b-good"]["files"] == ["b-good/good.txt"]


def test_hang_exit_and_sys_exit_fail_alone_with_the_index_written(evil, small_dump, tmp_path):
    dump_path, _ = small_dump
    out = tmp_path / "out"
    t0 = time.monotonic()
    res = run("analyze", "--dump", dump_path, "-p", "hangs", "-p", "exits", "-p", "sys-exit",
              "-p", "b-good", "--plugin-timeout", 3, "-o", out)
    assert time.monotonic() - t0 < 60
    assert res.exit_code == 1, res.output
    failed = lines_of(res.output, "FAILED")
    assert set(failed) == {"hangs", "exits", "sys-exit"}, (res.output, res.exc_info)
    assert "did not finish within the time limit of 3 s" in failed["hangs"]
    stack = (out / "hangs" / "error.log").read_text()       # its stack when it was stopped
    assert re.search(r"evil_plugins_\d+\.py\", line \d+ in render", stack), stack
    assert "exited with code 0 before render returned" in failed["exits"]
    assert "raised SystemExit: 3" in failed["sys-exit"]
    assert "b-good" in lines_of(res.output, "ok")
    index = (out / "index.html").read_text()
    for name in ("hangs", "exits", "sys-exit", "b-good"):
        assert f"id='{name}'" in index


def test_lingering_children_and_threads_are_stopped(evil, small_dump, tmp_path, monkeypatch):
    dump_path, _ = small_dump
    pid_file = tmp_path / "out" / "lingers" / "lingers.pid"
    t0 = time.monotonic()
    res = run("analyze", "--dump", dump_path, "-p", "lingers", "-o", tmp_path / "out")
    assert res.exit_code == 0, res.output
    assert time.monotonic() - t0 < 60
    pid = int(pid_file.read_text())
    for _ in range(50):     # killed with its process group; reaped by init
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        if Path(f"/proc/{pid}/stat").is_file() and \
                Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z"):
            break           # a zombie: dead, waiting for its parent to reap it
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
        pytest.fail(f"the plugin's child {pid} outlived analyze")


def test_a_failed_rerun_keeps_the_earlier_figures(evil, small_dump, tmp_path, monkeypatch):
    """Render into a temporary folder, replace the old one only on success."""
    dump_path, _ = small_dump
    out = tmp_path / "out"
    res = run("analyze", "--dump", dump_path, "-p", "flaky", "-p", "rollout", "--static",
              "-o", out)
    assert res.exit_code == 0, res.output
    before = {p.name: p.read_bytes() for p in (out / "rollout").iterdir()}
    monkeypatch.setenv("FLAKY", "1")
    res = run("analyze", "--dump", dump_path, "-p", "flaky", "-p", "rollout", "--static",
              "--format", "svg", "-o", out)
    assert res.exit_code == 1 and "raised RuntimeError: flaked" in res.output
    assert (out / "flaky" / "flaky.txt").read_text() == "partial output"   # the first run's
    assert "flaked" in (out / "flaky" / "error.log").read_text()          # beside them
    assert {p.name for p in (out / "rollout").iterdir()} != set(before)   # rollout re-rendered
    manifest = json.loads((out / "manifest.json").read_text())["plugins"]
    assert manifest["flaky"]["ok"] and "flaked" in manifest["flaky"]["rerun_error"]
    assert manifest["flaky"]["files"] == ["flaky/flaky.txt"]
    for entry in manifest.values():   # the manifest lists exactly what is there
        assert all((out / f).is_file() for f in entry["files"])
    assert "the latest re-run" in (out / "index.html").read_text()
    assert not list(out.glob(".vitscope-*"))


def test_only_plugin_folders_are_ever_replaced(evil, small_dump, tmp_path):
    dump_path, _ = small_dump
    out = tmp_path / "run"
    (out / "b-good").mkdir(parents=True)
    (out / "b-good" / "mine.txt").write_text("a user's file")
    (tmp_path / "beside.txt").write_text("next to the run folder")
    for _ in range(2):
        res = run("analyze", "--dump", dump_path, "-p", "b-good", "-p", "..", "-p", ".",
                  "-p", "rollout", "--static", "-o", out)
        assert res.exit_code == 1
        assert "is not a vitscope plugin folder" in lines_of(res.output, "FAILED")["b-good"]
        assert "not a safe plugin name" in res.output
    assert (out / "b-good" / "mine.txt").read_text() == "a user's file"
    assert (tmp_path / "beside.txt").read_text() == "next to the run folder"
    assert (out / "rollout" / "rollout.png").is_file() and (out / "index.html").is_file()
