"""Pixel space against latent space for the same training time: the LDM paper's Figure 6 in miniature.

The paper trains the same class-conditional UNet on ImageNet in pixel space (LDM-1) and on the
latents of autoencoders with downsampling factors f = 2 ... 32, and plots FID against training
progress: f = 4 ... 16 reach a given fidelity far sooner than pixels, f = 1 is slow to train and
large f stall on the autoencoder's losses. Here, on this CPU:

* **digits** (``experiment=demo``: class-conditional, 32x32 grey), fidelity = the fraction of
  samples an independent reader (an SVM on the real 8x8 digits) reads as the requested class,
  and the Frechet distance of the samples to real held-out digits in the reader's 8x8 space;
* **shapes** (``experiment=shapes_segmap``: segmentation-map-conditional 32x32 scenes), fidelity
  = mIoU of the requested map with the generated scene's segmentation (``ldm eval``'s metric).

For each f in 1 (``autoencoder=pixels``: no first stage), 2, 4 and 8 the experiment's UNet and
optimiser are trained for the same CPU budget (one thread; default 600 s). Training runs in
segments (``resume=true``, which continues exactly), ending at 1/8, 1/4, 1/2 and all of the
budget; after each, the EMA model samples held-out conditions with the same noise (DPM-Solver++
2M, 20 steps, the experiment's guidance) and is scored. Training time is the trainer's own
measure (steps / steps per second of the segment), so start-up, checkpoints and evaluation are
not counted. The autoencoders are trained first, once per dataset and f (their time is reported
apart, as the paper treats them as pretrained).

    python -m benchmarks.latent_vs_pixel run digits 1 2     # some (dataset, f) runs
    python -m benchmarks.latent_vs_pixel report             # table + plots from what ran

Results in ``benchmarks/results/latent_vs_pixel/``: one ``<dataset>_f<f>.json`` per run, and
from ``report`` the table (``full.md``, all runs in ``full.json``) and one plot per dataset
(``<dataset>.png``, shown by docs/latent-vs-pixel.md). Runs go under ``runs/fig6``; ``--grids``
keeps each evaluation's samples there as ``eval_<i>.png``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.support.results import machine, results_dir
from ldmcore.eval.digits import _to_reader_space, split_digits, train_reader
from ldmcore.eval.tasks import condition_scores, held_out_batch, run_metrics
from ldmcore.hardware import choose_precision
from ldmcore.images import save_grid
from ldmcore.runfolder import load_run
from ldmcore.sampling import sampling_plan

FACTORS = {1: "pixels", 2: "kl_f2", 4: "kl_f4", 8: "kl_f8"}
DATASETS = {
    "digits": {"experiment": "demo", "metric": "class_accuracy", "n": 100, "ae_steps": 400},
    "shapes": {"experiment": "shapes_segmap", "metric": "segmap_miou", "n": 64, "ae_steps": 1000},
}
FRACTIONS = (1 / 8, 1 / 4, 1 / 2, 1.0)
EVAL_STEPS = 20
PART = "{}_f{}.json"  # one (dataset, f) run's result, in the results folder


def ldm(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "ldmcore.cli", *args], check=True)


def first_stage(root: Path, dataset: str, f: int, reuse: dict[str, Path]) -> tuple[Path | None, float]:
    """The autoencoder's weights for (dataset, f) and its training seconds (None for pixels)."""
    if f == 1:
        return None, 0.0
    if f"{dataset}:{f}" in reuse:
        return reuse[f"{dataset}:{f}"], float("nan")
    run = root / f"{dataset}_ae_f{f}"
    weights = run / "checkpoints" / "autoencoder.safetensors"
    if not weights.exists():
        spec = DATASETS[dataset]
        ldm("train", f"experiment={spec['experiment']}", f"autoencoder={FACTORS[f]}",
            f"autoencoder.train.steps={spec['ae_steps']}", "trainer.max_steps=0", "trainer.threads=1",
            "trainer.progress=false", f"run_dir={run}", "overwrite=true")
    rates = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    rate = [r["steps_per_s"] for r in rates if r.get("stage") == "autoencoder" and "steps_per_s" in r][-1]
    return weights, round(DATASETS[dataset]["ae_steps"] / rate, 1)


def segment_seconds(run: Path, start_line: int, begun: int) -> tuple[int, float, int]:
    """(last step, training seconds, lines read) of the segment that resumed at step ``begun``
    and logged from line ``start_line`` of metrics.jsonl on; its last record's rate covers the
    whole segment."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    last = [r for r in map(json.loads, lines[start_line:])
            if r.get("stage") == "diffusion" and "steps_per_s" in r][-1]
    return last["step"], (last["step"] - begun) / last["steps_per_s"], len(lines)


class Scorer:
    """Held-out conditions, fixed noise, and the dataset's fidelity measure."""

    def __init__(self, dataset: str, cfg, n: int) -> None:
        self.dataset, self.n = dataset, n
        if dataset == "digits":
            self.reader, self.reader_accuracy = train_reader()
            _, x_test, _, _ = split_digits()  # the reader's held-out quarter is the reference set
            self.real = x_test.reshape(len(x_test), -1).astype(np.float64)
            self.labels = torch.arange(n) % 10
        else:
            self.batch = held_out_batch(cfg, n)

    def __call__(self, run: Path, grid: Path | None) -> dict[str, float]:
        cfg, model, _ = load_run(run)
        if self.dataset == "digits":
            values = {"class": self.labels}
        else:
            values = model.conditioner.resolve(self.batch)
        noise = torch.randn((self.n, *model.latent_shape()), generator=torch.Generator().manual_seed(0))
        with torch.inference_mode(), choose_precision("auto").autocast():
            plan = sampling_plan(cfg.sampler, name="dpmpp_2m", steps=EVAL_STEPS)
            images = model.sample(values, self.n, plan, noise=noise,
                                  generator=torch.Generator().manual_seed(0)).float()
        if grid is not None:
            save_grid(images[:40], grid, nrow=10)
        if self.dataset == "shapes":
            return condition_scores(run_metrics(model, "shapes", True), images, values, self.batch)
        grey = ((images[:, 0].clamp(-1, 1) + 1) * 127.5).numpy()
        feats = _to_reader_space(grey)
        read = self.reader.predict(feats)
        return {"class_accuracy": float((read == self.labels.numpy()).mean()),
                "fd_8x8": frechet(feats.astype(np.float64), self.real),
                "reader_accuracy": self.reader_accuracy}


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (FID's formula)."""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    eps = 1e-3 * np.eye(a.shape[1])  # border pixels are constant: keep both covariances regular
    ca, cb = np.cov(a, rowvar=False) + eps, np.cov(b, rowvar=False) + eps
    covmean = linalg.sqrtm(ca @ cb).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca + cb - 2 * covmean))


def train_and_score(root: Path, dataset: str, f: int, budget: float, reuse: dict[str, Path],
                    grids: bool = False) -> dict:
    spec = DATASETS[dataset]
    weights, ae_s = first_stage(root, dataset, f, reuse)
    run = root / f"{dataset}_f{f}"
    common = [f"experiment={spec['experiment']}", f"autoencoder={FACTORS[f]}", f"run_dir={run}",
              "trainer.threads=1", "trainer.progress=false", "trainer.checkpoint_every=1000000",
              "trainer.keep_checkpoints=0", "trainer.log_every=10", "sampler.steps=10"]
    if weights is not None:
        common.append(f"autoencoder.checkpoint={weights}")
    torch.set_num_threads(1)
    scorer = None
    points, seconds, line, step, target = [], 0.0, 0, 0, 20  # a 20-step first segment: the rate
    wall0 = time.perf_counter()
    for i, fraction in enumerate((None, *FRACTIONS)):
        if fraction is not None:
            rate = step / seconds
            target = max(step + 10, int(round(rate * (budget * fraction - seconds) + step)))
            target = (target + 9) // 10 * 10
        ldm("train", *common, f"trainer.max_steps={target}",
            *(["overwrite=true"] if i == 0 else ["resume=true"]))
        step, spent, line = segment_seconds(run, line, step)
        seconds += spent
        if fraction is None:
            continue
        if scorer is None:
            scorer = Scorer(dataset, load_run(run)[0], spec["n"])
        t0 = time.perf_counter()
        scores = scorer(run, run / f"eval_{i}.png" if grids else None)
        points.append({"step": step, "train_s": round(seconds, 1), **scores,
                       "eval_s": round(time.perf_counter() - t0, 1)})
        print(f"{dataset} f={f}: step {step}, {seconds:.0f} s, {scores}", flush=True)
    return {"dataset": dataset, "f": f, "autoencoder": FACTORS[f], "budget_s": budget,
            "stage1_s": ae_s, "metric": spec["metric"], "points": points,
            "wall_s": round(time.perf_counter() - wall0, 1), "machine": machine(),
            "command": f"python -m benchmarks.latent_vs_pixel run {dataset} {f} --budget {budget:g}"}


def time_to_reach(points: list[dict], key: str, level: float, lower_is_better: bool = False
                  ) -> float | None:
    """Training seconds at which ``key`` first reaches ``level`` (linear between points)."""
    prev_t, prev_v = 0.0, None
    for p in points:
        if (p[key] <= level) if lower_is_better else (p[key] >= level):
            if prev_v is None or p[key] == prev_v:
                return p["train_s"]
            return prev_t + (level - prev_v) / (p[key] - prev_v) * (p["train_s"] - prev_t)
        prev_t, prev_v = p["train_s"], p[key]
    return None


def report() -> None:
    folder = results_dir("latent_vs_pixel")
    parts = sorted(folder.glob(PART.format("*", "*")))
    runs = [json.loads(p.read_text()) for p in parts]
    (folder / "full.json").write_text(json.dumps(runs, indent=1))
    lines = ["# Pixel vs latent space for the same training time (LDM Figure 6 in miniature)", "",
             "Produced by `python -m benchmarks.latent_vs_pixel` (see its docstring). One thread per run; "
             "training seconds are the trainer's own (steps / rate).", ""]
    for dataset in DATASETS:
        rows = sorted((r for r in runs if r["dataset"] == dataset), key=lambda r: r["f"])
        if not rows:
            continue
        key = DATASETS[dataset]["metric"]
        lines += [f"## {dataset} ({DATASETS[dataset]['experiment']}; {key})", "",
                  "| f | stage 1 s | " + " | ".join(f"{p:g} of budget" for p in FRACTIONS) + " | steps |",
                  "|---|---|" + "---|" * len(FRACTIONS) + "---|"]
        for r in rows:
            cells = [f"{p[key]:.3f} @ {p['train_s']:.0f} s" for p in r["points"]]
            extra = ""
            if dataset == "digits":
                extra = " (FD " + ", ".join(f"{p['fd_8x8']:.0f}" for p in r["points"]) + ")"
            lines.append(f"| {r['f']} | {r['stage1_s']:.0f} | " + " | ".join(cells) +
                         f" | {r['points'][-1]['step']}{extra} |")
        pixel = next((r for r in rows if r["f"] == 1), None)
        if pixel:
            final, total = pixel["points"][-1][key], pixel["points"][-1]["train_s"]
            best = max(p[key] for p in pixel["points"])
            lines += ["", f"Pixel space (f=1) ends at {key} {final:.3f} (best {best:.3f}) after "
                          f"{total:.0f} s. Time each latent f needs to reach the pixel model's best, "
                          f"and its {key} at a third of the pixel model's time ({total / 3:.0f} s):", ""]
            for r in rows:
                if r["f"] == 1:
                    continue
                t = time_to_reach(r["points"], key, best)
                at_third = [p[key] for p in r["points"] if p["train_s"] <= total / 3]
                lines.append(f"- f={r['f']}: " + ("not reached" if t is None else
                                                  f"{t:.0f} s ({t / total:.2f} of the pixel time)")
                             + (f"; {max(at_third):.3f} by {total / 3:.0f} s" if at_third else ""))
            if dataset == "digits":  # the distribution-level measure, lower is better
                fd = min(p["fd_8x8"] for p in pixel["points"])
                lines += ["", f"FD (8x8 reader space, lower is better): pixel space's best is {fd:.0f}."]
                for r in rows:
                    if r["f"] != 1:
                        t = time_to_reach(r["points"], "fd_8x8", fd, lower_is_better=True)
                        lines.append(f"- f={r['f']}: " + ("not reached" if t is None else
                                     f"at or below it by {t:.0f} s ({t / total:.2f} of the pixel time)"))
        lines += ["", f"![{dataset}]({dataset}.png)", ""]
        plot(rows, key, folder / f"{dataset}.png", dataset)
    (folder / "full.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def plot(rows: list[dict], key: str, path: Path, title: str) -> None:
    """Fidelity against training seconds, one line per f (drawn with PIL: no plotting dependency)."""
    from PIL import Image, ImageDraw

    w, h, m, legend = 760, 400, 60, 130  # the legend sits right of the plot area
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    tmax = max(p["train_s"] for r in rows for p in r["points"]) * 1.05
    vmax = max(1e-6, max(p[key] for r in rows for p in r["points"])) * 1.1
    vmax = min(1.0, vmax) if vmax <= 1.1 else vmax

    def xy(t: float, v: float) -> tuple[float, float]:
        return m + (w - 2 * m - legend) * t / tmax, h - m - (h - 2 * m) * v / vmax

    d.line([xy(0, 0), xy(tmax, 0)], fill="black")
    d.line([xy(0, 0), xy(0, vmax)], fill="black")
    for i in range(6):
        t, v = tmax * i / 5, vmax * i / 5
        d.text((xy(t, 0)[0] - 10, h - m + 6), f"{t:.0f}", fill="black")
        d.text((8, xy(0, v)[1] - 6), f"{v:.2f}", fill="black")
    d.text((w // 2 - 80, h - 24), "training seconds (1 thread)", fill="black")
    d.text((m, 12), f"{title}: {key} vs training time", fill="black")
    colours = {1: "black", 2: "blue", 4: "red", 8: "green"}
    for k, r in enumerate(rows):
        pts = [xy(0, 0)] + [xy(p["train_s"], p[key]) for p in r["points"]]
        d.line(pts[1:], fill=colours.get(r["f"], "grey"), width=2)
        for x, y in pts[1:]:
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colours.get(r["f"], "grey"))
        d.text((w - legend, m + 16 * k), f"f={r['f']}" + (" (pixels)" if r["f"] == 1 else ""),
               fill=colours.get(r["f"], "grey"))
    img.save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train and score (dataset, f) runs")
    run.add_argument("dataset", choices=list(DATASETS))
    run.add_argument("factors", nargs="+", type=int, choices=list(FACTORS))
    run.add_argument("--budget", type=float, default=600.0, help="training seconds per run")
    run.add_argument("--root", type=Path, default=Path("runs/fig6"))
    run.add_argument("--reuse-autoencoder", nargs="*", default=[], metavar="DATASET:F=PATH",
                     help="a trained first stage to use instead of training one")
    run.add_argument("--grids", action="store_true",
                     help="keep each evaluation's sample grid in its run folder (eval_<i>.png)")
    sub.add_parser("report", help="table and plot from the runs' result files")
    args = ap.parse_args()
    if args.command == "report":
        report()
        return
    reuse = {k: Path(v) for k, v in (item.split("=", 1) for item in args.reuse_autoencoder)}
    for f in args.factors:
        result = train_and_score(args.root, args.dataset, f, args.budget, reuse, args.grids)
        (results_dir("latent_vs_pixel") / PART.format(args.dataset, f)).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
