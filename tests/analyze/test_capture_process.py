"""`vitscope analyze` reads the checkpoint and captures in a child process of its own, so the
process that waits while plugins render never imports torch nor holds the model (issue 23,
item 5): for real, through the console script, with Ctrl-C and SIGTERM mid-capture; and the
worker that carries errors, warnings and results back as if the call ran in-process."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import psutil
import pytest

from vitscope._internal.worker import Worker
from vitscope.errors import NotApplicable

EXE = str(Path(sys.executable).with_name("vitscope"))
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

# runs `vitscope analyze ARGS` in this process, then says whether torch was ever imported here
PROBE = """
import sys
from vitscope.cli import main
try:
    main(sys.argv[1:], standalone_mode=False)
finally:
    print("torch imported:", "torch" in sys.modules)
"""


# ------------------------------------------------------------ functions the worker runs

def warn_and_add(a, b):
    warnings.warn(f"adding {a} and {b}")
    return a + b, os.getpid()


def refuse():
    raise NotApplicable("rollout reads a CLS token; this model has none.", reason="no CLS",
                        instead="use token-attention")


def test_the_worker_returns_warns_and_raises_as_if_in_process():
    with Worker() as side:
        with pytest.warns(UserWarning, match="adding 2 and 3"):
            total, pid = side.call(__name__, "warn_and_add", 2, 3)
        assert total == 5 and pid != os.getpid() and pid == side.pid
        with pytest.raises(NotApplicable, match="reads a CLS token") as caught:
            side.call(__name__, "refuse")
        assert caught.value.reason == "no CLS" and caught.value.instead == "use token-attention"
        with pytest.warns(UserWarning, match="adding 1 and 1"):   # a repeat is not swallowed
            assert side.call(__name__, "warn_and_add", 1, 1)[1] == pid   # one child serves all
        child = psutil.Process(pid)
    assert not psutil.wait_procs([child], timeout=10)[1]            # closed: it is gone


def test_analyze_never_imports_torch_and_its_capture_process_is_gone(shapes_ckpt, tmp_path):
    # attnlrp: a map made with the model at capture, whose options are read on the model's side
    args = ["analyze", str(shapes_ckpt), "-p", "rollout", "-p", "token-attention", "-p", "attnlrp",
            "--static",
            "-n", "8", "-o", "out", "--device", "cpu"]
    res = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=tmp_path, env=ENV,
                         text=True, capture_output=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Captured dump outputs/dumps/run-val-8-" in res.stdout, res.stdout
    assert "torch imported: False" in res.stdout, res.stdout
    assert (tmp_path / "out" / "rollout" / "rollout.png").stat().st_size > 1000
    assert "Traceback" not in res.stderr, res.stderr
    dumps = sorted((tmp_path / "outputs" / "dumps").glob("*.h5"))
    assert len(dumps) == 1
    # the same request again reuses the dump: nothing captured, nothing rewritten
    stamp = dumps[0].stat().st_mtime_ns
    res = subprocess.run([sys.executable, "-c", PROBE, *args[:-4], "-o", "again"], cwd=tmp_path,
                         env=ENV, text=True, capture_output=True, timeout=300)
    assert res.returncode == 0 and "Reusing dump" in res.stdout, res.stdout + res.stderr
    assert sorted((tmp_path / "outputs" / "dumps").glob("*.h5")) == dumps
    assert dumps[0].stat().st_mtime_ns == stamp


def test_a_bad_target_found_on_the_model_side_is_one_sentence(shapes_ckpt, tmp_path):
    res = subprocess.run([EXE, "analyze", str(shapes_ckpt), "-p", "grad-rollout", "--target",
                          "99", "-o", "out"], cwd=tmp_path, env=ENV, text=True,
                         capture_output=True, timeout=300)
    assert res.returncode == 1, res.stdout + res.stderr
    assert res.stderr.strip().splitlines() == [
        "Error: --target 99 is not a class of this model, which has 10 classes (0–9); use "
        "pred, label or an index in that range."], res.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "outputs").exists()


def _mid_capture(shapes_ckpt, tmp_path) -> tuple[subprocess.Popen, list[psutil.Process]]:
    """analyze started in a session of its own (as a terminal's job), once its capture
    process has written part of the dump: (analyze, its descendants)."""
    proc = subprocess.Popen([EXE, "analyze", str(shapes_ckpt), "-p", "rollout", "--static",
                             "--data", "shapes:val=4000", "-n", "4000", "--batch-size", "1",
                             "-o", "out", "--device", "cpu"], cwd=tmp_path, env=ENV,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "outputs" / "dumps").glob("*.partial")):
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    return proc, psutil.Process(proc.pid).children(recursive=True)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups, /proc")
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_stopped_mid_capture_leaves_nothing_and_no_process(shapes_ckpt, tmp_path, how):
    proc, family = _mid_capture(shapes_ckpt, tmp_path)
    try:
        assert family, "the capture runs in a child process"
        if how == "ctrl-c":     # the terminal's SIGINT reaches the whole group
            os.killpg(proc.pid, signal.SIGINT)
        else:                   # `kill PID`: analyze alone
            proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == (130 if how == "ctrl-c" else 143), stderr
    assert "Traceback" not in stderr, stderr
    if how == "ctrl-c":
        assert stderr.strip().splitlines()[-1] == "Interrupted (Ctrl-C): nothing was written.", \
            stderr
    assert not (tmp_path / "out").exists()
    assert not list((tmp_path / "outputs" / "dumps").glob("*.partial"))
    assert not list((tmp_path / "outputs" / "dumps").glob("*.h5"))
    assert not psutil.wait_procs(family, timeout=30)[1]      # the capture process ended too
