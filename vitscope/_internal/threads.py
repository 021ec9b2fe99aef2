"""CPU threads for torch: how many, and how idle ones wait. Torch-free; runs before torch loads.

Why it exists: torch's CPU kernels run on an OpenMP pool of one thread per core whose idle
threads spin (busy-wait) after every parallel region. Where the cores are shared (CI, a
laptop with a browser open, several people on one VM) the spinning threads take the cores
from the process that has work, and every parallel region waits for its slowest thread: on a
2-core VM beside one busy process, `vitscope train --config shapes-quick` ran at 118 images/s
with torch's defaults and 514 with OMP_NUM_THREADS=1
(`benchmarks/thread_contention.py` measures it).

So, unless the user decided otherwise, a `vitscope` command sets before torch loads:

    OMP_WAIT_POLICY=PASSIVE   when other processes keep CPUs busy: idle OpenMP threads sleep
                              instead of spinning
    GOMP_SPINCOUNT=10000      when every CPU is free: idle threads spin briefly, then sleep
                              (sleeping at once costs a third of the idle speed: IDLE_SPINS)
    OMP_NUM_THREADS=n         n = the CPUs this process may use (sched_getaffinity, capped by a
                              cgroup CPU quota), minus the CPUs other processes keep busy at
                              that moment (read from /proc/stat) while some are free, all of
                              them when none is (`auto_threads`)

and when torch was imported first (library use), `torch.set_num_threads(n)` if torch's count is
still its own default. What the user set always wins, most specific first: `--threads
N|auto|torch` on a command, `VITSCOPE_THREADS` = N | auto | torch (torch: leave torch's and
OpenMP's defaults alone, as vitscope did before), OMP_NUM_THREADS in the environment (and
OMP_WAIT_POLICY / GOMP_SPINCOUNT / KMP_BLOCKTIME for the wait), an earlier
`torch.set_num_threads`. The choice is made once per process by the CLI (or `vitscope train`),
never by `import vitscope`: a library does not change its host's threads; `--threads` changes
it.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ENV = "VITSCOPE_THREADS"
AUTO, TORCH = "auto", "torch"
LOAD_SAMPLES = 3           # snapshots of the run queue; the fewest busy CPUs seen counts,
LOAD_INTERVAL_S = 0.003    # so one burst of another process never costs us a thread


@dataclass
class ThreadChoice:
    """What `configure` decided, for headers and benchmarks."""
    threads: int | None       # None: left to torch (VITSCOPE_THREADS=torch)
    source: str               # "auto", "--threads", "VITSCOPE_THREADS", "OMP_NUM_THREADS", ...
    wait_policy: str | None   # the OMP_WAIT_POLICY in effect, if any
    cpus: int                 # CPUs this process may use
    busy: int                 # CPUs found busy with other processes (auto only)

    def describe(self) -> str:
        """One phrase for a command's header, e.g. "2 threads (auto: 2 CPUs)"."""
        if self.threads is None:
            return f"torch's default threads ({TORCH}: {self.cpus} CPUs)"
        busy = f", {self.busy} other task{'s' * (self.busy != 1)} running" if self.busy else ""
        plural = "s" if self.threads != 1 else ""
        return f"{self.threads} thread{plural} ({self.source}: {self.cpus} CPUs{busy})"


_choice: ThreadChoice | None = None


def parse_threads(value: str | int | None) -> int | str | None:
    """"auto" | "torch" | a positive integer (as text or int) -> that; ValueError otherwise."""
    if value is None or value == "":
        return None
    text = str(value).strip().lower()
    if text in (AUTO, TORCH):
        return text
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1 or str(n) != text.lstrip("+"):
        raise ValueError(f"threads must be a positive integer, 'auto' or 'torch', got {value!r}")
    return n


def usable_cpus() -> int:
    """CPUs this process may run on: joblib's count (loky's `cpu_count`, a maintained reading
    of the affinity mask and of cgroup v1 and v2 CPU quotas, nested ones included), so a
    container started with --cpus=2 on a 64-core host uses 2, not 64."""
    from joblib.externals.loky import cpu_count
    return max(1, int(cpu_count(only_physical_cores=False)))


def busy_cpus(cpus: int, samples: int = LOAD_SAMPLES, interval: float = LOAD_INTERVAL_S,
              stat: Path = Path("/proc/stat")) -> int:
    """CPUs that other processes keep busy now: runnable tasks (procs_running, which counts
    this process too) minus one, the fewest of a few snapshots. 0 where unknown, and when this
    process may use only some of the machine's CPUs (the run queue is machine-wide then)."""
    if cpus != (os.cpu_count() or cpus):   # an affinity mask or a CPU quota
        return 0
    fewest = None
    for i in range(samples):
        running = _procs_running(stat)
        if running is None:
            return 0
        fewest = running - 1 if fewest is None else min(fewest, running - 1)
        if fewest <= 0:
            return 0
        if i + 1 < samples:
            time.sleep(interval)
    return max(0, fewest or 0)


def _procs_running(stat: Path) -> int | None:
    try:
        for line in stat.read_text().splitlines():
            if line.startswith("procs_running "):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def auto_threads(cpus: int, busy: int) -> int:
    """Threads for `cpus` usable CPUs of which `busy` are taken by other processes: the free
    ones while some are free; every CPU when none is (then the scheduler shares each core
    between all runnable threads, so fewer threads would only mean a smaller share: measured
    on the shared 2-core VM at load 9, 2 sleeping threads ran 146-194 images/s where 1 ran
    52-108)."""
    if busy >= cpus:
        return cpus
    return max(1, cpus - busy)


def configure(threads: str | int | None = None, source: str = "--threads") -> ThreadChoice:
    """Choose and apply the CPU threads (see the module docstring). `threads` (from
    `--threads`) overrides everything; without it the first call decides and later calls
    return that decision. Safe to call before or after torch is imported."""
    global _choice
    if threads is None and _choice is not None:
        return _choice
    cpus = usable_cpus()
    if threads is not None:
        wanted = parse_threads(threads)
    else:
        try:
            wanted = parse_threads(os.environ.get(ENV))
        except ValueError as e:
            raise ValueError(f"{ENV}: {e}") from None
        source = ENV if wanted is not None else AUTO
    forced = wanted is not None    # --threads / VITSCOPE_THREADS beat OMP_NUM_THREADS and torch
    if wanted == TORCH:
        _choice = ThreadChoice(None, TORCH, os.environ.get("OMP_WAIT_POLICY"), cpus, 0)
        return _choice
    torch = sys.modules.get("torch")
    user_omp = None if forced else _user_omp_threads()
    busy = busy_cpus(cpus)
    if isinstance(wanted, int):
        n = wanted
    elif user_omp is not None:
        n, source = user_omp, "OMP_NUM_THREADS"
    elif not forced and torch is not None and torch.get_num_threads() != _torch_default(cpus):
        n, source = torch.get_num_threads(), "torch.set_num_threads"   # the user's, before us
    else:
        n = auto_threads(cpus, busy)
    _wait_policy(idle=busy == 0 and n <= cpus)   # only honoured before torch loads
    if torch is None:
        if user_omp is None:
            os.environ["OMP_NUM_THREADS"] = str(n)
            os.environ[_MARK] = str(n)
    elif user_omp is None and torch.get_num_threads() != n:
        torch.set_num_threads(n)
    _choice = ThreadChoice(n, source, _policy_text(), cpus, busy)
    return _choice


_MARK = "VITSCOPE_THREADS_SET"  # OMP_NUM_THREADS holds a value vitscope chose, not the user
# Spins of an idle OpenMP thread before it sleeps (libgomp's GOMP_SPINCOUNT; its default is
# 300,000) when every CPU was free at start. Measured on the 2-core VM at load 0.9, shapes-quick
# training images/s, 2 threads: PASSIVE (0 spins) 488 idle / 393 beside a busy process;
# 1,000 spins 534 / 351; 10,000: 765 / 244; 100,000: 797 / 110; torch's defaults 737 / 133.
# So sleeping threads lose a third of the idle speed, spinning ones most of it beside a busy
# process: short spins keep the idle speed and lose less when a process starts later.
IDLE_SPINS = 10_000
_OMP_WAIT = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def _wait_policy(idle: bool) -> None:
    """How idle OpenMP threads wait, unless the user said (OMP_WAIT_POLICY, GOMP_SPINCOUNT or
    KMP_BLOCKTIME set): when every CPU is free, spin briefly (IDLE_SPINS) then sleep, which
    keeps the idle speed; when other processes keep CPUs busy, sleep at once (PASSIVE), so
    spinning threads never take a core from a process that has work."""
    if any(k in os.environ and os.environ.get(_MARK + "_WAIT") != k for k in _OMP_WAIT):
        return
    for k in _OMP_WAIT:
        os.environ.pop(k, None)
    key, value = ("GOMP_SPINCOUNT", str(IDLE_SPINS)) if idle else ("OMP_WAIT_POLICY", "PASSIVE")
    os.environ[key] = value
    os.environ[_MARK + "_WAIT"] = key   # set by vitscope: a child may decide again


def _policy_text() -> str | None:
    if os.environ.get("OMP_WAIT_POLICY"):
        return os.environ["OMP_WAIT_POLICY"]
    if os.environ.get("GOMP_SPINCOUNT"):
        return f"spin {os.environ['GOMP_SPINCOUNT']}"
    return None


def _user_omp_threads() -> int | None:
    """OMP_NUM_THREADS when the user set it (not vitscope, e.g. in a parent process)."""
    value = os.environ.get("OMP_NUM_THREADS")
    if value is None or os.environ.get(_MARK) == value:
        return None
    try:
        n = int(value.split(",")[0])
    except ValueError:
        return None
    return n if n >= 1 else None


def _torch_default(cpus: int) -> int:
    """The intra-op thread count torch picks by itself: one per physical core it can see."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or cpus


def current() -> ThreadChoice:
    """The choice in effect (configuring with the defaults if nothing did yet)."""
    return configure()
