"""Benchmarks: the demo's wall time and peak memory, and the attention core's fast path.

Run by ``make bench`` (full demo) or ``make bench-quick`` (smoke-size run). Each comparison runs
both variants in this one process, alternating, several repetitions, and reports medians and the
ratio. Results go to ``benchmarks/results/<name>.json`` and a Markdown table beside it.

Timings are never asserted in tests; they live here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def machine() -> str:
    """The machine, torch, and what precision/threads ``auto`` picks here (the demo's defaults)."""
    from ldmcore.hardware import choose_precision, choose_threads, machine_line

    return (f"{machine_line()}; python {platform.python_version()}; precision=auto -> "
            f"{choose_precision('auto').name}, threads=auto -> {choose_threads('auto').threads}")


def timed_command(args: list[str]) -> dict[str, float]:
    """Wall time and peak RSS of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ldmcore.cli", *args], check=True)
    wall = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"wall_s": round(wall, 2), "peak_rss_mib": round(max(peak_kib, before) / 1024, 1)}


def demo(quick: bool) -> dict:
    """The demo's three phases, as `make demo` runs them."""
    experiment = "smoke" if quick else "demo"
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / experiment
        phases = {
            "train": timed_command(["train", f"experiment={experiment}", f"run_dir={run}",
                                    "trainer.progress=false"]),
            "sample": timed_command(["sample", f"run={run}", "cond.class=[0,1,2,3,4,5,6,7,8,9]",
                                     "n=8", f"out={run / 'final'}"]),
            "eval": timed_command(["eval", f"run={run}", f"samples={run / 'final'}"]),
        }
        metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        fidelity = json.loads((run / "eval.json").read_text())
    rates = {m["stage"]: m["steps_per_s"] for m in metrics if "steps_per_s" in m}
    return {"experiment": experiment, "phases": phases,
            "total_wall_s": round(sum(p["wall_s"] for p in phases.values()), 2),
            "steps_per_s": rates, "class_fidelity": fidelity["accuracy"],
            "reader_accuracy": fidelity["reader_accuracy"]}


def median_time(fn, reps: int) -> float:
    fn()  # warm-up (oneDNN primes its kernels on first use)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def alternating(a, b, reps: int) -> tuple[float, float]:
    """Medians of a and b, timed in alternation so drift hits both alike."""
    a(), b()
    ta, tb = [], []
    for _ in range(reps):
        for fn, acc in ((a, ta), (b, tb)):
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)


def attention_core(reps: int) -> dict:
    """SDPA forward+backward at the demo UNet's attention shape: fp32 core vs bf16 core."""
    import torch.nn.functional as F

    shape = (128, 4, 16, 32)
    qkv = [torch.randn(shape, requires_grad=True) for _ in range(3)]
    qkv16 = [t.detach().bfloat16().requires_grad_() for t in qkv]

    def core(ts):
        def run():
            F.scaled_dot_product_attention(*ts).float().sum().backward()
        return run

    t32, t16 = alternating(core(qkv), core(qkv16), reps)
    return {"shape": list(shape), "fp32_core_ms": round(t32 * 1e3, 2),
            "bf16_core_ms": round(t16 * 1e3, 2), "fp32_core_speedup": round(t16 / t32, 2)}


def write(name: str, result: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1))
    lines = [f"# {name}", "", f"machine: {result['machine']}", "", "| measure | value |", "|---|---|"]

    def flat(prefix: str, obj) -> None:
        for k, v in obj.items():
            if isinstance(v, dict):
                flat(f"{prefix}{k}.", v)
            else:
                lines.append(f"| {prefix}{k} | {v} |")

    flat("", {k: v for k, v in result.items() if k != "machine"})
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke-size demo, fewer repetitions")
    args = parser.parse_args()
    reps = 3 if args.quick else 10
    result = {"machine": machine(), "attention_core": attention_core(reps), "demo": demo(args.quick)}
    write("quick" if args.quick else "full", result)


if __name__ == "__main__":
    main()
