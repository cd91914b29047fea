"""The run folder: everything a run needs and makes, in one place.

::

    RUN_DIR/config.yaml                  the resolved, validated config
    RUN_DIR/checkpoints/autoencoder.safetensors   stage 1 (first-stage autoencoder)
    RUN_DIR/checkpoints/last.safetensors          stage 2, latest (resume and sampling read it)
    RUN_DIR/checkpoints/step_N.safetensors        periodic copies
    RUN_DIR/samples/step_N.png           sample grids during training
    RUN_DIR/metrics.jsonl                one JSON object per logged step
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from ldmcore.errors import ConfigError


class RunFolder:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.safetensors"

    @property
    def autoencoder(self) -> Path:
        return self.checkpoints / "autoencoder.safetensors"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    def step_checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step_{step}.safetensors"

    def prepare(self, config: dict[str, Any], *, resume: bool, overwrite: bool) -> None:
        """Create the folder; refuse to clobber an existing run unless asked to."""
        if self.root.exists() and any(self.root.iterdir()):
            if overwrite and not resume:
                shutil.rmtree(self.root)
            elif not resume:
                raise ConfigError(f"run folder {str(self.root)!r} already holds a run; pass "
                                  f"resume=true to continue it, overwrite=true to start afresh, "
                                  f"or name=OTHER for a new folder.")
        elif resume:
            raise ConfigError(f"resume=true but {str(self.root)!r} holds no run to resume; drop "
                              f"resume=true to start one.")
        for d in (self.root, self.checkpoints, self.samples):
            d.mkdir(parents=True, exist_ok=True)
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))

    def prune(self, keep: int) -> None:
        """Keep the newest ``keep`` periodic checkpoints."""
        periodic = sorted(self.checkpoints.glob("step_*.safetensors"),
                          key=lambda p: int(p.stem.split("_")[1]))
        for old in periodic[: max(0, len(periodic) - keep)]:
            old.unlink()


class MetricsLog:
    """Appends one JSON line per record, flushed at once (a killed run keeps its metrics)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.start = time.perf_counter()

    def write(self, **record: Any) -> None:
        record.setdefault("time_s", round(time.perf_counter() - self.start, 3))
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
