"""``threads``: how many cores the network's kernels use, chosen from what is free.

PyTorch's default is one OpenMP thread per physical core. That is fastest on an idle machine
and collapses on a shared one: OpenMP threads meet at a barrier after every kernel, so when
another process holds one of the cores every kernel waits for the descheduled thread (measured
up to 7x slower per step on 2 shared cores). ``threads=auto`` therefore uses the cores that no
other process is using:

* at start, the cores this process may run on (its affinity, capped by ``OMP_NUM_THREADS``
  when set, and shared among the processes of a ``torchrun`` job) minus the cores other
  processes kept busy over a short look at ``/proc/stat``;
* while training, the same count is taken again every few seconds from the time that passed
  (no extra waiting), so a run speeds back up when the other work ends.

An explicit ``threads=N`` is obeyed as it is and never changed. The kernels may split sums
differently at another thread count, so a run that must repeat bit for bit sets ``threads=N``.
Where ``/proc`` is missing (macOS, Windows) ``auto`` uses every allowed core.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

from ldmcore.errors import ConfigError
from ldmcore.hardware.cpu import available_cores

FREE_CORE = 0.7  # a core counts as free when other processes leave at least this much of it idle


@dataclass(frozen=True)
class ThreadChoice:
    requested: str    # "auto" or the number asked for
    threads: int
    reason: str

    def line(self) -> str:
        return f"threads: {self.threads} ({self.reason})"


@dataclass(frozen=True)
class _CpuTimes:
    """Clock ticks: all of the allowed cores' busy and total time, and this process's own."""
    busy: int
    total: int
    own: int
    cores: int


def _allowed_cpus() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def _snapshot() -> _CpuTimes | None:
    """Busy/total ticks of the allowed cores (``/proc/stat``) and this process's own CPU
    ticks (``/proc/self/stat``: user + system time of all its threads). None off Linux."""
    allowed = _allowed_cpus()
    busy = total = cores = 0
    try:
        with open("/proc/stat") as fh:
            for line in fh:
                name, *fields = line.split()
                if not name.startswith("cpu") or name == "cpu":
                    continue
                if allowed is not None and int(name[3:]) not in allowed:
                    continue
                ticks = [int(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal
                total += sum(ticks)
                busy += sum(ticks) - ticks[3] - ticks[4]
                cores += 1
        with open("/proc/self/stat") as fh:
            stat = fh.read()
        # the command name may hold spaces: fields after its closing parenthesis, utime is 14th
        after = stat.rsplit(")", 1)[1].split()
        own = int(after[11]) + int(after[12])
    except (OSError, ValueError, IndexError):
        return None
    return _CpuTimes(busy, total, own, cores) if cores else None


def _others_busy(before: _CpuTimes, after: _CpuTimes) -> float | None:
    """Cores kept busy by other processes between two snapshots."""
    elapsed = (after.total - before.total) / max(after.cores, 1)  # ticks per core
    if elapsed <= 0:
        return None
    others = (after.busy - before.busy) - (after.own - before.own)
    return max(0.0, others / elapsed)


def _cap() -> tuple[int, str]:
    """The most threads ``auto`` may use, and what set it."""
    cores = available_cores()
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) >= 1:
        return min(cores, int(omp)), f"OMP_NUM_THREADS={omp}"
    local = os.environ.get("LOCAL_WORLD_SIZE", "").strip()
    if local.isdigit() and int(local) > 1:
        return max(1, cores // int(local)), f"{cores} cores shared by {local} torchrun processes"
    return cores, f"{cores} cores"


def _fit(cap: int, others: float | None) -> int:
    if others is None:
        return cap
    return max(1, min(cap, int(cap - others + (1 - FREE_CORE))))


def choose_threads(requested: int | str | None = "auto", look_s: float = 0.2) -> ThreadChoice:
    """Resolve ``requested`` ("auto", None = auto, or a number of threads)."""
    if requested not in (None, "auto"):
        try:
            n = int(requested)
        except (TypeError, ValueError):
            n = 0
        if n < 1:
            raise ConfigError(f"threads={requested!r}: write threads=auto (the cores other processes "
                              f"leave free) or a whole number of threads, at least 1.")
        return ThreadChoice(str(requested), n, "asked for")
    cap, why = _cap()
    before = _snapshot()
    if before is None:
        return ThreadChoice("auto", cap, f"auto: {why}; no /proc/stat to see other load")
    time.sleep(look_s)
    after = _snapshot()
    others = _others_busy(before, after) if after is not None else None
    n = _fit(cap, others)
    busy = "" if others is None else f", other processes busy on {others:.1f}"
    return ThreadChoice("auto", n, f"auto: {why}{busy}")


class ThreadGovernor:
    """Keeps ``torch``'s thread count at the free cores while a long job runs.

    ``tick()`` is called once per training step; every ``every_s`` seconds it compares the
    machine's busy time with this process's own since the last look and changes the count
    when other processes took or freed a core. A fixed ``threads=N`` makes it do nothing.
    """

    def __init__(self, choice: ThreadChoice, every_s: float = 5.0) -> None:
        self.choice = choice
        self.every_s = every_s
        self.threads = choice.threads
        self.adaptive = choice.requested == "auto"
        self.cap = _cap()[0]
        self._last = _snapshot() if self.adaptive else None
        self._last_time = time.monotonic()
        torch.set_num_threads(self.threads)

    def tick(self) -> int | None:
        """Re-fit the thread count if it is time; returns the new count when it changed."""
        if not self.adaptive or self._last is None or time.monotonic() - self._last_time < self.every_s:
            return None
        now = _snapshot()
        others = _others_busy(self._last, now) if now is not None else None
        self._last, self._last_time = now, time.monotonic()
        if others is None:
            return None
        # while we run k threads, a core we occupy is not free to others; what they use of the
        # rest is what they would also take from a thread we add
        n = _fit(self.cap, others)
        if n == self.threads:
            return None
        self.threads = n
        torch.set_num_threads(n)
        return n
