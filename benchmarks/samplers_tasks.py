"""Task fidelity against network evaluations (NFE) for every sampler, on a trained shapes run.

The digits table (``benchmarks.samplers``) reads class fidelity; this one scores a plugin
run on the shapes data with its own ``ldm eval`` metric (layout: mean IoU of requested boxes
with the detected shapes; segmap: mIoU; text: caption match) on the same held-out conditions
and the same per-sample noise, for every shipped sampler and each evaluation budget, plus the
wall time per sample (sampling and decoding, this machine).

    python -m benchmarks.samplers_tasks --run runs/bench/shapes_layout [--n 64] [--nfe 5 10 20 50 100]

Results: ``benchmarks/results/samplers_tasks/<run name>.json`` and ``.md`` (the run is made by
``python -m benchmarks.plugins shapes_layout``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

from benchmarks.support.results import machine, result_paths  # noqa: E402
from benchmarks.support.runs import load_trained_run  # noqa: E402
from benchmarks.support.sampler_plans import BUDGETS, sampler_plans  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a trained shapes plugin run")
    parser.add_argument("--n", type=int, default=64, help="held-out conditions")
    parser.add_argument("--nfe", type=int, nargs="+", default=list(BUDGETS))
    parser.add_argument("--samplers", nargs="+", default=None, help="default: every shipped one")
    parser.add_argument("--spacing", default="trailing", help="timesteps of ddim/ddpm")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from ldmcore.eval.tasks import condition_scores, held_out_batch, run_metrics
    from ldmcore.hardware import choose_precision

    cfg, model, _ = load_trained_run(args.run, "python -m benchmarks.plugins shapes_layout")
    batch = held_out_batch(cfg, args.n)
    values = model.conditioner.resolve(batch)
    noise = torch.randn((args.n, *model.latent_shape()), generator=torch.Generator().manual_seed(0))
    out, table_path = result_paths("samplers_tasks", args.run.name)
    store = {"machine": machine(), "run": str(args.run), "n": args.n,
             "guidance": cfg.sampler.guidance, "rows": {}}
    for name, setup in sampler_plans(args.samplers, args.spacing, cfg.sampler.guidance).items():
        spec = setup["plan"].sampler
        for budget in args.nfe:
            steps = spec.steps_for(budget)
            t0 = time.perf_counter()
            with torch.inference_mode(), choose_precision("auto").autocast():
                images = model.sample(values, args.n, setup["plan"].but(steps=steps), noise=noise,
                                      generator=torch.Generator().manual_seed(0)).float()
            wall = time.perf_counter() - t0
            row = {"sampler": name, "budget": budget, "steps": steps, "evals": spec.evals(steps),
                   "ms_per_sample": round(1e3 * wall / args.n, 1), **condition_scores(run_metrics(model, cfg.data.name, True), images, values, batch)}
            store["rows"][f"{name}@{budget}"] = row
            out.write_text(json.dumps(store, indent=1))
            print(row, flush=True)
    table_path.write_text(markdown(store))
    print(markdown(store))


def markdown(store: dict) -> str:
    rows = list(store["rows"].values())
    metrics = [k for k in rows[0] if k.endswith(("_iou", "_miou", "_match"))]
    budgets = sorted({r["budget"] for r in rows})
    lines = [f"Run `{store['run']}`, {store['n']} held-out conditions, guidance {store['guidance']}, "
             f"on {store['machine']}.", ""]
    for metric in [*metrics, "ms_per_sample"]:
        lines += [f"**{metric}** by network evaluations", "",
                  "| sampler | " + " | ".join(str(b) for b in budgets) + " |",
                  "|---|" + "---|" * len(budgets)]
        for name in dict.fromkeys(r["sampler"] for r in rows):
            cells = [store["rows"].get(f"{name}@{b}", {}).get(metric) for b in budgets]
            lines.append(f"| {name} | " + " | ".join("" if c is None else f"{c:.3g}" for c in cells) + " |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
