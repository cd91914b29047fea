"""precision=auto and threads=auto against the explicit choices, on the demo's training step.

* precision: the demo's diffusion training step (forward + backward + AdamW, the demo's batch
  for what ``auto`` picks) in float32 and in bf16 autocast, at the thread count ``threads=auto``
  picks, timed alternating in this process; the ratio auto / fastest explicit choice (at most 1.10 is the
  goal: the default must never cost more than 10%). Where the CPU emulates bf16 the bf16
  variant runs 3 rounds only (each takes many seconds).
* threads: the same step at torch's default thread count (one per core) and at what
  ``threads=auto`` picks, first with one CPU-bound process spinning beside it (what happens
  when another job shares the machine), then with nothing started beside it; the ratios
  default / auto (above 1: auto is faster).

Usage::

    python -m benchmarks.auto_choice [--reps N] [--variant NAME]

Writes ``benchmarks/results/auto_choice/<variant>.json`` and ``.md`` (variant ``full`` unless
named), headed by the machine and its load. To measure what an AVX2-only CPU would do, cap every
kernel library at AVX2 and name the variant::

    export ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
    python -m benchmarks.auto_choice --variant avx2-kernels
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

from benchmarks.support.demo_step import demo_training_step  # noqa: E402
from benchmarks.support.results import load_average, write_result  # noqa: E402
from benchmarks.support.timing import alternate  # noqa: E402
from ldmcore.hardware import choose_precision, choose_threads, cpu_info, machine_line  # noqa: E402


def precision_table(reps: int) -> dict:
    """At the thread count ``threads=auto`` picks now, as ``ldm train`` would run."""
    threads = choose_threads("auto", look_s=0.5)
    torch.set_num_threads(threads.threads)
    auto = choose_precision("auto", "cpu")
    slow_bf16 = not cpu_info().native_bf16
    steps = {"fp32": demo_training_step("fp32"), "bf16": demo_training_step("bf16")}
    seconds = alternate(steps, 3 if slow_bf16 else reps)
    if slow_bf16:  # bf16 only 3 rounds; float32 gets its full count on its own
        seconds["fp32"] = alternate({"fp32": steps["fp32"]}, reps)["fp32"]
    fastest = min(seconds, key=seconds.get)
    return {"auto_picks": auto.name, "reason": auto.reason, "threads": threads.threads,
            "seconds": {k: round(v, 4) for k, v in seconds.items()},
            "fastest_explicit": fastest,
            "auto_over_fastest": round(seconds[auto.name] / seconds[fastest], 3)}


def _spinner() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def threads_table(reps: int, precision: str, default: int) -> dict:
    """``default``: torch's own thread count, read before anything in this process set it."""
    step = demo_training_step(precision)
    out = {"precision": precision, "torch_default_threads": default}
    for load in ("one busy process beside", "nothing started beside"):
        spinner = _spinner() if load.startswith("one") else None
        try:
            time.sleep(0.5)  # let the spinner get going before auto looks
            auto = choose_threads("auto", look_s=0.5)

            def at(n: int):
                def run() -> None:
                    torch.set_num_threads(n)
                    step()
                return run

            seconds = alternate({"default": at(default), "auto": at(auto.threads)}, reps)
        finally:
            if spinner is not None:
                spinner.kill()
                spinner.wait()
        out[load] = {"auto_threads": auto.threads, "auto_reason": auto.reason,
                     "seconds": {k: round(v, 4) for k, v in seconds.items()},
                     "default_over_auto": round(seconds["default"] / seconds["auto"], 2)}
    torch.set_num_threads(default)
    return out


def markdown(result: dict) -> str:
    p, t = result["precision"], result["threads"]
    lines = ["# precision=auto and threads=auto on the demo's training step", "",
             f"machine: {result['machine']}; before the run: {result['loadavg']}", "",
             f"| precision ({p['threads']} threads) | median s/step |", "|---|---|"]
    lines += [f"| {k}{' (auto)' if k == p['auto_picks'] else ''} | {v} |" for k, v in p["seconds"].items()]
    lines += ["", f"auto picks {p['auto_picks']} ({p['reason']}); auto / fastest explicit "
              f"({p['fastest_explicit']}) = **{p['auto_over_fastest']}**", "",
              f"| threads ({t['precision']}) | default ({t['torch_default_threads']}) s/step | "
              f"auto s/step | auto threads | default / auto |", "|---|---|---|---|---|"]
    for load in ("one busy process beside", "nothing started beside"):
        r = t[load]
        lines.append(f"| {load} | {r['seconds']['default']} | {r['seconds']['auto']} | "
                     f"{r['auto_threads']} | **{r['default_over_auto']}x** |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--variant", default="full", help="results file stem (default full)")
    args = parser.parse_args()
    result = {"machine": machine_line(), "loadavg": load_average(), "precision": None, "threads": None}
    torch_default = torch.get_num_threads()  # precision_table sets what threads=auto picks
    result["precision"] = precision_table(args.reps)
    result["threads"] = threads_table(args.reps, result["precision"]["auto_picks"], torch_default)
    write_result("auto_choice", args.variant, result, markdown(result))


if __name__ == "__main__":
    main()
