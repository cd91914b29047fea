"""Side-by-side timing: alternate the variants in one process, report medians.

A loaded machine slows every variant alike when they alternate call by call, so the ratio of
medians survives load that the absolute times do not. Peak memory is measured per variant in a
fresh child process (``peak_rss_mib``): the resident-set high-water mark of one call above the
resident set just before it, read from /proc after resetting the mark (Linux ``clear_refs``).
A whole command (``timed_command``) is timed on the wall clock and on its CPU time, which
leaves out the time it waited for a core that another process held.
"""

from __future__ import annotations

import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def alternate(variants: dict[str, Callable[[], object]], reps: int, warmup: int = 1
              ) -> dict[str, float]:
    """Median wall seconds per call of each variant, timed round-robin after ``warmup`` rounds."""
    return alternate_clocks(variants, reps, warmup)["wall"]


def alternate_clocks(variants: dict[str, Callable[[], object]], reps: int, warmup: int = 1
                     ) -> dict[str, dict[str, float]]:
    """Medians per variant on two clocks: ``wall`` (perf_counter) and ``cpu`` (this process's
    CPU time). On a shared machine the CPU clock leaves out the time spent waiting for a core,
    so at one thread it is the steadier measure; with several threads it also counts their
    spin-waits, so the wall clock is then the one to read."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(reps):
        for name, fn in variants.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return {"wall": {n: statistics.median(ts) for n, ts in wall.items()},
            "cpu": {n: statistics.median(ts) for n, ts in cpu.items()}}


def ratios(seconds: dict[str, float], precisions: tuple[str, ...] = ("fp32", "bf16")) -> dict[str, float]:
    """diffusers' best time / ldmcore's, per precision named in the variant names (above 1:
    ldmcore is faster). ``torch.compile``d variants get their own ``PREC_compiled`` ratio."""
    out = {}
    for prec in precisions:
        theirs = [v for k, v in seconds.items() if k.startswith("diffusers") and prec in k]
        ours = [v for k, v in seconds.items()
                if k.startswith("ldmcore") and prec in k and "compiled" not in k]
        if theirs and ours:
            out[prec] = round(min(theirs) / min(ours), 2)
        for k, v in seconds.items():  # torch.compile is an option: its ratio is reported apart
            if theirs and k.startswith("ldmcore") and prec in k and "compiled" in k:
                out[f"{prec}_compiled"] = round(min(theirs) / v, 2)
    return out


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_rss_mib(fn: Callable[[], object]) -> float | None:
    """Resident memory one call of ``fn`` adds at its peak, in MiB (None where /proc lacks it)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        before = _status_kib("VmRSS")
        fn()
        return round((_status_kib("VmHWM") - before) / 1024, 1)
    except (OSError, RuntimeError):
        return None


def timed_command(args: list[str]) -> dict[str, float]:
    """Run ``ldm ARGS`` in a child process: its wall seconds, CPU seconds (user + system) and
    the peak resident memory of the largest child so far (Linux reports no finer figure)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ldmcore.cli", *args], check=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "peak_rss_mib": round(max(after.ru_maxrss, before.ru_maxrss) / 1024, 1)}
