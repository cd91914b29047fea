"""Per-plugin (compositional) guidance on a multi-condition model: does raising one plugin's
scale raise that plugin's fidelity more than the others'?

On a trained ``shapes_multi`` run (text + layout + segmap), the same held-out conditions and
noise are sampled with compositional guidance ``D_u + sum_i s_i (D_i - D_u)``: first every
plugin at the base scale, then each plugin in turn raised to ``--high`` with the others left at
the base. Each setting is scored with every plugin's ``ldm eval`` metric; the table shows the
change from the base row, and the check is that each raised plugin's own metric moves most.

    python -m benchmarks.plugin_guidance --run runs/bench/shapes_multi [--base 1.5] [--high 5]

Results: ``benchmarks/results/plugin_guidance/<variant>.json`` and ``.md`` (variant ``full``
unless named; the run is made by ``python -m benchmarks.plugins shapes_multi``).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

from benchmarks.support.results import machine, markdown_table, write_result  # noqa: E402
from benchmarks.support.runs import load_trained_run  # noqa: E402

METRIC = {"text": "text_caption_match", "layout": "layout_mean_iou", "segmap": "segmap_miou"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a trained shapes_multi run")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--base", type=float, default=1.5, help="every plugin's scale in the base row")
    parser.add_argument("--high", type=float, default=5.0, help="the raised plugin's scale")
    parser.add_argument("--steps", type=int, default=20, help="DPM-Solver++(2M) steps")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--variant", default="full", help="results file stem (default full)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from ldmcore.sampling import sampling_plan
    from ldmcore.eval.tasks import condition_scores, held_out_batch, run_metrics
    from ldmcore.hardware import choose_precision

    cfg, model, _ = load_trained_run(args.run, "python -m benchmarks.plugins shapes_multi")
    plugins = [p for p in model.conditioner.encoders if p in METRIC]
    batch = held_out_batch(cfg, args.n)
    values = model.conditioner.resolve(batch)
    noise = torch.randn((args.n, *model.latent_shape()), generator=torch.Generator().manual_seed(0))
    settings = {"base": {p: args.base for p in plugins}}
    settings.update({f"{p} raised": {**settings["base"], p: args.high} for p in plugins})
    rows = {}
    for label, scales in settings.items():
        t0 = time.perf_counter()
        with torch.inference_mode(), choose_precision("auto").autocast():
            plan = sampling_plan(cfg.sampler, name="dpmpp_2m", steps=args.steps, sigmas="karras",
                                 guidance=args.base, plugin_guidance=scales)
            images = model.sample(values, args.n, plan, noise=noise,
                                  generator=torch.Generator().manual_seed(0)).float()
        rows[label] = {"scales": scales, "seconds": round(time.perf_counter() - t0, 1),
                       **condition_scores(run_metrics(model, cfg.data.name, True), images, values, batch)}
        print(label, rows[label], flush=True)
    checks = {}
    for p in plugins:
        deltas = {q: rows[f"{p} raised"][METRIC[q]] - rows["base"][METRIC[q]] for q in plugins}
        checks[p] = {"deltas": deltas, "own_moves_most": max(deltas, key=deltas.get) == p}
    store = {"machine": machine(), "run": str(args.run), "n": args.n, "base": args.base,
             "high": args.high, "steps": args.steps, "rows": rows, "checks": checks}
    write_result("plugin_guidance", args.variant, store, markdown(store, plugins))


def markdown(store: dict, plugins: list[str]) -> str:
    lines = [f"Run `{store['run']}`, {store['n']} held-out conditions, DPM-Solver++(2M) "
             f"{store['steps']} Karras steps, every plugin at scale {store['base']} unless raised "
             f"to {store['high']}.", ""]
    base = store["rows"]["base"]
    rows = []
    for label, row in store["rows"].items():
        cells = [label]
        for q in plugins:
            value, delta = row[METRIC[q]], row[METRIC[q]] - base[METRIC[q]]
            cells.append(f"{value:.3f}" if label == "base" else f"{value:.3f} ({delta:+.3f})")
        rows.append(cells)
    lines += [markdown_table(["setting", *(METRIC[p] for p in plugins)], rows), ""]
    for p, check in store["checks"].items():
        lines.append(f"- raising {p}: its own metric moves most: "
                     f"{'yes' if check['own_moves_most'] else 'no'}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
