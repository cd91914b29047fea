"""A run's curves read back from ``metrics.jsonl``: what the plots, the sweep summary and the
loggers show.

``metrics.jsonl`` holds one JSON object per record, each with a ``stage``: ``diffusion``
(``step``, ``loss``, ``lr``, speed), ``autoencoder`` (its own steps and losses), ``hardware``,
and ``eval`` (``ldm eval``'s figures at the checkpoint's ``step``). A run killed while writing
may leave a torn last line; it is skipped, as is anything that is not an object.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

SMOOTHING = 0.6  # the weight of the past in the smoothed loss (the default of TensorBoard's slider)


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every whole record of a ``metrics.jsonl`` (none when the file does not exist)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a torn last line of a killed run
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def series(records: list[dict[str, Any]], stage: str, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of ``key`` in the records of ``stage`` that have a step and a finite
    number under ``key``, in the order written (a resumed run continues its steps)."""
    steps, values = [], []
    for r in records:
        value = r.get(key)
        if (r.get("stage") == stage and isinstance(r.get("step"), int) and
                isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)):
            steps.append(r["step"])
            values.append(float(value))
    return steps, values


def smoothed(values: list[float], weight: float = SMOOTHING) -> list[float]:
    """The exponential moving average of ``values`` with its start-up bias removed (as Adam
    corrects its moments): point i is ``sum_j w^(i-j) (1-w) v_j / (1 - w^(i+1))``, so a constant
    curve stays that constant from the first point on."""
    if not 0 <= weight < 1:
        raise ValueError(f"smoothing weight {weight} must be in [0, 1)")
    out, average = [], 0.0
    for i, v in enumerate(values):
        average = weight * average + (1 - weight) * v
        out.append(average / (1 - weight ** (i + 1)))
    return out


def eval_keys(records: list[dict[str, Any]]) -> list[str]:
    """The numeric figures of the ``eval`` records, in first-seen order."""
    keys: dict[str, None] = {}
    for r in records:
        if r.get("stage") == "eval":
            for k, v in r.items():
                if k not in ("stage", "step", "time_s") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    keys.setdefault(k)
    return list(keys)


def final_figures(records: list[dict[str, Any]]) -> dict[str, Any]:
    """What a run ended with: steps trained, the last logged loss and its smoothed value, the
    learning rate, wall seconds and images per second of the last diffusion record."""
    steps, losses = series(records, "diffusion", "loss")
    if not steps:
        return {}
    last = [r for r in records if r.get("stage") == "diffusion" and r.get("step") == steps[-1]][-1]
    figures: dict[str, Any] = {"steps": steps[-1], "loss": losses[-1],
                               "loss_smoothed": smoothed(losses)[-1]}
    for key in ("lr", "time_s", "images_per_s"):
        if isinstance(last.get(key), (int, float)):
            figures[key] = last[key]
    return figures
