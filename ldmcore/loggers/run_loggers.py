"""The loggers of one run: opened when training starts, fed what ``metrics.jsonl`` is fed, closed
however the run ends. A logger that raises is dropped with a warning; the run goes on."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from ldmcore.loggers import Logger, LoggerSpec


class RunLoggers:
    """Every logger a run asked for (``trainer.loggers``), called as one."""

    def __init__(self, specs: list[LoggerSpec], run_dir: Path, config: dict[str, Any]) -> None:
        self.active: dict[str, Logger] = {}
        for spec in specs:
            self._call(spec.name, lambda s=spec: self.active.__setitem__(s.name, s.open(run_dir, config)))

    def record(self, record: dict[str, Any]) -> None:
        """A ``metrics.jsonl`` record with a ``step``: its numbers as ``STAGE/KEY`` scalars."""
        step = record.get("step")
        if not isinstance(step, int) or not self.active:
            return
        stage = record.get("stage", "run")
        values = {f"{stage}/{k}": float(v) for k, v in record.items()
                  if k not in ("stage", "step") and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if values:
            self._each("scalars", step, values)

    def image(self, step: int, tag: str, image: np.ndarray) -> None:
        self._each("image", step, tag, image)

    def hyperparameters(self, config: dict[str, Any], metrics: dict[str, float]) -> None:
        self._each("hyperparameters", flat_params(config), metrics)

    def close(self) -> None:
        self._each("close")
        self.active.clear()

    def _each(self, method: str, *args: Any) -> None:
        for name, logger in list(self.active.items()):
            self._call(name, lambda lg=logger: getattr(lg, method)(*args))

    def _call(self, name: str, fn: Any) -> None:
        try:
            fn()
        except Exception as exc:  # a logger never takes the run down: metrics.jsonl has it all
            self.active.pop(name, None)
            print(f"ldmcore: logger {name!r} failed ({type(exc).__name__}: {exc}) and is off for "
                  f"the rest of this run; metrics.jsonl still holds every record.", file=sys.stderr)


def flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """A nested config as dotted keys with values a hyper-parameter table can show: numbers,
    booleans and text as they are, lists and nulls as their text."""
    out: dict[str, bool | int | float | str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_params(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = str(value)
    return out
