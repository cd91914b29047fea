"""``ldm eval``: score a run's samples with the metrics its condition plugins register.

The core does not know what it measures: for each condition a run enables, the registry gives
the metrics registered for it (hook ``register_metrics``), each on the datasets it declares
meaningful. Two ways to get samples:

* the run's dataset has a held-out split (``register_datasets(..., held_out=...)``, e.g. shapes
  scenes of another seed, the held-out strip of the photos): ``evaluate_run`` samples from its
  conditions with the run's own sampling plan and scores them beside the data items, plus each
  metric's baseline (what it reads without a model) and, for a metric registered
  ``against_null``, its scores of samples without that condition (``*_null``: the same noise,
  the condition's guidance scale 0);
* otherwise (e.g. digits) ``evaluate_folder`` scores a folder of ``ldm sample`` output, whose
  ``samples.json`` says which conditions each image was asked for.

With ``average=K`` > 1 the metrics that average (pixel metrics: PSNR rewards the posterior
mean, and one sample from a posterior is off by about twice its variance) are also given for the
mean of K samples per condition (keys ``*_mean_of_samples``): it estimates the posterior mean the
model has learned, and shows how much of a gap is sampling rather than the model.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ldmcore.build import build_dataset
from ldmcore.data.datasets import collate
from ldmcore.diffusion.plan import SamplingPlan
from ldmcore.errors import ConfigError, DataError
from ldmcore.eval.metric import MetricSpec
from ldmcore.hardware import choose
from ldmcore.images import read_image, save_grid
from ldmcore.model import LatentDiffusion
from ldmcore.progress import progress_bar, step_counter
from ldmcore.registry import Registry, default_registry
from ldmcore.runfolder import load_run
from ldmcore.sampling import sampling_plan
from ldmcore.summary import startup_line


def held_out_batch(cfg: Any, n: int, registry: Registry | None = None) -> dict[str, Any]:
    """``n`` items of the run's dataset that training never saw, collated (the dataset's
    ``held_out`` split, without augmentation)."""
    spec = (registry or default_registry()).dataset(cfg.data.name)
    if spec.held_out is None:
        raise ConfigError(f"dataset {spec.name!r} has no held-out split to sample conditions from; "
                          f"score a folder of samples instead (ldm eval run=RUN samples=DIR).")
    options = {**cfg.data.dataset_kwargs(), "num_items": n, "hflip": False, "shift": 0.0}
    dataset = spec.held_out(**options)
    return collate([dataset[i] for i in range(n)])


def run_metrics(model: LatentDiffusion, dataset: str, has_data: bool,
                registry: Registry | None = None) -> list[tuple[str, MetricSpec]]:
    """(condition, metric) of every registered metric that scores this model's samples of
    ``dataset``, in the order of the model's conditions."""
    registry = registry or default_registry()  # an instance of a plugin takes the plugin's metrics
    return [(name, m) for name, enc in model.conditioner.encoders.items()
            for m in registry.metrics_for(type(enc).name) if m.applies_to(dataset, has_data)]


def unmeasured(model: LatentDiffusion, metrics: list[tuple[str, MetricSpec]], dataset: str) -> list[str]:
    """The run's conditions no metric scores, said on stdout (and listed under ``unmeasured`` in
    ``eval.json``): ``ldm eval`` never lets a report pass for a measurement of a plugin that
    nothing measured."""
    names = [name for name in model.conditioner.encoders if name not in {n for n, _ in metrics}]
    if names:
        print(f"not measured: no registered metric scores condition{'s' if len(names) > 1 else ''} "
              f"{', '.join(names)} on data {dataset!r}; a plugin package registers one through the "
              f"register_metrics hook (docs/hooks.md), and `ldm plugins` lists what each registers.",
              flush=True)
    return names


def condition_scores(metrics: list[tuple[str, MetricSpec]], images: torch.Tensor,
                     values: dict[str, Any], batch: dict[str, Any]) -> dict[str, Any]:
    """Every metric's entries for ``images`` generated from condition ``values`` (and ``batch``)."""
    report: dict[str, Any] = {}
    for name, metric in metrics:
        report.update(metric.score(images, values[name], batch))
    return report


def evaluate_run(run_dir: Path, n: int = 64, steps: int | None = None, seed: int = 0,
                 out: Path | None = None, average: int = 1, precision: str = "auto",
                 threads: int | str = "auto", registry: Registry | None = None,
                 sampler: str | None = None, progress: bool = True,
                 guidance: float | None = None, plugin_guidance: dict[str, float] | None = None
                 ) -> dict[str, Any]:
    """Sample ``n`` held-out conditions with the run's own plan (or ``sampler``, with its own
    config, ``steps``, ``guidance`` and per-condition ``plugin_guidance``) and score them."""
    cfg, model, _ = load_run(run_dir, registry)
    hardware = choose(precision, threads, next(model.unet.parameters()).device, announce=False)
    mixed = hardware.precision
    plan = sampling_plan(cfg.sampler, registry, where="", name=sampler, steps=steps, guidance=guidance,
                         plugin_guidance=plugin_guidance or None)
    print(startup_line(hardware, model, registry), flush=True)
    print(f"sampler: {plan.describe()}", flush=True)
    torch.manual_seed(seed)  # random holes of the inpaint plugin
    batch = held_out_batch(cfg, n, registry)
    values = model.conditioner.resolve(batch)
    metrics = run_metrics(model, cfg.data.name, True, registry)
    averaging = [(name, m) for name, m in metrics if m.averages]
    draws = average if averaging else 1
    against_null = list(dict.fromkeys(name for name, m in metrics if m.against_null))
    bar = progress_bar((draws + len(against_null)) * plan.steps,
                       f"eval ({n} conditions x {draws + len(against_null)} draws)", progress)

    def draw(k: int, how: SamplingPlan = plan) -> torch.Tensor:
        """Samples of noise seed ``seed + k`` for every held-out condition."""
        noise = torch.randn((n, *model.latent_shape()), generator=torch.Generator().manual_seed(seed + k))
        with mixed.autocast():
            return model.sample(values, n, how, noise=noise, callback=step_counter(bar),
                                generator=torch.Generator().manual_seed(seed + k)).float()

    images = draw(0)
    if out is not None:
        save_grid(images, out / "eval_grid.png", nrow=8)
    report: dict[str, Any] = {"samples": n, "data": cfg.data.name, "precision": mixed.name}
    if plugin_guidance:
        report["plugin_guidance"] = dict(plan.guidance.per_plugin)
    if names := unmeasured(model, metrics, cfg.data.name):
        report["unmeasured"] = names
    report.update(condition_scores(metrics, images, values, batch))
    for name, metric in metrics:
        if metric.baseline is not None:
            report.update(metric.baseline(values[name], batch))
    nulled: dict[str, torch.Tensor] = {}  # condition -> samples without it, drawn once
    for name in against_null:
        without = replace(plan.guidance, per_plugin={**plan.guidance.per_plugin, name: 0.0})
        nulled[name] = draw(0, plan.but(guidance=without))
    for name, metric in metrics:
        if metric.against_null:
            report.update({f"{k}_null": v for k, v in metric.score(nulled[name], values[name], batch).items()})
    if draws > 1:
        mean = torch.stack([images, *(draw(k) for k in range(1, average))]).mean(0)
        report["averaged_samples"] = average
        report.update({f"{k}_mean_of_samples": v for k, v in
                       condition_scores(averaging, mean, values, batch).items()})
    bar.close()
    return report


def evaluate_folder(run_dir: Path, folder: Path, registry: Registry | None = None) -> dict[str, Any]:
    """Score the samples of an ``ldm sample`` output folder (its ``samples.json`` names the
    conditions of each image) with the metrics of the run's conditions."""
    index = folder / "samples.json"
    if not index.is_file():
        raise DataError(f"{str(folder)!r} has no samples.json; make samples first with "
                        f"`ldm sample run={run_dir} cond.NAME=... out={folder}`.")
    records = json.loads(index.read_text())["samples"]
    cfg, model, _ = load_run(run_dir, registry)
    encoders = model.conditioner.encoders
    missing = [k for k in encoders if not records or k not in records[0]["conditions"]]
    if missing:
        raise DataError(f"the samples in {str(folder)!r} carry no {missing[0]!r} condition; score "
                        f"samples of this run (ldm sample run={run_dir} ...).")
    metrics = run_metrics(model, cfg.data.name, False, registry)
    if not metrics:
        raise ConfigError(f"no registered metric scores samples of conditions "
                          f"{', '.join(encoders) or '(none)'} on data {cfg.data.name!r} without "
                          f"held-out data items; `ldm plugins` lists what each package registers.")
    images = torch.stack([read_image(folder / r["file"], cfg.data.channels, "samples") for r in records])
    values = {k: enc.collate([enc.parse(r["conditions"][k]) for r in records])
              for k, enc in encoders.items()}
    report = condition_scores(metrics, images, values, {})
    if names := unmeasured(model, metrics, cfg.data.name):
        report["unmeasured"] = names
    return report
