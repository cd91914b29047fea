"""Stage 1: train the KL autoencoder (perceptual compression) and fit its latent scale.

Loss = L1(x, D(z)) + kl_weight * KL(q(z|x) || N(0, I)) (+ a PatchGAN hinge term when the
discriminator is enabled). At the end ``scale_factor`` is set to 1/std of the first batch's
latents (LDM's ``scale_by_std``) and saved with the weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

from ldmcore import checkpoint
from ldmcore.config import ExperimentConfig
from ldmcore.data.batches import step_generator
from ldmcore.errors import TrainingDiverged
from ldmcore.hardware.precision import autocast
from ldmcore.hardware.threads import ThreadGovernor
from ldmcore.nn.autoencoder import AutoencoderKL
from ldmcore.nn.discriminator import PatchDiscriminator, hinge_d_loss
from ldmcore.progress import progress_bar
from ldmcore.runfolder import MetricsLog, RunFolder


def train_autoencoder(cfg: ExperimentConfig, ae: AutoencoderKL, batches: Iterator[dict[str, Any]],
                      run: RunFolder, device: torch.device, precision: str = "fp32",
                      threads: ThreadGovernor | None = None,
                      listener: Callable[[dict[str, Any]], None] | None = None) -> AutoencoderKL:
    """Train ``ae`` in place (it comes back frozen) under ``precision`` (a resolved choice: fp32, bf16 or fp16); ``threads``
    keeps the thread count at the free cores while it runs; ``listener`` (the run's loggers)
    gets every record ``metrics.jsonl`` does."""
    tc = cfg.autoencoder.train
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")  # fp16 only
    ae.to(device).train().requires_grad_(True)  # a model's own first stage comes frozen
    opt = torch.optim.AdamW(ae.parameters(), lr=tc.lr, betas=(0.5, 0.9), weight_decay=0.0)
    disc = None
    if tc.discriminator.enabled:
        disc = PatchDiscriminator(cfg.data.channels, tc.discriminator.channels).to(device)
        opt_d = torch.optim.AdamW(disc.parameters(), lr=tc.lr, betas=(0.5, 0.9))
    log = MetricsLog(run.metrics, listener)
    bar = progress_bar(tc.steps, "autoencoder", cfg.trainer.progress)
    first: torch.Tensor | None = None
    t0 = time.perf_counter()
    for step in range(tc.steps):
        x = next(batches)["image"].to(device)
        if first is None:
            first = x
        gen = step_generator(cfg.seed, step, 2)
        with autocast(precision, device):
            recon, post = ae(x, gen)
            rec_loss = F.l1_loss(recon.float(), x)
            kl = post.kl().mean()  # per sample, summed over latent dims
            # per-pixel normalisation of CompVis's sum-reduced loss: same optimum, same kl_weight
            loss = rec_loss + tc.kl_weight * kl / x[0].numel()
            use_gan = disc is not None and step >= tc.discriminator.start_step
            if use_gan:
                loss = loss + tc.discriminator.weight * (-disc(recon).float().mean())
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"autoencoder loss became {loss.item()} at step {step}; lower "
                                   f"autoencoder.train.lr (now {tc.lr}) or kl_weight.")
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(ae.parameters(), 1.0)
        scaler.step(opt)
        if use_gan:
            with autocast(precision, device):
                d_loss = hinge_d_loss(disc(x).float(), disc(recon.detach()).float())
            opt_d.zero_grad(set_to_none=True)
            scaler.scale(d_loss).backward()
            scaler.step(opt_d)
        scaler.update()
        bar.update(1)
        retuned = threads.tick() if threads is not None else None
        if retuned is not None:
            log.write(stage="hardware", step=step, threads=retuned)
        if step % cfg.trainer.log_every == 0 or step == tc.steps - 1:
            rate = (step + 1) / (time.perf_counter() - t0)
            bar.set_postfix(l1=f"{rec_loss.item():.4f}", kl=f"{kl.item():.3f}", it_s=f"{rate:.1f}")
            log.write(stage="autoencoder", step=step, l1=rec_loss.item(), kl=kl.item(), steps_per_s=rate)
    bar.close()
    ae.eval().requires_grad_(False)  # stage 2 uses it frozen
    if first is None:
        first = next(batches)["image"].to(device)
    scale = ae.fit_scale_factor(first)
    log.write(stage="autoencoder", scale_factor=scale)
    checkpoint.save(run.autoencoder, checkpoint.with_prefix("autoencoder.", ae.state_dict()),
                    {"kind": "autoencoder", "config": cfg.autoencoder.model_dump(mode="json"),
                     "image_channels": cfg.data.channels})
    return ae
