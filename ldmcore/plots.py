"""PNG plots of a run's curves, drawn from ``metrics.jsonl`` into ``RUN_DIR/plots/``:

* ``loss.png`` - the diffusion loss against step, raw and smoothed (``ldmcore.curves.smoothed``),
  on a log axis when it falls by more than 10x;
* ``lr.png`` - the learning rate against step (warm-up, then constant or cosine);
* ``eval.png`` - each figure of ``ldm eval`` against the step of the checkpoint it scored, one
  panel per figure, once a run has been evaluated.

Written at the end of training and by ``ldm eval``; matplotlib draws them without a display
(its Agg canvas, no pyplot state), so they work on a headless cluster node.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ldmcore.curves import eval_keys, read_records, series, smoothed

FOLDER = "plots"
SIZE = (6.4, 4.0)  # inches at 100 dpi: 640 x 400 pixels
DPI = 100


def write_plots(run_dir: Path) -> list[Path]:
    """Draw every plot ``run_dir/metrics.jsonl`` has data for; returns the files written."""
    records = read_records(run_dir / "metrics.jsonl")
    out = run_dir / FOLDER
    written = []
    title = f"{run_dir.parent.name}/{run_dir.name}"  # runs/demo, or a sweep's demo_sweep/3
    steps, losses = series(records, "diffusion", "loss")
    if steps:
        written.append(_loss_plot(steps, losses, out / "loss.png", title))
    steps, lrs = series(records, "diffusion", "lr")
    if steps:
        written.append(_line_plot(steps, lrs, out / "lr.png", "learning rate", title))
    keys = eval_keys(records)
    if keys:
        written.append(_eval_plot(records, keys, out / "eval.png", title))
    return written


def _figure(rows: int = 1) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(SIZE[0], SIZE[1] * (1 + 0.6 * (rows - 1))), dpi=DPI, layout="constrained")


def _save(fig: Any, path: Path) -> Path:
    from matplotlib.ticker import MaxNLocator

    for ax in fig.axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _loss_plot(steps: list[int], losses: list[float], path: Path, title: str) -> Path:
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(steps, losses, color="tab:blue", alpha=0.45, linewidth=1, label="loss")
    ax.plot(steps, smoothed(losses), color="tab:blue", linewidth=2, label="smoothed")
    if min(losses) > 0 and max(losses) / min(losses) > 10:
        from matplotlib.ticker import FuncFormatter, LogLocator

        ax.set_yscale("log")  # ticks at 2, 3, 5 x 10^k too: a loss often spans a decade or two
        ax.yaxis.set_minor_locator(LogLocator(subs=(2, 3, 5)))
        for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
            axis(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.set(xlabel="step", ylabel="diffusion loss", title=f"{title}: loss")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _line_plot(steps: list[int], values: list[float], path: Path, what: str, title: str) -> Path:
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(steps, values, color="tab:orange", linewidth=2)
    ax.set(xlabel="step", ylabel=what, title=f"{title}: {what}")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _eval_plot(records: list[dict[str, Any]], keys: list[str], path: Path, title: str) -> Path:
    cols = 2 if len(keys) > 1 else 1
    rows = math.ceil(len(keys) / cols)
    fig = _figure(rows)
    for i, key in enumerate(keys):
        ax = fig.add_subplot(rows, cols, i + 1)
        steps, values = series(records, "eval", key)
        ax.plot(steps, values, marker="o", color="tab:green")
        ax.set(xlabel="step", title=key)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title}: ldm eval")
    return _save(fig, path)
