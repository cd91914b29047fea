"""Every built-in condition plugin, trained and measured: the README's results table.

For each dataset the first stage (the KL autoencoder) is trained once, as in the LDM paper, and
every experiment on that dataset starts from it (``autoencoder.checkpoint=...``). Each experiment
then trains its UNet and plugin with ``ldm train experiment=NAME`` and is scored by ``ldm eval``
on held-out conditions. The table reports the shared stage-1 time, each experiment's own time,
their sum (the time to reproduce that experiment alone), the metric and its target.

    python -m benchmarks.plugins                  # all experiments (about 1.5 h on 2 cores)
    python -m benchmarks.plugins shapes_layout    # some of them

Results: ``benchmarks/results/plugins/<variant>.json`` and ``.md`` (variant ``full`` unless
named), and each experiment's evaluation grid as ``<experiment>.png`` beside them (the grids
docs/results.md shows; ``--no-grids`` leaves them as they are).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from benchmarks.support.results import machine, markdown_table, result_paths
from benchmarks.support.timing import timed_command

# experiment -> (dataset, metric key in eval.json, how it passes, target in words)
EXPERIMENTS = {
    "shapes_text": ("shapes", "text_caption_match", lambda r: r["text_caption_match"] >= 0.85,
                    "caption match >= 0.85"),
    "shapes_layout": ("shapes", "layout_mean_iou", lambda r: r["layout_mean_iou"] >= 0.6,
                      "mean IoU >= 0.6"),
    "shapes_segmap": ("shapes", "segmap_miou", lambda r: r["segmap_miou"] >= 0.7, "mIoU >= 0.7"),
    "shapes_multi": ("shapes", "text_caption_match",
                     lambda r: r["text_caption_match"] >= 0.85 and r["layout_mean_iou"] >= 0.6
                     and r["segmap_miou"] >= 0.7, "all three targets"),
    "photos_sr4x": ("photos", "lowres_psnr", lambda r: r["lowres_psnr"] >= r["bicubic_psnr"] + 1.0,
                    "PSNR >= bicubic + 1 dB"),
    "photos_inpaint": ("photos", "inpaint_hole_psnr",
                       lambda r: r["inpaint_known_max_abs_error"] == 0.0
                       and r["inpaint_hole_psnr"] > r["blur_fill_hole_psnr"],
                       "known region exact, hole PSNR > blur fill"),
    "shapes_sr4x": ("shapes", "lowres_psnr",
                    lambda r: r["lowres_psnr"] >= r["bicubic_psnr"] + 3.0 and r["lowres_caption_match"] >= 0.9,
                    "PSNR >= bicubic + 3 dB, caption match >= 0.90"),
    "shapes_inpaint": ("shapes", "inpaint_hole_psnr",
                       lambda r: r["inpaint_known_max_abs_error"] == 0.0
                       and r["inpaint_hole_psnr"] >= r["blur_fill_hole_psnr"] + 3.0
                       and r["inpaint_caption_match"] >= 0.9,
                       "known region exact, hole PSNR >= blur fill + 3 dB, caption match >= 0.90"),
}
# pixel metrics also score the mean of 8 samples per condition (the posterior mean; see
# ldmcore/eval/tasks.py)
EVAL_OPTIONS = {"photos": ["average=8"]}
# held-out conditions scored per experiment (one n=64 reading of a share has a standard error
# of up to 0.06; these targets are read on 256)
EVAL_N = {"shapes_text": 256, "shapes_sr4x": 256, "shapes_inpaint": 256}
# the experiment whose autoencoder settings train each dataset's shared first stage (none when
# it diffuses pixels)
STAGE_ONE = {"shapes": "shapes_layout", "photos": "photos_sr4x"}


def on_pixels(name: str, extra: list[str]) -> bool:
    """Does the experiment diffuse pixels (``autoencoder=pixels``: no first stage to train)?"""
    from ldmcore.config import load

    return load([f"experiment={name}", *extra]).autoencoder.kind == "pixels"


def first_stage(dataset: str, root: Path, reuse: bool, extra: list[str]) -> tuple[Path | None, float]:
    if on_pixels(STAGE_ONE[dataset], extra):
        return None, 0.0
    run = root / f"{dataset}_autoencoder"
    weights = run / "checkpoints" / "autoencoder.safetensors"
    if reuse and weights.exists():
        return weights, json.loads((run / "stage1_time.json").read_text())["wall_s"]
    timing = timed_command(["train", f"experiment={STAGE_ONE[dataset]}", f"run_dir={run}",
                            "trainer.max_steps=0", "trainer.progress=false", "overwrite=true", *extra])
    (run / "stage1_time.json").write_text(json.dumps(timing))
    return weights, timing["wall_s"]


def eval_args(name: str, root: Path) -> list[str]:
    """The ``ldm eval`` arguments that score experiment ``name``."""
    return [f"run={root / name}", f"n={EVAL_N.get(name, 64)}", *EVAL_OPTIONS.get(EXPERIMENTS[name][0], [])]


def experiment(name: str, weights: Path | None, root: Path, extra: list[str]) -> dict:
    run = root / name
    stage1 = [] if weights is None else [f"autoencoder.checkpoint={weights}"]
    train = timed_command(["train", f"experiment={name}", f"run_dir={run}", *stage1,
                           "trainer.progress=false", "overwrite=true", *extra])
    t0 = time.perf_counter()
    timed_command(["eval", *eval_args(name, root)])
    report = json.loads((run / "eval.json").read_text())
    return {"train": train, "eval_s": round(time.perf_counter() - t0, 1), "eval": report}


def table(rows: dict[str, dict]) -> str:
    cells = []
    for name, row in rows.items():
        _, key, _, target = EXPERIMENTS[name]
        cells.append([name, f"{row['stage1_s']:.0f}", f"{row['train']['wall_s']:.0f}",
                      f"{row['stage1_s'] + row['train']['wall_s']:.0f}", key,
                      f"{row['eval'][key]:.3f}", target, "yes" if row["met"] else "no"])
    lines = [markdown_table(["experiment", "stage 1 (shared) s", "own training s", "total s",
                             "metric", "value", "target", "met"], cells), ""]
    lines.append("All metrics of each run (eval.json):")
    lines.append("")
    for name, row in rows.items():
        shown = ", ".join(f"{k} {v:.3f}" for k, v in row["eval"].items() if isinstance(v, float))
        note = row["train"].get("note")
        lines.append(f"- {name}: {shown}" + (f" ({note})" if note else ""))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"some of: {', '.join(EXPERIMENTS)} (default all)")
    parser.add_argument("--root", type=Path, default=Path("runs/bench"))
    parser.add_argument("--reuse-stage1", action="store_true",
                        help="keep a first stage already trained under --root")
    parser.add_argument("--set", nargs="*", default=[], help="extra overrides for every experiment")
    parser.add_argument("--variant", default="full", help="results file stem (default full)")
    parser.add_argument("--no-grids", dest="grids", action="store_false",
                        help="do not copy the evaluation grids into the results folder")
    args = parser.parse_args()
    names = args.names or list(EXPERIMENTS)
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        parser.error(f"unknown experiment {unknown[0]!r}; choose from {', '.join(EXPERIMENTS)}")
    args.root.mkdir(parents=True, exist_ok=True)
    out, table_path = result_paths("plugins", args.variant)
    stage1: dict[str, tuple[Path, float]] = {}
    for name in names:
        dataset = EXPERIMENTS[name][0]
        if dataset not in stage1:
            stage1[dataset] = first_stage(dataset, args.root, args.reuse_stage1, args.set)
        weights, stage1_s = stage1[dataset]
        row = experiment(name, weights, args.root, args.set)
        row["stage1_s"] = stage1_s
        row["met"] = bool(EXPERIMENTS[name][2](row["eval"]))
        stage1_override = "" if weights is None else f" autoencoder.checkpoint={weights}"
        row["command"] = (f"ldm train experiment={name}{stage1_override}; "
                          f"ldm eval {' '.join(eval_args(name, args.root))}")
        # re-read before writing: several invocations may run side by side
        rows: dict[str, dict] = json.loads(out.read_text())["experiments"] if out.exists() else {}
        rows[name] = row
        if args.grids:
            shutil.copy(args.root / name / "eval_grid.png", out.parent / f"{name}.png")
        out.write_text(json.dumps({"machine": machine(), "experiments": rows}, indent=1))
        table_path.write_text(table(rows))
        print(table({name: row}), flush=True)


if __name__ == "__main__":
    main()
