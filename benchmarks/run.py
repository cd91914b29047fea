"""The demo's phases (train, sample, eval: wall and CPU time, peak memory, class fidelity) and
the attention core's two precisions at the demo UNet's shape.

    python -m benchmarks.run [--quick] [--variant NAME]

``--quick`` runs the smoke-size experiment instead of the demo, with fewer repetitions. Each
phase is the command ``make demo`` runs, in a child process. The attention comparison runs both
variants in this one process, alternating, and reports medians and their ratio. Writes
``benchmarks/results/run/<variant>.json`` and ``.md`` (variant ``full``, or ``quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

from benchmarks.support.results import machine, markdown_table, write_result  # noqa: E402
from benchmarks.support.timing import alternate, timed_command  # noqa: E402


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
            "total_cpu_s": round(sum(p["cpu_s"] for p in phases.values()), 2),
            "steps_per_s": rates, "class_fidelity": fidelity["accuracy"],
            "reader_accuracy": fidelity["reader_accuracy"]}


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

    seconds = alternate({"fp32": core(qkv), "bf16": core(qkv16)}, reps)
    t32, t16 = seconds["fp32"], seconds["bf16"]
    return {"shape": list(shape), "fp32_core_ms": round(t32 * 1e3, 2),
            "bf16_core_ms": round(t16 * 1e3, 2), "fp32_core_speedup": round(t16 / t32, 2)}


def flattened(result: dict, prefix: str = "") -> list[tuple[str, object]]:
    """(dotted key, value) of every leaf of a nested result."""
    rows = []
    for key, value in result.items():
        if isinstance(value, dict):
            rows += flattened(value, f"{prefix}{key}.")
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


def markdown(variant: str, result: dict) -> str:
    rows = flattened({k: v for k, v in result.items() if k != "machine"})
    return (f"# {variant}\n\nmachine: {result['machine']}\n\n"
            f"{markdown_table(['measure', 'value'], rows)}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke-size demo, fewer repetitions")
    parser.add_argument("--variant", default=None, help="results file stem (default full, or quick)")
    args = parser.parse_args()
    reps = 3 if args.quick else 10
    result = {"machine": machine(), "attention_core": attention_core(reps), "demo": demo(args.quick)}
    variant = args.variant or ("quick" if args.quick else "full")
    write_result("run", variant, result, markdown(variant, result))


if __name__ == "__main__":
    main()
