"""Ctrl-C as a terminal sends it: SIGINT to the whole foreground process group (analyze and
its fork server), to the real `vitscope` console script. One line, exit code 130, nothing
half made, nothing left running; and no "leaked semaphore" warning at exit after a plugin
that made a multiprocessing lock (numba's threading layer does, in cls-embedding's UMAP)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from plugin_dists import write_distribution

EXE = str(Path(sys.executable).with_name("vitscope"))
PLUGINS = """
import multiprocessing, time
from pathlib import Path

class Hangs:
    name = "hangs"
    requires = ()
    def render(self, dump, out_dir, options):
        time.sleep(3600)

class Locks:
    name = "locks"
    requires = ()
    def render(self, dump, out_dir, options):
        self.lock = multiprocessing.RLock()     # as numba and tqdm make theirs
        p = Path(out_dir) / "done.txt"
        p.write_text("ok")
        return [p]
"""


@pytest.fixture
def env(tmp_path):
    site = write_distribution(tmp_path / "site", "odd-plugins", "odd_plugins", PLUGINS,
                              {"hangs": "{mod}:Hangs", "locks": "{mod}:Locks"})
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def ignores_sigint(pid: int) -> bool:
    """From /proc: whether SIGINT is in the process's ignored set."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGINT - 1) & 1)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_mid_render_is_one_line_130_and_leaves_no_new_folder(small_dump, tmp_path, env):
    dump_path, _ = small_dump
    out = tmp_path / "new-run"
    proc = subprocess.Popen([EXE, "analyze", "--dump", str(dump_path), "-p", "rollout", "-p",
                             "hangs", "-o", str(out)], env=env, text=True, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)                 # a group, as in a terminal
    try:
        seen = []
        deadline = time.monotonic() + 120
        while not any("hangs" in line and "rendering" in line for line in seen):
            assert time.monotonic() < deadline and proc.poll() is None, seen
            seen.append(proc.stdout.readline())
        family = psutil.Process(proc.pid).children(recursive=True)
        server = [p for p in psutil.Process(proc.pid).children() if "forkserver" in
                  " ".join(p.cmdline())]
        assert server and ignores_sigint(server[0].pid)   # its own Ctrl-C traceback is gone
        assert (out / "plotly.min.js").is_file()             # rollout's page wrote it
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines() == [
        "Interrupted (Ctrl-C): nothing was written."], stderr      # no traceback, no Aborted!
    assert not out.exists()                                        # not even plotly.min.js
    assert not psutil.wait_procs(family, timeout=20)[1]            # server and plugin stopped


def test_no_leaked_semaphore_warning_after_a_plugin_that_made_a_lock(small_dump, tmp_path,
                                                                      env):
    dump_path, _ = small_dump
    res = subprocess.run([EXE, "analyze", "--dump", str(dump_path), "-p", "locks", "-o",
                          str(tmp_path / "out")], env=env, text=True, capture_output=True,
                         timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "leaked semaphore" not in res.stderr and "Warning" not in res.stderr, res.stderr
