"""Training: stage 1 (autoencoder) when needed, then the latent diffusion model.

AdamW with linear warm-up, EMA of the denoiser (UNet + trainable encoders), gradient
accumulation, optional bf16 autocast, gradient clipping. A non-finite loss stops the run with
the last good checkpoint intact. ``last.safetensors`` holds weights, EMA, optimizer state, the
step, the RNG state, the resolved config and plugin versions; ``resume=true`` continues exactly
(batches and noise depend only on (seed, step)).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ldmcore import checkpoint
from ldmcore.attach import attach_pretrained, save_plugin_weights, train_only_params
from ldmcore.build import build_autoencoder, build_model, load_autoencoder
from ldmcore.config import ExperimentConfig
from ldmcore.data.batches import (InMemoryBatches, StepBatchSampler, loader_batches, memory_batches,
                                  step_generator)
from ldmcore.data.datasets import build_dataset
from ldmcore.data.transforms import is_deterministic
from ldmcore.errors import TrainingDiverged
from ldmcore.images import save_grid
from ldmcore.model import LatentDiffusion
from ldmcore.registry import Registry, default_registry
from ldmcore.runfolder import MetricsLog, RunFolder
from ldmcore.train_autoencoder import autocast, train_autoencoder

FORMAT = "ldmcore/run/1"


class EMA:
    """Exponential moving average of parameters, with the usual warm-up of the decay."""

    def __init__(self, params: dict[str, torch.nn.Parameter], decay: float) -> None:
        self.decay = decay
        self.shadow = {k: p.detach().clone().float() for k, p in params.items()}

    @torch.no_grad()
    def update(self, params: dict[str, torch.nn.Parameter], step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(list(self.shadow.values()),
                             [params[k].detach().float() for k in self.shadow], 1 - d)


def denoiser_params(model: LatentDiffusion) -> dict[str, torch.nn.Parameter]:
    """The trained parameters: UNet and trainable condition encoders (not the autoencoder)."""
    params = {f"unet.{k}": p for k, p in model.unet.named_parameters()}
    for name, enc in model.conditioner.encoders.items():
        if enc.trainable:
            params.update({f"conditioner.encoders.{name}.{k}": p for k, p in enc.named_parameters()
                           if p.requires_grad})
    return params


def plugin_versions(model: LatentDiffusion, registry: Registry) -> dict[str, dict[str, str]]:
    info = {i.name: i for i in registry.infos()}
    return {n: {"package": info[n].package, "version": info[n].version, "module": info[n].module}
            for n in model.conditioner.encoders if n in info}


def save_state(path: Path, model: LatentDiffusion, ema: EMA, opt: torch.optim.Optimizer, step: int,
               cfg: ExperimentConfig, registry: Registry) -> None:
    tensors = checkpoint.with_prefix("", {k: v for k, v in model.state_dict().items()})
    tensors.update(checkpoint.with_prefix("ema.", ema.shadow))
    opt_tensors, opt_meta = checkpoint.optimizer_state(opt)
    tensors.update(opt_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    checkpoint.save(path, tensors, {
        "format": FORMAT, "kind": "latent_diffusion", "step": step,
        "config": cfg.model_dump(mode="json"), "plugins": plugin_versions(model, registry),
        "optimizer": opt_meta,
    })


def _lr_at(cfg: ExperimentConfig, step: int) -> float:
    warm = cfg.trainer.warmup_steps
    return cfg.trainer.lr * (min(1.0, (step + 1) / warm) if warm else 1.0)


def train(cfg: ExperimentConfig, registry: Registry | None = None) -> RunFolder:
    """Run both stages as configured; returns the run folder."""
    registry = registry or default_registry()
    tc = cfg.trainer
    if tc.threads:
        torch.set_num_threads(tc.threads)
    torch.manual_seed(cfg.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    run = RunFolder(cfg.run_dir)
    resume = cfg.resume and run.root.exists()
    d = cfg.data
    # the data is checked before the run folder is made, so a bad data.path leaves no half-made run
    dataset = build_dataset(d.name, path=d.path, image_size=d.image_size, channels=d.channels,
                            hflip=d.hflip, shift=d.shift)
    run.prepare(cfg.model_dump(mode="json"), resume=cfg.resume, overwrite=cfg.overwrite)
    in_memory = is_deterministic(d.hflip, d.shift) and len(dataset) <= 100_000
    held = InMemoryBatches(dataset) if in_memory else None

    def stream(batch_size: int, start: int, seed_offset: int):
        sampler = StepBatchSampler(len(dataset), batch_size, cfg.seed + seed_offset, start)
        return memory_batches(held, sampler) if held else loader_batches(dataset, sampler, d.num_workers)

    # -- stage 1 --------------------------------------------------------------------------------
    if cfg.model.init_from is not None:
        ae = build_autoencoder(cfg)  # its weights come with the pretrained run
    elif cfg.autoencoder.checkpoint is not None:
        ae = load_autoencoder(cfg, cfg.autoencoder.checkpoint)
    elif run.autoencoder.exists():
        ae = load_autoencoder(cfg, run.autoencoder)
    else:
        ae = train_autoencoder(cfg, build_autoencoder(cfg), stream(cfg.autoencoder.train.batch_size, 0, 1),
                               run, device)
    # -- stage 2 --------------------------------------------------------------------------------
    model = build_model(cfg, ae, registry)
    attachment = attach_pretrained(model, cfg.model.init_from) if cfg.model.init_from else None
    model = model.to(device)
    params = (train_only_params(model, attachment, list(tc.train_only)) if tc.train_only
              else denoiser_params(model))
    opt = torch.optim.AdamW(params.values(), lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)
    ema = EMA(params, tc.ema_decay)
    step = 0
    if resume and run.last.exists():
        step = _restore(run.last, model, ema, opt)

    cache = None
    if held is not None and tc.cache_latents:
        cache = _encode_all(model, held.data["image"], device, cfg.trainer.precision)
    log = MetricsLog(run.metrics)
    bar = tqdm(total=tc.max_steps, initial=step, desc="diffusion", disable=not tc.progress,
               dynamic_ncols=True)
    sampler = StepBatchSampler(len(dataset), tc.batch_size, cfg.seed)
    data = None if cache is not None else stream(tc.batch_size, step * tc.grad_accum, 0)
    model.train()
    t0, steps_done, last_good = time.perf_counter(), 0, step
    try:
        while step < tc.max_steps:
            for group in opt.param_groups:
                group["lr"] = _lr_at(cfg, step)
            total = 0.0
            for micro in range(tc.grad_accum):
                k = step * tc.grad_accum + micro
                gen = step_generator(cfg.seed, k, 0)
                if cache is not None:
                    idx = sampler.indices(k)
                    batch, latents = held.take(idx), _sample_latents(cache, idx, gen, model)
                else:
                    batch, latents = next(data), None
                batch = {k2: (v.to(device) if isinstance(v, torch.Tensor) else v) for k2, v in batch.items()}
                with autocast(tc.precision, device):
                    loss = model.loss(batch, latents, generator=gen) / tc.grad_accum
                loss.backward()
                total += loss.detach()
            if not torch.isfinite(total):
                raise TrainingDiverged(
                    f"the loss became {float(total)} at step {step}; stopped. The last good "
                    f"checkpoint ({str(run.last)!r}, step {last_good}) is intact. Lower "
                    f"trainer.lr (now {tc.lr}), set trainer.grad_clip, or use trainer.precision=fp32.")
            if tc.grad_clip:
                torch.nn.utils.clip_grad_norm_(params.values(), tc.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            ema.update(params, step)
            step += 1
            steps_done += 1
            bar.update(1)
            if step % tc.log_every == 0 or step == tc.max_steps:
                rate = steps_done / (time.perf_counter() - t0)
                value = float(total)
                bar.set_postfix(loss=f"{value:.4f}", it_s=f"{rate:.2f}")
                log.write(stage="diffusion", step=step, loss=value, lr=_lr_at(cfg, step - 1),
                          steps_per_s=rate)
            if step % tc.checkpoint_every == 0 or step == tc.max_steps:
                save_state(run.last, model, ema, opt, step, cfg, registry)
                save_plugin_weights(run.root / "plugins", model, attachment, {"step": step})
                last_good = step
                if tc.keep_checkpoints and step < tc.max_steps:
                    save_state(run.step_checkpoint(step), model, ema, opt, step, cfg, registry)
                    run.prune(tc.keep_checkpoints)
            if tc.sample_every and step % tc.sample_every == 0 and step < tc.max_steps:
                _sample_grid(model, ema, held, dataset, cfg, run.samples / f"step_{step}.png")
    except KeyboardInterrupt:
        save_state(run.last, model, ema, opt, step, cfg, registry)
        bar.close()
        raise
    bar.close()
    if step == 0 or not run.last.exists():
        save_state(run.last, model, ema, opt, step, cfg, registry)
    _sample_grid(model, ema, held, dataset, cfg, run.samples / f"step_{step}.png")
    return run


def _restore(path: Path, model: LatentDiffusion, ema: EMA, opt: torch.optim.Optimizer) -> int:
    tensors, meta = checkpoint.load(path)
    state = {k: v for k, v in tensors.items() if not k.startswith(("ema.", "optim.", "rng."))}
    checkpoint.load_into(model, state, "model", path)
    for k in ema.shadow:
        ema.shadow[k].copy_(tensors[f"ema.{k}"])
    checkpoint.restore_optimizer(opt, tensors, meta["optimizer"])
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


def _sample_latents(cache: tuple[torch.Tensor, torch.Tensor], idx: list[int], gen: torch.Generator,
                    model: LatentDiffusion) -> torch.Tensor:
    mean, logvar = cache[0][idx], cache[1][idx]
    noise = torch.randn(mean.shape, generator=gen).to(mean)
    return (mean + torch.exp(0.5 * logvar) * noise) * model.autoencoder.scale_factor


def _sample_grid(model: LatentDiffusion, ema: EMA, held: InMemoryBatches | None, dataset: Any,
                 cfg: ExperimentConfig, out: Path, n: int = 16) -> None:
    """Sample with EMA weights, conditioned on the first ``n`` dataset items' conditions."""
    from ldmcore.data.datasets import collate

    batch = held.take(list(range(min(n, held.size)))) if held else collate([dataset[i] for i in range(n)])
    live = {k: p.detach().clone() for k, p in denoiser_params(model).items()}
    _copy_into(model, ema.shadow)
    model.eval()
    with autocast(cfg.trainer.precision, next(model.unet.parameters()).device):
        images = model.sample(batch, len(batch["image"]), sampler=cfg.sampler.name,
                              steps=cfg.sampler.steps, guidance=cfg.sampler.guidance,
                              generator=torch.Generator().manual_seed(cfg.seed))
    _copy_into(model, live)
    model.train()
    save_grid(images, out, nrow=8)


def _copy_into(model: LatentDiffusion, values: dict[str, torch.Tensor]) -> None:
    params = denoiser_params(model)
    with torch.no_grad():
        for k, v in values.items():
            params[k].copy_(v)
