"""CPU thread policy (vitscope._internal.threads): what a fresh process gets when a command
configures threads, what the user sets always wins, the idle case keeps every usable CPU, and
`import vitscope` alone changes nothing. Real subprocesses with real torch: the policy acts
before torch loads."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from vitscope._internal import threads

CLEAN = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT",
         "KMP_BLOCKTIME", threads.ENV, threads._MARK, threads._MARK + "_WAIT")
PROBE = ("import json, os, sys{pre}; from vitscope._internal import threads; "
         "c = threads.configure(); import torch as t; "
         "print(json.dumps({{'torch': t and t.get_num_threads(), "
         "'policy': os.environ.get('OMP_WAIT_POLICY'), 'omp': os.environ.get('OMP_NUM_THREADS'),"
         " 'spin': os.environ.get('GOMP_SPINCOUNT'),"
         " 'threads': c.threads, 'source': c.source, 'cpus': c.cpus, 'busy': c.busy}}))")


def fresh_env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLEAN}
    env.update(extra)
    return env


def probes(*cases: tuple[str, dict]) -> list[dict]:
    """What fresh Python processes see after threads.configure() (what every command runs
    first) and `import torch`, one per (code run first, environment) case; started together,
    since each spends seconds importing torch."""
    procs = [subprocess.Popen([sys.executable, "-c", PROBE.format(pre=pre)],
                              env=fresh_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for pre, env in cases]
    got = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
        got.append(json.loads(out.strip().splitlines()[-1]))
    return got


def test_importing_vitscope_changes_nothing_in_the_host():
    """A library must not set its host's threads or environment: `import vitscope` (and its
    reading side) leaves os.environ and torch's thread count as they were, and loads no torch."""
    code = ("import os, sys; before = dict(os.environ); import vitscope, vitscope.dump, "
            "vitscope.plugin, vitscope.render.figures; assert 'torch' not in sys.modules; "
            "assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items()); "
            "import torch; n = torch.get_num_threads(); import vitscope.model, vitscope.capture; "
            "assert torch.get_num_threads() == n and dict(os.environ) == before; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], env=fresh_env(), capture_output=True,
                         text=True, timeout=180)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    assert "OMP_NUM_THREADS" not in fresh_env()


def test_thread_policy_when_configured_and_what_the_user_set_wins():
    auto, torch_first, user_torch, user_omp, torch_default = probes(
        ("", {}), ("; import torch", {}), ("; import torch; torch.set_num_threads(1)", {}),
        ("", {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "ACTIVE"}), ("", {threads.ENV: "torch"}))
    # vitscope imported before torch: the pool is the usable CPUs that no other process keeps
    # busy; idle OpenMP threads sleep at once when some are busy, else spin briefly first
    if auto["busy"]:
        assert (auto["policy"], auto["spin"]) == ("PASSIVE", None)
    else:
        assert (auto["policy"], auto["spin"]) == (None, str(threads.IDLE_SPINS))
    assert auto["source"] == "auto" and auto["cpus"] == threads.usable_cpus()
    assert 1 <= auto["threads"] <= auto["cpus"]
    assert auto["threads"] == threads.auto_threads(auto["cpus"], auto["busy"])
    assert auto["torch"] == auto["threads"] and auto["omp"] == str(auto["threads"])
    # torch imported first (library use): the wait policy can no longer act, the count still does
    assert torch_first["source"] == "auto" and torch_first["torch"] == torch_first["threads"]
    # what the user set wins
    assert (user_omp["threads"], user_omp["omp"], user_omp["source"], user_omp["policy"],
            user_omp["spin"]) == (1, "1", "OMP_NUM_THREADS", "ACTIVE", None)
    assert torch_default["threads"] is None and torch_default["omp"] is None
    assert torch_default["policy"] is None          # torch's and OpenMP's own defaults
    assert (user_torch["torch"], user_torch["source"]) == (1, "torch.set_num_threads")


def test_idle_machine_keeps_every_usable_cpu(tmp_path):
    """The idle case is not slowed: with nothing else runnable, auto uses all usable CPUs
    (torch's own count), and another process's burst never costs a thread."""
    cpus = os.cpu_count()
    stat = tmp_path / "stat"
    stat.write_text("cpu  1 2 3\nprocs_running 1\nprocs_blocked 0\n")
    if threads.usable_cpus() != cpus:
        pytest.skip("an affinity mask or CPU quota: the machine-wide run queue is not ours to read")
    assert threads.busy_cpus(cpus, stat=stat) == 0
    assert threads.auto_threads(cpus, 0) == cpus
    stat.write_text("procs_running 3\n")          # this process and two busy ones
    assert threads.busy_cpus(cpus, interval=0, stat=stat) == 2
    assert threads.auto_threads(2, 1) == 1 and threads.auto_threads(4, 1) == 3
    # no core free: every thread gets the same share of a core, so keep all of them
    assert threads.auto_threads(2, 2) == 2 and threads.auto_threads(2, 7) == 2
    assert threads.busy_cpus(cpus + 1, stat=stat) == 0   # part of the machine: unknown, so 0
    assert threads.busy_cpus(cpus, stat=tmp_path / "missing") == 0


def test_usable_cpus_follow_the_affinity_mask():
    """joblib's count reads the affinity mask (and cgroup quotas): pinned to one CPU, auto
    takes one thread."""
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no affinity masks on this platform")
    code = ("import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); "
            "from vitscope._internal import threads; print(threads.usable_cpus())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_bad_values_are_named(value):
    with pytest.raises(ValueError, match="positive integer"):
        threads.parse_threads(value)
    assert threads.parse_threads(" Auto ") == "auto" and threads.parse_threads("3") == 3


@pytest.fixture
def fresh_choice(monkeypatch):
    """The process's thread choice as if no command had decided yet (restored afterwards)."""
    import torch
    monkeypatch.setattr(threads, "_choice", None)
    yield
    torch.set_num_threads(1 if os.environ.get("OMP_NUM_THREADS") == "1" else 2)


def test_cli_threads_option_is_applied_and_named(tmp_path, fresh_choice):
    import torch
    from click.testing import CliRunner
    from vitscope.cli import main
    res = CliRunner().invoke(main, [
        "train", "--threads", "1", "--data", "shapes:train=64,val=32", "--epochs", "1",
        "--batch-size", "32", "--device", "cpu", "--set", "model.image_size=16",
        "--set", "model.embed_dim=16", "--set", "model.depth=1", "--set", "model.num_heads=2",
        "--runs-dir", str(tmp_path / "runs"), "--name", "t"])
    assert res.exit_code == 0, res.output
    assert torch.get_num_threads() == 1
    header = next(l for l in res.output.splitlines() if l.startswith("vitscope train:"))
    assert "1 thread (--threads:" in header
    assert "vit-tiny with " in header and "embed_dim=16" in header   # the overrides are named


def test_bad_thread_settings_fail_before_any_work(tmp_path, fresh_choice, monkeypatch):
    from click.testing import CliRunner
    from vitscope.cli import main
    res = CliRunner().invoke(main, ["train", "--threads", "0", "--runs-dir", str(tmp_path / "r")])
    assert res.exit_code == 2 and "positive integer" in res.output
    monkeypatch.setenv(threads.ENV, "lots")   # read once per process: as in a fresh one
    monkeypatch.setattr(threads, "_choice", None)
    res = CliRunner().invoke(main, ["train", "--data", "shapes:train=64,val=32", "--epochs", "1",
                                    "--runs-dir", str(tmp_path / "r")])
    assert res.exit_code == 2 and "VITSCOPE_THREADS" in res.output
    assert not (tmp_path / "r").exists()


def test_the_wait_depends_on_whether_cpus_are_free_and_the_user_wins(monkeypatch):
    for k in CLEAN:
        monkeypatch.delenv(k, raising=False)
    threads._wait_policy(idle=True)
    assert os.environ["GOMP_SPINCOUNT"] == str(threads.IDLE_SPINS)
    assert "OMP_WAIT_POLICY" not in os.environ
    threads._wait_policy(idle=False)              # decided again (a child): vitscope's own
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE" and "GOMP_SPINCOUNT" not in os.environ
    monkeypatch.delenv(threads._MARK + "_WAIT")
    monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.setenv("KMP_BLOCKTIME", "0")      # the user's: left alone, nothing added
    threads._wait_policy(idle=True)
    assert os.environ["KMP_BLOCKTIME"] == "0"
    assert "GOMP_SPINCOUNT" not in os.environ and "OMP_WAIT_POLICY" not in os.environ
