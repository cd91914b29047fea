"""The built-in ``tensorboard`` logger: TensorBoard event files in ``RUN_DIR/tensorboard``.

Written by ``torch.utils.tensorboard.SummaryWriter`` (PyTorch's own writer, which needs the
``tensorboard`` package: ``pip install 'ldmcore[tensorboard]'``); read them with
``tensorboard --logdir RUN_DIR/tensorboard`` (or the parent of several runs, e.g. a sweep
folder, to compare them). Scalars, the sample grids, and the hyper-parameters with the final
figures (TensorBoard's HPARAMS tab) are written.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ldmcore.hookspecs import hookimpl
from ldmcore.loggers import Logger

FOLDER = "tensorboard"  # inside the run folder


def missing() -> str | None:
    """None where the writer can run; otherwise what to install."""
    if importlib.util.find_spec("tensorboard") is None:
        return ("the tensorboard package is not installed; install it with pip install "
                "'ldmcore[tensorboard]' (or pip install tensorboard)")
    return None


class TensorBoardLogger(Logger):
    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / FOLDER))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def image(self, step: int, tag: str, image: np.ndarray) -> None:
        self.writer.add_image(tag, image, step, dataformats="HWC")

    def hyperparameters(self, params: dict[str, bool | int | float | str],
                        metrics: dict[str, float]) -> None:
        # run_name ".": the HPARAMS entry goes into this run's folder, not a new timestamped one
        self.writer.add_hparams(params, {f"hparam/{k}": v for k, v in metrics.items()}, run_name=".")

    def close(self) -> None:
        self.writer.close()


@hookimpl
def register_loggers(register: Callable[..., None]) -> None:
    register("tensorboard", TensorBoardLogger, missing=missing)
