"""What every case of the fault suite (tests/*/test_hostile_*.py, test_full_disk.py,
test_kills.py) asserts about a command that meets bad input, a kill or a full disk:

- it exits with status 1 or 2 (click's usage errors are 2), never a crash or 0;
- it prints exactly one `Error:` line and no traceback;
- it leaves no partial output behind, and what was there before is intact (`snapshot`).
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner, Result

from vitscope.cli import main

ROOT = Path(__file__).resolve().parents[1]
# Set to 1 to check only the contract (exit code, one Error: line, no traceback), not the
# wording: how the "before" counts in README's reliability section were taken on older code.
CONTRACT_ONLY = os.environ.get("VITSCOPE_FAULTS_CONTRACT_ONLY") == "1"


def cli(*args, **kwargs) -> Result:
    """The real CLI in this process (stdout and stderr together in `output`)."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True, **kwargs)


def subprocess_cli(*args, cwd=None, env=None, timeout=300) -> subprocess.CompletedProcess:
    """`python -m vitscope ARGS` in a child process: for kills, signals and resource limits."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "vitscope", *map(str, args)], cwd=cwd or ROOT,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


def one_error_line(result, *fragments: str, codes=(1, 2)) -> str:
    """Assert the one-sentence failure contract and return the `Error:` line."""
    if isinstance(result, subprocess.CompletedProcess):
        code, text, crash = result.returncode, result.stdout + result.stderr, None
    else:
        code, text = result.exit_code, result.output
        crash = result.exception if not isinstance(result.exception, SystemExit) else None
    assert crash is None, f"uncaught {type(crash).__name__}: {crash}\n{text}"
    assert code in codes, f"exit code {code}, expected one of {codes}:\n{text}"
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, f"expected exactly one Error: line, got {len(errors)}:\n{text}"
    for fragment in () if CONTRACT_ONLY else fragments:
        assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"
    return errors[0]


def snapshot(*roots: Path) -> dict[str, str]:
    """path -> SHA-256 of every file under `roots` (folders as "dir"), to compare before/after."""
    out: dict[str, str] = {}
    for root in roots:
        root = Path(root)
        if not root.exists():
            continue
        for p in sorted([root, *root.rglob("*")]):
            out[str(p)] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


class held_elsewhere:
    """A lock file held by another process for the block, as a running command holds it
    (vitscope._internal.locks: locks are re-entrant within one process, so a test cannot hold
    one for the CLI it runs in the same process)."""

    CODE = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'%d\\n' % os.getpid()); "
            "print('held', flush=True); time.sleep(600)")

    def __init__(self, lock_file: Path) -> None:
        self.lock_file = Path(lock_file)

    def __enter__(self) -> "held_elsewhere":
        self.lock_file.parent.mkdir(parents=True, exist_ok=True)
        self.child = subprocess.Popen([sys.executable, "-c", self.CODE, str(self.lock_file)],
                                      stdout=subprocess.PIPE, text=True)
        assert self.child.stdout.readline().strip() == "held"
        return self

    def __exit__(self, *exc) -> None:
        self.child.kill()
        self.child.wait()
        self.lock_file.unlink(missing_ok=True)
