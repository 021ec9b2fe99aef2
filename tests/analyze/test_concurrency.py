"""Two processes on one output, and analyze killed in the middle of a re-run: for real.

Every test here runs the real `vitscope` console script in subprocesses. Where an overlap must
be certain, the first process is frozen with SIGSTOP at a known point (its partial file or its
lock file exists) while the second runs, then thawed with SIGCONT: the same interleaving a slow
disk or a busy machine gives, every time.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from plugin_dists import write_distribution
from vitscope.cli import main
from vitscope.dump import Dump

EXE = str(Path(sys.executable).with_name("vitscope"))
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def start(*args, cwd=None, env=None) -> subprocess.Popen:
    return subprocess.Popen([EXE, *map(str, args)], cwd=cwd, env=env or ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen, timeout: float = 180) -> tuple[int, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err


def wait_for(condition, what: str, proc: subprocess.Popen, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(f"process ended before {what}: {proc.communicate()}")
        time.sleep(0.005)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}")


def locked_by(lock: Path, pid: int) -> bool:
    try:
        return lock.read_text().strip() == str(pid)
    except OSError:
        return False


@pytest.fixture
def frozen():
    """freeze(proc): SIGSTOP it until the test ends (or thaw(proc) is called)."""
    stopped = []

    def freeze(proc):
        os.kill(proc.pid, signal.SIGSTOP)
        stopped.append(proc)

    yield freeze
    for proc in stopped:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait()


def thaw(proc):
    os.kill(proc.pid, signal.SIGCONT)


# ------------------------------------------------------------------------------ dumps

def test_two_dumps_to_one_file(tmp_path, shapes_ckpt, frozen):
    """The issue's race: B runs start to end while A is mid-capture. A no longer deletes or
    overwrites B's finished file: it says so and removes only its own partial file."""
    out = tmp_path / "same.h5"
    slow = start("dump", shapes_ckpt, "--data", "shapes:val=600", "--batch-size", 1, "-o", out,
                 "--device", "cpu")
    wait_for(lambda: list(tmp_path.glob(f"same.h5.*-{slow.pid}-*.partial")),
             "A's partial file", slow)
    frozen(slow)
    code, text = finish(start("dump", shapes_ckpt, "--limit", 24, "-o", out, "--device", "cpu"))
    assert code == 0 and "Wrote" in text and "24 images" in text, text
    thaw(slow)
    code, text = finish(slow)
    assert code == 1, text
    assert "appeared while this one was written (another process wrote it)" in text, text
    assert "Traceback" not in text and "Wrote" not in text
    with Dump.open(out) as dump:     # B's capture, whole
        assert len(dump) == 24
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("same")) == ["same.h5"]


def test_two_analyses_share_the_dump_cache(tmp_path, shapes_ckpt, frozen):
    """Two analyses of one checkpoint from one folder: the second waits for the first capture
    and reuses it (both used to fail)."""
    a = start("analyze", shapes_ckpt, "-p", "rollout", "--static", "-o", "one", "--device",
              "cpu", cwd=tmp_path)
    cache = tmp_path / "outputs" / "dumps"

    def capturing():   # A captures in a child process of its own, which holds the lock
        family = [a.pid] + [c.pid for c in psutil.Process(a.pid).children(recursive=True)]
        return next((pid for pid in family for p in cache.glob(".*.lock")
                     if locked_by(p, pid)), None)
    holder = wait_for(capturing, "A's lock on the dump it captures", a)
    os.kill(holder, signal.SIGSTOP)   # the capture, frozen (A waits for it)
    frozen(a)
    try:
        b = start("analyze", shapes_ckpt, "-p", "rollout", "--static", "-o", "two",
                  "--device", "cpu", cwd=tmp_path)
        time.sleep(3)
        assert b.poll() is None, b.communicate()     # waiting for A's capture, not failing
    finally:
        os.kill(holder, signal.SIGCONT)
    thaw(a)
    (code_a, text_a), (code_b, text_b) = finish(a), finish(b)
    assert code_a == 0 and "Captured dump" in text_a, text_a
    assert code_b == 0 and "Reusing dump" in text_b, text_b
    assert len(list(cache.glob("*.h5"))) == 1 and not list(cache.glob("*.partial"))
    for run in ("one", "two"):
        assert (tmp_path / run / "rollout" / "rollout.png").is_file()


# ---------------------------------------------------------------------- run folders

def test_two_analyses_into_one_folder(tmp_path, small_dump, frozen):
    dump_path, _ = small_dump
    out = tmp_path / "out"
    a = start("analyze", "--dump", dump_path, "-p", "rollout", "-p", "cls-heatmap", "--static",
              "-o", out)
    wait_for(lambda: locked_by(out / ".vitscope.lock", a.pid), "A's lock on OUT", a)
    frozen(a)
    code, text = finish(start("analyze", "--dump", dump_path, "-p", "token-attention",
                              "--static", "-o", out))
    assert code != 0 and f"'{out}' is in use by process {a.pid}" in text, text
    assert "Traceback" not in text
    thaw(a)
    code, text = finish(a)
    assert code == 0, text
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["plugins"]) == {"rollout", "cls-heatmap"}
    for entry in manifest["plugins"].values():
        assert entry["files"] and all((out / f).is_file() for f in entry["files"])
    assert not (out / ".vitscope.lock").exists() and not list(out.glob(".vitscope-*"))


def test_two_trainings_with_one_name(tmp_path):
    runs = tmp_path / "runs"
    args = ["train", "--name", "same", "--runs-dir", runs, "--data", "shapes:train=64,val=32",
            "--epochs", 3, "--batch-size", 16, "--device", "cpu", "--set", "model.image_size=16",
            "--set", "model.depth=1", "--set", "model.embed_dim=32", "--set",
            "model.num_heads=2"]
    a = start(*args)
    wait_for(lambda: locked_by(runs / ".same.lock", a.pid), "A's lock on the run", a)
    code, text = finish(start(*args))
    assert code != 0 and f"'{runs / 'same'}' is in use by process {a.pid}" in text, text
    assert "Traceback" not in text
    code, text = finish(a)
    assert code == 0, text
    epochs = [json.loads(line)["epoch"] for line in
              (runs / "same" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]                 # one run's, not 1,1,2,2,3,3
    assert not (runs / ".same.lock").exists()


# --------------------------------------------------------------- a killed re-run

HANGS = """
import time
class Hangs:
    name = "hangs"
    requires = ()
    def render(self, dump, out_dir, options):
        time.sleep(3600)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_a_killed_rerun_leaves_the_run_folder_as_it_was(tmp_path, small_dump, sig):
    """The issue's reproduction: the old index.html and manifest.json listed figures that the
    killed re-run had already deleted. Now nothing is swapped in before the run completes."""
    dump_path, _ = small_dump
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["analyze", "--dump", str(dump_path), "-p", "rollout",
                                    "-p", "cls-heatmap", "--static", "-o", str(out)])
    assert res.exit_code == 0, res.output
    before = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*")
              if p.is_file()}
    site = write_distribution(tmp_path / "site", "hangs-plugin", "hangs_plugin", HANGS,
                              {"hangs": "{mod}:Hangs"})
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    # The re-run renders rollout and cls-heatmap again (as SVG), then hangs in the third.
    rerun = start("analyze", "--dump", dump_path, "-p", "rollout", "-p", "cls-heatmap",
                  "-p", "hangs", "--static", "--format", "svg", "-o", out, env=env)
    seen = []

    def two_rendered():
        seen.append(rerun.stdout.readline())
        return sum(line.startswith("ok ") for line in seen) == 2
    wait_for(two_rendered, "the re-run's first two plugins", rerun)
    family = wait_for(lambda: [p for p in psutil.Process(rerun.pid).children(recursive=True)
                               if p.pid not in {q.pid for q in psutil.Process(rerun.pid)
                                                .children()}],
                      "the third plugin's process", rerun)        # a child of the fork server
    family += psutil.Process(rerun.pid).children()                # the fork server
    rerun.send_signal(sig)
    code, text = finish(rerun, timeout=60)
    assert code != 0
    if sig != signal.SIGKILL:
        assert "Traceback" not in text, text
    after = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*")
             if p.is_file()}
    kept = {k: v for k, v in after.items() if not k.startswith(".vitscope")}
    assert kept == before                     # every figure, the manifest and index.html
    if sig != signal.SIGKILL:                 # it cleaned up after itself
        assert set(after) == set(before), sorted(set(after) - set(before))
    gone = psutil.wait_procs(family, timeout=20)[1]
    assert not gone, f"left running: {gone}"
    # The next run finishes what a kill left (or discards it) and works as usual.
    res = CliRunner().invoke(main, ["analyze", "--dump", str(dump_path), "-p", "rollout",
                                    "--static", "--format", "svg", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert not list(out.glob(".vitscope-*")) and (out / "rollout" / "rollout.svg").is_file()
    assert not (out / "rollout" / "rollout.png").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    for entry in manifest["plugins"].values():
        assert all((out / f).is_file() for f in entry["files"])


KILLED_IN_THE_COMMIT = """
import os, signal, sys
from pathlib import Path
real, renames = Path.rename, []
def rename(self, target):   # the commit's renames (staging.finish): SIGKILL after the third
    out = real(self, target)
    renames.append(1)
    if len(renames) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return out
Path.rename = rename
from vitscope.cli import main
sys.argv = ["vitscope", "analyze", "--dump", sys.argv[1], "-p", "rollout", "-p", "cls-heatmap",
            "--static", "--format", "svg", "-o", sys.argv[2]]
main()
"""


def test_a_kill_inside_the_commit_is_finished_by_the_next_run(tmp_path, small_dump):
    """SIGKILL between the renames of the commit (rollout swapped, cls-heatmap moved aside):
    the journal lets the next run of that folder finish the killed run's commit."""
    dump_path, _ = small_dump
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["analyze", "--dump", str(dump_path), "-p", "rollout",
                                    "-p", "cls-heatmap", "--static", "-o", str(out)])
    assert res.exit_code == 0, res.output
    killed = subprocess.run([sys.executable, "-c", KILLED_IN_THE_COMMIT, str(dump_path),
                             str(out)], env=ENV, capture_output=True, text=True, timeout=180)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert list(out.glob(".vitscope-commit-*.json"))            # the journal stays
    assert not (out / "cls-heatmap").exists()                   # torn: moved aside, not back
    res = CliRunner().invoke(main, ["analyze", "--dump", str(dump_path), "-p",
                                    "token-attention", "--static", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert not list(out.glob(".vitscope-*"))
    manifest = json.loads((out / "manifest.json").read_text())["plugins"]
    assert set(manifest) == {"rollout", "cls-heatmap", "token-attention"}
    for name in ("rollout", "cls-heatmap"):                     # the killed run's SVGs
        files = manifest[name]["files"]
        assert files and all(f.endswith((".svg", ".gif", ".npz", ".json")) for f in files), files
        assert not list((out / name).glob("*.png"))
    for entry in manifest.values():
        assert all((out / f).is_file() for f in entry["files"])
