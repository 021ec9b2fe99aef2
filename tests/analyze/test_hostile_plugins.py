"""Fault suite, plugins and the dump they read (#26 items 4, 7, 9, 14): NaN and infinity in one
image never become a figure that looks whole; a plugin cannot damage the shared dump, write
outside its folder, publish links or outlive `analyze`; a dump replaced while analyze reads it
stops the run instead of mixing two captures on one page. Real plugin distributions, the real
CLI."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from faultkit import ROOT, cli, one_error_line, snapshot
from plugin_dists import write_distribution
from vitscope._internal.sandbox import OFF_ENV, landlock_abi

HOSTILE = textwrap.dedent('''
    import os, time
    from pathlib import Path

    class RewritesDump:
        """Reopens the shared dump for writing and changes its labels."""
        name = "rewrites-dump"
        requires = ()
        def render(self, dump, out_dir, options):
            import h5py, numpy as np
            path = dump.path
            dump.close()
            with h5py.File(path, "r+", locking=False) as f:
                f["labels"][...] = np.zeros(len(f["labels"]), np.int64) + 1
            return []

    class WritesBeside:
        """Replaces another plugin's published figure through out_dir/.."""
        name = "writes-beside"
        requires = ()
        def render(self, dump, out_dir, options):
            (Path(out_dir) / ".." / "rollout" / "rollout.png").write_bytes(b"replaced")
            return []

    class Outlives:
        """A grandchild in a session of its own that edits index.html after analyze ends."""
        name = "outlives"
        requires = ()
        def render(self, dump, out_dir, options):
            index = Path(out_dir).parent / "index.html"
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    (Path(out_dir) / "grandchild.pid").write_text(str(os.getpid()))
                    time.sleep(1.0)
                    try:
                        with open(index, "a") as f:
                            f.write("<script>alert(1)</script>")
                    except OSError:
                        pass
                    time.sleep(600)
                os._exit(0)
            deadline = time.time() + 10
            while not (Path(out_dir) / "grandchild.pid").exists() and time.time() < deadline:
                time.sleep(0.01)
            return [Path(out_dir) / "grandchild.pid"]

    class PublishesLinks:
        """Leaves a link to /etc/passwd in its folder and returns None."""
        name = "publishes-links"
        requires = ()
        def render(self, dump, out_dir, options):
            os.symlink("/etc/passwd", Path(out_dir) / "passwd.txt")
            (Path(out_dir) / "fine.txt").write_text("fine")
            return None

    class Waits:
        """Renders until the test says go (GO_FILE), after saying it is reading (ready)."""
        name = "waits"
        requires = ()
        def render(self, dump, out_dir, options):
            (Path(out_dir) / "ready").write_text(str(len(dump)))
            deadline = time.time() + 120
            while not Path(os.environ["GO_FILE"]).exists() and time.time() < deadline:
                time.sleep(0.02)
            return [Path(out_dir) / "ready"]
''')
EPS = {"rewrites-dump": "{mod}:RewritesDump", "writes-beside": "{mod}:WritesBeside",
       "outlives": "{mod}:Outlives", "publishes-links": "{mod}:PublishesLinks",
       "waits": "{mod}:Waits"}
KERNEL = landlock_abi() >= 1


@pytest.fixture
def hostile(tmp_path, monkeypatch, request):
    module = f"hostile_plugins_{abs(hash(request.node.name)) % 10**8}"
    root = write_distribution(tmp_path / "site", "hostile-plugins", module, HOSTILE, EPS)
    monkeypatch.syspath_prepend(str(root))
    yield root
    sys.modules.pop(module, None)


@pytest.fixture
def dump_copy(small_dump, tmp_path):
    """A private copy of the shared 12-image dump (and its checkpoint)."""
    path, ckpt = small_dump
    copy = tmp_path / "dump.h5"
    shutil.copyfile(path, copy)
    return copy, ckpt


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def lines_of(output: str, status: str) -> dict[str, str]:
    return {line.split()[1].split("@")[0]: line for line in output.splitlines()
            if line.startswith(status)}


# ------------------------------------------------------------------------- items 4 and 14

def test_nan_and_inf_in_single_images_fail_the_plugins_that_read_them(dump_copy, tmp_path):
    dump, _ = dump_copy
    with h5py.File(dump, "r+") as f:
        damage = {"acts/blocks.0.attn.weights": (1, np.nan), "grads/blocks.1.attn.weights":
                  (4, np.inf), "acts/cls": (2, np.inf), "acts/blocks.0.out": (5, -np.inf)}
        for key, (image, value) in damage.items():
            row = f[key][image]
            row.flat[0] = value
            f[key][image] = row
    out = tmp_path / "out"
    result = cli("analyze", "--all", "--dump", dump, "-o", out,
                 "--opt", "cls-embedding.umap=false")
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    failed = lines_of(result.output, "FAILED")
    expected = {"rollout", "token-attention", "cls-heatmap", "grad-rollout", "attn-grad",
                "cls-embedding", "norm-activations", "gradcam"}
    assert expected <= set(failed), result.output
    for name, line in failed.items():
        assert "holds NaN or infinite values in" in line and "of the dump's 12" in line, line
        assert "sklearn" not in line and "report it to the package" not in line, line
    assert "in blocks.0.attn.weights for image 1 of" in failed["rollout"]
    assert "in grad:blocks.1.attn.weights for image 4 of" in failed["attn-grad"]
    assert "for image 5 of" in failed["cls-embedding"] and "for image 5 of" in \
        failed["norm-activations"]          # item 14: not scikit-learn's "Input X contains NaN"
    # whatever says "ok" wrote only finite numbers
    for name in lines_of(result.output, "ok"):
        for npz in (out / name).glob("*.npz"):
            with np.load(npz) as data:
                assert all(np.isfinite(data[k]).all() for k in data.files
                           if data[k].dtype.kind == "f"), npz
        summary = out / name / "summary.json"
        if summary.is_file():
            assert "NaN" not in summary.read_text() and "nan" not in summary.read_text()


# ------------------------------------------------------------------------------ item 9

@pytest.mark.parametrize("kernel", [pytest.param(True, marks=pytest.mark.skipif(
    not KERNEL, reason="no Landlock in this kernel")), False], ids=["landlock", "detection"])
def test_a_plugin_cannot_damage_the_dump_or_another_plugins_figures(hostile, dump_copy,
                                                                     tmp_path, monkeypatch,
                                                                     kernel):
    if not kernel:
        monkeypatch.setenv(OFF_ENV, "1")
    dump, _ = dump_copy
    out = tmp_path / "out"
    assert cli("analyze", "--dump", dump, "-p", "rollout", "-o", out).exit_code == 0
    figure, before_dump = sha(out / "rollout" / "rollout.png"), sha(dump)
    before = snapshot(out)
    pages = {n: (out / n).read_bytes() for n in ("manifest.json", "index.html")}
    with h5py.File(dump, "r") as f:
        labels = f["labels"][:]

    result = cli("analyze", "--dump", dump, "-p", "rewrites-dump", "-o", out)
    if kernel:      # the write is refused in the plugin: it fails alone, nothing changed
        assert "outside its output folder, and was refused" in \
            lines_of(result.output, "FAILED")["rewrites-dump"]
        assert sha(dump) == before_dump
    else:           # found afterwards: the run stops, the dump is never reused
        one_error_line(result, "changed the dump", "nothing was published", ".damaged")
        assert not dump.exists() and Path(f"{dump}.damaged").is_file()
        assert snapshot(out) == before
        shutil.copyfile(f"{dump}.damaged", dump)
        with h5py.File(dump, "r+") as f:
            f["labels"][...] = labels
        before_dump = sha(dump)

    result = cli("analyze", "--dump", dump, "-p", "writes-beside", "-p", "rollout", "-o", out)
    if kernel:
        failed = lines_of(result.output, "FAILED")
        assert "outside its output folder" in failed["writes-beside"], result.output
        assert "rollout" in lines_of(result.output, "ok")
        assert sha(out / "rollout" / "rollout.png") == figure
    else:
        one_error_line(result, "Plugin 'writes-beside' changed rollout/rollout.png",
                       "nothing was published")
        assert {n: (out / n).read_bytes() for n in pages} == pages
    assert sha(dump) == before_dump


def test_links_are_never_published(hostile, small_dump, tmp_path):
    dump, _ = small_dump
    out = tmp_path / "out"
    result = cli("analyze", "--dump", dump, "-p", "publishes-links", "-o", out)
    assert result.exit_code == 1
    assert "links are never published" in lines_of(result.output, "FAILED")["publishes-links"]
    assert not any(p.is_symlink() for p in out.rglob("*"))
    assert not (out / "publishes-links" / "fine.txt").exists()


def test_nothing_a_plugin_started_outlives_analyze(hostile, small_dump, tmp_path):
    dump, _ = small_dump
    out = tmp_path / "out"
    result = cli("analyze", "--dump", dump, "-p", "outlives", "-o", out)
    assert result.exit_code == 0, result.output
    pid = int((out / "outlives" / "grandchild.pid").read_text())
    stat = Path(f"/proc/{pid}/stat")
    assert not stat.exists() or stat.read_text().split(") ")[1].startswith("Z"), "still running"
    time.sleep(1.5)                                  # past the moment it would have struck
    assert "<script>alert" not in (out / "index.html").read_text()


# ------------------------------------------------------------------------------ item 7

def test_a_dump_replaced_while_analyze_reads_it_stops_the_run(hostile, dump_copy, tmp_path):
    dump, ckpt = dump_copy
    out, go = tmp_path / "out", tmp_path / "go"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GO_FILE": str(go),
           "PYTHONPATH": os.pathsep.join([str(hostile), *sys.path])}
    child = subprocess.Popen([sys.executable, "-m", "vitscope", "analyze", "--dump", str(dump),
                              "-p", "waits", "-p", "rollout", "-o", str(out)], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob(".vitscope-new-*-waits/ready")) and time.monotonic() < deadline:
            assert child.poll() is None, child.communicate()
            time.sleep(0.05)
        # `vitscope dump --force` writes a new capture over the same path
        result = cli("dump", ckpt, "--limit", 12, "--hooks", "blocks.*.attn.weights",
                     "-o", dump, "--force", "-q")
        assert result.exit_code == 0, result.output
        go.write_text("go")
        stdout, stderr = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 1, stdout + stderr
    one_error_line(subprocess.CompletedProcess([], 1, stdout, stderr),
                   "was replaced or removed while plugin 'waits' read it", "nothing was published")
    assert not (out / "index.html").exists() and not (out / "rollout").exists()
