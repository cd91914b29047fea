"""The logger contract: what a logger plugin (hook ``register_loggers``) receives while a run
trains, selected with ``trainer.loggers=[NAME, ...]``.

Every record training writes to ``metrics.jsonl`` (which stays, whatever loggers are chosen)
reaches each logger as scalars at its step, tagged ``STAGE/KEY`` (``diffusion/loss``,
``diffusion/lr``, ``autoencoder/l1``); every sample grid as an image (``samples``); and at the
end the resolved config as hyper-parameters beside the run's final figures. A logger overrides
the methods it needs; the base class does nothing, so a logger of scalars alone is one method.
The built-in ``tensorboard`` logger (``ldmcore.loggers.tensorboard``) registers through the
same hook a W&B or MLflow plugin would.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


class Logger:
    """One run's logger. Called on the main process only, between ``open`` and ``close``."""

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Numbers of one step, e.g. ``{"diffusion/loss": 0.12, "diffusion/lr": 2e-4}``."""

    def image(self, step: int, tag: str, image: np.ndarray) -> None:
        """A picture of the run at ``step`` (a sample grid), ``(H, W, 3)`` uint8 RGB."""

    def hyperparameters(self, params: dict[str, bool | int | float | str],
                        metrics: dict[str, float]) -> None:
        """Once, at the end of training: the resolved config flattened to dotted keys
        (``trainer.lr``; lists and nulls as text) and the final figures (``loss``, ...)."""

    def close(self) -> None:
        """Flush and release what the logger holds; called however the run ends."""


@dataclass(frozen=True)
class LoggerSpec:
    """A registered logger: ``open(run_dir, config) -> Logger`` starts it for one run (the
    config is the resolved config as a plain dict); ``missing()``, when given, returns None if
    the logger can run in this environment, else a sentence saying what to install."""

    name: str
    open: Callable[[Path, dict[str, Any]], Logger]
    missing: Callable[[], str | None] | None = None
    package: str = ""
