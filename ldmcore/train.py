"""Training: stage 1 (autoencoder) when needed, then the latent diffusion model.

AdamW with linear warm-up, EMA of the denoiser (UNet + trainable encoders), gradient
accumulation, mixed precision and threads chosen from the hardware (``ldmcore/hardware``),
gradient clipping. A non-finite loss stops the run with the last good checkpoint intact.
``last.safetensors`` holds weights, EMA, optimizer state, the step, the RNG state, the resolved
config, plugin versions and the precision/threads chosen; ``resume=true`` continues exactly
(batches and noise depend only on (seed, step)).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ldmcore import checkpoint
from ldmcore.attach import attach_pretrained, save_plugin_weights, train_only_params
from ldmcore.build import build_autoencoder, build_dataset, build_model, check_shapes, load_autoencoder
from ldmcore.config import ExperimentConfig, TrainerConfig, logger_specs
from ldmcore.curves import final_figures, read_records
from ldmcore.data.batches import (InMemoryBatches, StepBatchSampler, loader_batches, memory_batches,
                                  step_generator)
from ldmcore.distributed import connect
from ldmcore.data.datasets import collate
from ldmcore.data.transforms import is_deterministic
from ldmcore.errors import ConfigError, TrainingDiverged
from ldmcore.hardware import PrecisionChoice, ThreadGovernor, autocast, choose
from ldmcore.grid_sidecar import write_sidecar
from ldmcore.images import grid, save_grid, to_pil
from ldmcore.loggers.run_loggers import RunLoggers
from ldmcore.model import LatentDiffusion, denoiser_params
from ldmcore.nn.execution import for_training
from ldmcore.parallel import DataParallel, local_part, make_parallel
from ldmcore.plots import write_plots
from ldmcore.progress import progress_bar
from ldmcore.randomness import BatchRandom
from ldmcore.registry import Registry, default_registry
from ldmcore.runfolder import MetricsLog, RunFolder, run_metadata
from ldmcore.stopping import StopSignals
from ldmcore.summary import startup_line
from ldmcore.train_autoencoder import train_autoencoder

class EMA:
    """Exponential moving average of parameters, with the usual warm-up of the decay.

    Under FSDP a shadow is sharded like its parameter (each rank averages its own shard, which
    is the same arithmetic as averaging the full tensor); checkpoints gather it in full.
    """

    def __init__(self, params: dict[str, torch.nn.Parameter], decay: float) -> None:
        self.decay = decay
        self.shadow = {k: p.detach().clone().float() for k, p in params.items()}

    @torch.no_grad()
    def update(self, params: dict[str, torch.nn.Parameter], step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        keys = list(self.shadow)
        # on local tensors: a sharded shadow and its parameter hold the same shard on this rank,
        # and DTensor's foreach rules differ between torch versions
        torch._foreach_lerp_([local_part(self.shadow[k]) for k in keys],
                             [local_part(params[k].detach()).float() for k in keys], 1 - d)


def training_state(model: LatentDiffusion, ema: EMA, opt: torch.optim.Optimizer
                   ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every tensor of a checkpoint (sharded ones still sharded under FSDP) and the optimizer's
    JSON metadata."""
    tensors = dict(model.state_dict())
    tensors.update(checkpoint.with_prefix("ema.", ema.shadow))
    opt_tensors, opt_meta = checkpoint.optimizer_state(opt)
    tensors.update(opt_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    return tensors, opt_meta


def save_state(path: Path, tensors: dict[str, torch.Tensor], opt_meta: dict[str, Any], step: int,
               cfg: ExperimentConfig, model: LatentDiffusion, registry: Registry,
               hardware: dict[str, Any] | None = None) -> None:
    """Write full (unsharded) training state; see ``training_state`` and ``DataParallel.full``.
    ``hardware`` records the precision and threads this run chose and why."""
    checkpoint.save(path, tensors, run_metadata(cfg, model, step, registry, optimizer=opt_meta,
                                                **({"hardware": hardware} if hardware else {})))


def lr_at(trainer: TrainerConfig, step: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based): a linear warmup over
    ``warmup_steps``, then constant or a half cosine that reaches 0 at ``max_steps``."""
    warm = trainer.warmup_steps
    if step < warm:
        return trainer.lr * (step + 1) / warm
    if trainer.lr_schedule == "constant":
        return trainer.lr
    progress = (step - warm) / max(1, trainer.max_steps - warm)
    return trainer.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class LossModule(torch.nn.Module):
    """The training objective as a module, so DDP can hook the backward of its parameters."""

    def __init__(self, model: LatentDiffusion) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, Any], latents: torch.Tensor | None, rng: BatchRandom) -> torch.Tensor:
        return self.model.loss(batch, latents, generator=rng)


def train(cfg: ExperimentConfig, registry: Registry | None = None) -> RunFolder:
    """Run both stages as configured; returns the run folder.

    Under torchrun, ``trainer.batch_size`` is per process: the global batch is
    ``batch_size x world_size x grad_accum``, drawn as one batch and split across processes.
    Everything that can be checked is checked before the run folder is touched (the data, the
    checkpoint to resume, the folder's owner); an error before a new run's first checkpoint
    removes the folder again (``RunFolder.claimed``).
    """
    registry = registry or default_registry()
    tc = cfg.trainer
    torch.manual_seed(cfg.seed)
    cluster = connect()
    parallel = make_parallel(tc.strategy, cluster)
    hardware = choose(tc.precision, tc.threads, cluster.device, announce=False)  # in the summary
    run = RunFolder(cfg.run_dir)
    if cluster.is_main:
        run.check_claim(resume=cfg.resume, overwrite=cfg.overwrite)
    check_shapes(cfg)
    _check_sources(cfg)
    d = cfg.data
    dataset = build_dataset(d.name, d.limit, registry, **d.dataset_kwargs())
    _check_batch_fits(cfg, len(dataset), cluster.world)
    saved = None
    if cfg.resume and run.last.exists():
        saved = checkpoint.load(run.last)
        checkpoint.require_training_state(*saved, run.last)
    specs = logger_specs(cfg, registry) if cluster.is_main else []
    with run.claimed(cfg.model_dump(mode="json"), resume=cfg.resume, overwrite=cfg.overwrite,
                     main=cluster.is_main), StopSignals(tc.stop_signals) as stop:
        cluster.barrier()
        loggers = RunLoggers(specs, run.root, cfg.model_dump(mode="json"))
        try:
            _fit(cfg, registry, run, dataset, cluster, parallel, hardware, saved, stop, loggers)
            if cluster.is_main:
                _close_the_record(run, cfg, loggers)
        finally:
            loggers.close()
    return run


def _close_the_record(run: RunFolder, cfg: ExperimentConfig, loggers: RunLoggers) -> None:
    """At the end of training: the hyper-parameters with the final figures to the loggers, and
    the plots of ``metrics.jsonl`` into ``RUN_DIR/plots``."""
    final = final_figures(read_records(run.metrics))
    loggers.hyperparameters(cfg.model_dump(mode="json"),
                            {k: float(v) for k, v in final.items() if k.startswith("loss")})
    write_plots(run.root)


def _check_sources(cfg: ExperimentConfig) -> None:
    """The runs and files the config starts from exist (each named by its setting)."""
    init = cfg.model.init_from
    if init is not None and not RunFolder(init).last.is_file():
        raise ConfigError(f"model.init_from={str(init)!r} is not a run folder with a checkpoint "
                          f"(no {str(RunFolder(init).last)!r}); name a run made by `ldm train` "
                          f"or `ldm import`.")
    ae = cfg.autoencoder.checkpoint
    if ae is not None and not Path(ae).is_file():
        raise ConfigError(f"autoencoder.checkpoint={str(ae)!r} is not a file; name a stage-1 "
                          f"checkpoint such as RUN_DIR/checkpoints/autoencoder.safetensors.")


def _check_batch_fits(cfg: ExperimentConfig, items: int, world: int) -> None:
    """A batch larger than the dataset would silently shrink to the dataset: say so instead."""
    limit = f" (data.limit={cfg.data.limit})" if cfg.data.limit is not None else ""
    stage1 = (cfg.autoencoder.kind != "pixels" and cfg.autoencoder.checkpoint is None
              and cfg.model.init_from is None)
    for key, size, ranks in (("trainer.batch_size", cfg.trainer.batch_size, world),
                             ("autoencoder.train.batch_size", cfg.autoencoder.train.batch_size, 1)):
        if size * ranks > items and (key.startswith("trainer") or stage1):
            raise ConfigError(f"{key}={size} x {ranks} process(es) asks for {size * ranks} images "
                              f"per batch, but the dataset holds {items}{limit}; lower {key} to "
                              f"at most {items // ranks} or use more data.")


def _fit(cfg: ExperimentConfig, registry: Registry, run: RunFolder, dataset: Any, cluster: Any,
         parallel: DataParallel, hardware: Any,
         saved: tuple[dict[str, torch.Tensor], dict[str, Any]] | None, stop: StopSignals,
         loggers: RunLoggers) -> None:
    """Both stages in a claimed run folder (see ``train``); every metrics record also goes to
    the run's ``loggers``."""
    tc, d = cfg.trainer, cfg.data
    device = cluster.device
    precision, threads = hardware.precision, ThreadGovernor(hardware.threads)
    if cluster.is_main:
        MetricsLog(run.metrics, loggers.record).write(stage="hardware", **hardware.record())
    in_memory = is_deterministic(d.hflip, d.shift) and len(dataset) <= 100_000
    held = InMemoryBatches(dataset) if in_memory else None

    # -- the model, with a fresh first stage when stage 1 is still to train ---------------------
    stage1 = (cfg.model.init_from is None and cfg.autoencoder.kind != "pixels"
              and cfg.autoencoder.checkpoint is None)
    if cfg.model.init_from is None and cfg.autoencoder.checkpoint is not None:
        ae = load_autoencoder(cfg, cfg.autoencoder.checkpoint)
    else:  # weights from the pretrained run, from stage 1 below, or none (pixels)
        ae = build_autoencoder(cfg)
    model = build_model(cfg, ae, registry)
    attachment = attach_pretrained(model, cfg.model.init_from) if cfg.model.init_from else None
    model = model.to(device)
    # FSDP2 shards only contiguous parameters, so under fsdp the UNet keeps NCHW weights
    for_training(model.unet, channels_last=cfg.execution.channels_last and tc.strategy != "fsdp",
                 checkpointing=cfg.execution.checkpointing)
    if saved is not None:  # full weights go in before FSDP cuts them into shards
        checkpoint.load_model_state(model, saved[0], run.last)
    parallel.shard(model)
    params = (train_only_params(model, attachment, list(tc.train_only)) if tc.train_only
              else denoiser_params(model))
    opt = torch.optim.AdamW(params.values(), lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.grad_scaler)  # fp16 only
    ema = EMA(params, tc.ema_decay)
    step = 0
    if saved is not None:
        step = _restore_training(*saved, params, ema, opt, parallel)
    if cluster.is_main:
        print(startup_line(hardware, model, registry, params.values(), attachment), flush=True)
    # -- stage 1 (the autoencoder): on rank 0; the others wait and read its file ----------------
    if stage1:
        if cluster.is_main and not run.autoencoder.exists():
            sampler = StepBatchSampler(len(dataset), cfg.autoencoder.train.batch_size, cfg.seed + 1)
            train_autoencoder(cfg, ae, _batches(dataset, held, sampler, d.num_workers), run, device,
                              precision.name, threads, listener=loggers.record)
        cluster.barrier()
        load_autoencoder(cfg, run.autoencoder, into=ae)
    for_training(model.autoencoder, channels_last=cfg.execution.channels_last)
    objective = parallel.wrap(LossModule(model))

    cache = None
    if held is not None and tc.cache_latents:
        cache = _encode_all(model, held.data["image"], device, precision.name)
    sampler = StepBatchSampler(len(dataset), tc.batch_size * cluster.world, cfg.seed,
                               step * tc.grad_accum, rank=cluster.rank, world=cluster.world)
    data = None if cache is not None else _batches(dataset, held, sampler, d.num_workers)
    log = MetricsLog(run.metrics, loggers.record) if cluster.is_main else None
    global_batch = tc.batch_size * cluster.world * tc.grad_accum
    if log:
        log.write(stage="diffusion", world_size=cluster.world, per_device_batch=tc.batch_size,
                  grad_accum=tc.grad_accum, global_batch=global_batch)
    bar = progress_bar(tc.max_steps, f"diffusion (global batch {global_batch})",
                       tc.progress and cluster.is_main, initial=step)

    def checkpoint_to(*paths: Path) -> dict[str, torch.Tensor]:
        """Gather the state once (every rank takes part) and write it to ``paths`` on rank 0."""
        tensors, opt_meta = training_state(model, ema, opt)
        tensors = parallel.full(tensors)
        if cluster.is_main:
            for path in paths:
                save_state(path, tensors, opt_meta, step, cfg, model, registry, hardware.record())
        return tensors

    model.train()
    t0, steps_done, last_good = time.perf_counter(), 0, step
    stop.deferring = True
    try:
        while step < tc.max_steps:
            for group in opt.param_groups:
                group["lr"] = lr_at(tc, step)
            total = torch.zeros(())
            for micro in range(tc.grad_accum):
                k = step * tc.grad_accum + micro
                rng = BatchRandom(step_generator(cfg.seed, k, 0), cluster.rank, cluster.world)
                if cache is not None:
                    idx = sampler.indices(k)
                    batch, latents = held.take(idx), _sample_latents(cache, idx, rng, model)
                else:
                    batch, latents = next(data), None
                batch = {k2: (v.to(device) if isinstance(v, torch.Tensor) else v) for k2, v in batch.items()}
                sync = micro == tc.grad_accum - 1
                with parallel.accumulating(objective, sync):  # FSDP reads it during backward
                    with precision.autocast():
                        loss = objective(batch, latents, rng) / tc.grad_accum
                    scaler.scale(loss).backward()
                total += loss.detach().float().cpu()
            parallel.after_backward(params.values())
            total = cluster.mean(total)
            if not torch.isfinite(total):
                kept = (f"The last good checkpoint ({str(run.last)!r}, step {last_good}) is intact."
                        if run.last.exists() else "No checkpoint had been written, so the new "
                        "run folder was removed.")
                raise TrainingDiverged(
                    f"the loss became {float(total)} at step {step}; stopped. {kept} Lower "
                    f"trainer.lr (now {tc.lr}), set trainer.grad_clip, or use trainer.precision=fp32.")
            scaler.unscale_(opt)
            if tc.grad_clip:
                parallel.clip_grad_norm(params.values(), tc.grad_clip)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            ema.update(params, step)
            step += 1
            steps_done += 1
            bar.update(1)
            retuned = threads.tick()
            if log and retuned is not None:
                log.write(stage="hardware", step=step, threads=retuned)
            if log and (step % tc.log_every == 0 or step == tc.max_steps):
                rate = steps_done / (time.perf_counter() - t0)
                bar.set_postfix(loss=f"{float(total):.4f}", it_s=f"{rate:.2f}")
                log.write(stage="diffusion", step=step, loss=float(total), lr=lr_at(tc, step - 1),
                          steps_per_s=rate, images_per_s=rate * global_batch, threads=threads.threads)
            if step % tc.checkpoint_every == 0 or step == tc.max_steps:
                periodic = tc.keep_checkpoints and step < tc.max_steps
                full = checkpoint_to(run.last, *([run.step_checkpoint(step)] if periodic else []))
                if cluster.is_main:
                    save_plugin_weights(run.root / "plugins", model, attachment, {"step": step}, full)
                    if periodic:
                        run.prune(tc.keep_checkpoints)
                last_good = step
            if tc.sample_every and step % tc.sample_every == 0 and step < tc.max_steps:
                _sample_grid_on(parallel, model, ema, held, dataset, cfg, precision,
                                run.samples / f"step_{step}.png", step, loggers)
            if _agreed(cluster, stop.received is not None) and step < tc.max_steps:
                if last_good != step:
                    checkpoint_to(run.last)
                raise stop.stopped(f"after step {step} of {tc.max_steps}; its checkpoint is "
                                   f"{str(run.last)!r}, and resume=true continues it")
    except KeyboardInterrupt:
        checkpoint_to(run.last)
        bar.close()
        raise
    bar.close()
    if step == 0 or last_good != step:  # decided alike on every rank (not by a file rank 0 writes)
        checkpoint_to(run.last)
    _sample_grid_on(parallel, model, ema, held, dataset, cfg, precision, run.samples / f"step_{step}.png",
                    step, loggers)
    cluster.barrier()
    return run


def _agreed(cluster: Any, wanted: bool) -> bool:
    """Whether any rank wants to stop (every rank must stop after the same step)."""
    if not cluster.distributed:
        return wanted
    return bool(cluster.mean(torch.tensor(float(wanted))) > 0)


def _batches(dataset: Any, held: InMemoryBatches | None, sampler: StepBatchSampler, workers: int):
    return memory_batches(held, sampler) if held else loader_batches(dataset, sampler, workers)


def _restore_training(tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                      params: dict[str, torch.nn.Parameter], ema: EMA, opt: torch.optim.Optimizer,
                      parallel: DataParallel) -> int:
    """EMA, optimizer state, RNG and step from a full checkpoint, cut to this rank's shards."""
    with torch.no_grad():
        for k in ema.shadow:
            ema.shadow[k].copy_(parallel.place(tensors[f"ema.{k}"], ema.shadow[k]))
    order = list(params.values())  # the optimizer numbers its parameters in this order

    def place(idx: int, value: torch.Tensor) -> torch.Tensor:
        like = order[idx]  # moments have the parameter's shape; AdamW's step is a scalar
        return parallel.place(value, like) if value.shape == like.shape else value

    checkpoint.restore_optimizer(opt, tensors, meta["optimizer"], place)
    torch.set_rng_state(tensors["rng.torch"])
    return int(meta["step"])


@torch.no_grad()
def _encode_all(model: LatentDiffusion, images: torch.Tensor, device: torch.device,
                precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior moments of every image, computed once (the autoencoder is frozen)."""
    means, logvars = [], []
    for chunk in images.split(256):
        with autocast(precision, device):
            post = model.autoencoder.encode(chunk.to(device))
        means.append(post.mean.float())
        logvars.append(post.logvar.float())
    return torch.cat(means), torch.cat(logvars)


def _sample_latents(cache: tuple[torch.Tensor, torch.Tensor], idx: list[int], rng: BatchRandom,
                    model: LatentDiffusion) -> torch.Tensor:
    mean, logvar = cache[0][idx], cache[1][idx]
    noise = rng.randn(mean.shape).to(mean)
    return (mean + torch.exp(0.5 * logvar) * noise) * model.autoencoder.scale_factor


def _sample_grid_on(parallel: DataParallel, model: LatentDiffusion, ema: EMA,
                    held: InMemoryBatches | None, dataset: Any, cfg: ExperimentConfig,
                    precision: PrecisionChoice, out: Path, step: int, loggers: RunLoggers) -> None:
    """Rank 0 samples; under FSDP every rank runs the sharded UNet with it and rank 0 writes."""
    if parallel.collective_forward or parallel.cluster.is_main:
        _sample_grid(model, ema, held, dataset, cfg, precision, out, step, loggers,
                     write=parallel.cluster.is_main)


def _sample_grid(model: LatentDiffusion, ema: EMA, held: InMemoryBatches | None, dataset: Any,
                 cfg: ExperimentConfig, precision: PrecisionChoice, out: Path, step: int,
                 loggers: RunLoggers, n: int = 16, write: bool = True, nrow: int = 8) -> None:
    """Sample with EMA weights, conditioned on the first ``n`` dataset items' conditions, in
    the precision the run chose at start; sample ``i`` starts from the noise of seed
    ``seed + i``, as ``ldm sample`` draws it. Writes the grid, its sidecar JSON (conditions and
    seeds, ``ldmcore.grid_sidecar``) and hands the grid to the loggers."""

    batch = held.take(list(range(min(n, held.size)))) if held else collate([dataset[i] for i in range(n)])
    count = len(batch["image"])
    values = model.conditioner.resolve(batch)  # derived values (a random hole) drawn once
    noise = torch.stack([torch.randn(model.latent_shape(), generator=torch.Generator().manual_seed(cfg.seed + i))
                         for i in range(count)])
    live = {k: p.detach().clone() for k, p in denoiser_params(model).items()}
    _copy_into(model, ema.shadow)
    model.eval()
    with precision.autocast():
        images = model.sample(values, count, noise=noise,  # the run's own plan (model.sampling)
                              generator=torch.Generator().manual_seed(cfg.seed))
    _copy_into(model, live)
    model.train()
    if write:
        save_grid(images, out, nrow=nrow)
        write_sidecar(out, values, list(model.conditioner.encoders), count, nrow, cfg.seed, step=step,
                      **model.sampling.record(), ema=True, precision=precision.name)
        loggers.image(step, "samples", np.asarray(to_pil(grid(images, nrow)).convert("RGB")))


def _copy_into(model: LatentDiffusion, values: dict[str, torch.Tensor]) -> None:
    params = denoiser_params(model)
    with torch.no_grad():
        for k, v in values.items():
            params[k].copy_(v)
