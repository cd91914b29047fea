"""The run folder: everything a run needs and makes, in one place, and how a run is read back.

::

    RUN_DIR/config.yaml                  the resolved, validated config (a readable copy)
    RUN_DIR/checkpoints/autoencoder.safetensors   stage 1 (first-stage autoencoder)
    RUN_DIR/checkpoints/last.safetensors          stage 2, latest (resume and sampling read it)
    RUN_DIR/checkpoints/step_N.safetensors        periodic copies
    RUN_DIR/samples/step_N.png           sample grids during training
    RUN_DIR/metrics.jsonl                one JSON object per logged step

A run's config has one source: the metadata of ``checkpoints/last.safetensors``
(``run_metadata`` writes it, ``run_config`` and ``load_run`` read it); ``config.yaml`` is for
people to read. The commands (``train``, ``sample``, ``eval``, ``import``, ``export``) sit
above this module and go through it.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from ldmcore import checkpoint
from ldmcore.build import build_model
from ldmcore.config import ExperimentConfig, validate
from ldmcore.errors import ConfigError
from ldmcore.model import LatentDiffusion
from ldmcore.registry import Registry, default_registry

FORMAT = "ldmcore/run/1"  # the metadata's "format": the layout of a run's checkpoint


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


def plugin_versions(model: LatentDiffusion, registry: Registry) -> dict[str, dict[str, str]]:
    """Package, version and module of each of ``model``'s condition plugins."""
    info = {i.name: i for i in registry.infos()}
    return {n: {"package": info[n].package, "version": info[n].version, "module": info[n].module}
            for n in model.conditioner.encoders if n in info}


def run_metadata(cfg: ExperimentConfig, model: LatentDiffusion, step: int,
                 registry: Registry | None = None, **extra: Any) -> dict[str, Any]:
    """The metadata of a run's diffusion checkpoint: format, step, the resolved config (the
    single source of a run's config), plugin versions, and ``extra`` entries."""
    return {"format": FORMAT, "kind": "latent_diffusion", "step": step,
            "config": cfg.model_dump(mode="json"),
            "plugins": plugin_versions(model, registry or default_registry()), **extra}


def _checked_meta(run: RunFolder, meta: dict[str, Any]) -> dict[str, Any]:
    if meta.get("kind") != "latent_diffusion" or "config" not in meta:
        raise ConfigError(f"{str(run.last)!r} is not an ldmcore diffusion checkpoint (its "
                          f"metadata has no config); was it written by `ldm train`?")
    return meta


def _existing(run_dir: Path) -> RunFolder:
    run = RunFolder(run_dir)
    if not run.root.is_dir():
        raise ConfigError(f"run={str(run_dir)!r} is not a folder; name a run folder made by "
                          f"`ldm train` (e.g. run=runs/demo).")
    return run


def run_config(run_dir: Path) -> ExperimentConfig:
    """A run's validated config, read from its last checkpoint's metadata (no tensors read)."""
    run = _existing(run_dir)
    return validate(_checked_meta(run, checkpoint.metadata(run.last))["config"])


def load_run(run_dir: Path, registry: Registry | None = None, use_ema: bool = True
             ) -> tuple[ExperimentConfig, LatentDiffusion, dict[str, Any]]:
    """Rebuild the model of a run folder from its last checkpoint (config from its metadata);
    the model samples with the run's own sampler settings by default."""
    run = _existing(run_dir)
    tensors, meta = checkpoint.load(run.last)
    cfg = validate(_checked_meta(run, meta)["config"])
    model = build_model(cfg, registry=registry, root=run.root)
    checkpoint.load_model_state(model, tensors, run.last)
    if use_ema:
        own = model.state_dict()
        with torch.no_grad():
            for key, value in tensors.items():
                if key.startswith("ema."):
                    own[key[4:]].copy_(value)
    model.eval()
    return cfg, model, meta
