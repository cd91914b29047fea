"""LatentDiffusion: autoencoder + UNet + conditioner, with the L_LDM loss and sampling.

The model does not know which conditions exist: it receives built encoders (resolved through
the registry by whoever builds the model) and derives the UNet's input channels, context width
and vector width from their declared specs.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ldmcore.conditioning import Conditioner, Conditioning
from ldmcore.diffusion.guidance import guided
from ldmcore.diffusion.samplers import SAMPLERS
from ldmcore.diffusion.schedule import NoiseSchedule, Prediction
from ldmcore.nn.autoencoder import AutoencoderKL
from ldmcore.nn.unet import UNetModel, UNetShape
from ldmcore.randomness import BatchRandom, as_batch_random


def derive_unet_shape(base: UNetShape, latent_channels: int, conditioner: Conditioner,
                      context_dim: int) -> UNetShape:
    """Fill the UNet's condition-dependent widths from the enabled plugins' specs."""
    return replace(
        base,
        in_channels=latent_channels + conditioner.concat_channels,
        out_channels=latent_channels,
        context_dim=context_dim if conditioner.uses_crossattn else None,
        vector_dim=conditioner.vector_dim,
    )


class LatentDiffusion(nn.Module):
    def __init__(self, autoencoder: AutoencoderKL, unet: UNetModel, conditioner: Conditioner,
                 schedule: NoiseSchedule, latent_size: tuple[int, int],
                 prediction: Prediction = Prediction.EPS) -> None:
        super().__init__()
        self.latent_size = tuple(latent_size)
        self.autoencoder = autoencoder.requires_grad_(False).eval()
        self.unet = unet
        self.conditioner = conditioner
        self.schedule = schedule
        self.prediction = Prediction(prediction)
        expected = autoencoder.shape.latent_channels + conditioner.concat_channels
        if unet.shape.in_channels != expected:
            raise ValueError(f"UNet has {unet.shape.in_channels} input channels; latents "
                             f"({autoencoder.shape.latent_channels}) + concat plugins "
                             f"({conditioner.concat_channels}) need {expected}")

    def train(self, mode: bool = True) -> LatentDiffusion:
        super().train(mode)
        self.autoencoder.eval()  # the first stage is frozen
        return self

    # -- the network --------------------------------------------------------------------------
    def network(self, zt: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The UNet on z_t with routed conditions: concat maps joined on channels."""
        x = zt if cond.concat is None else torch.cat([zt, cond.concat.to(zt.dtype)], dim=1)
        return self.unet(x, t, cond.context, cond.context_mask, cond.vector)

    # -- training -----------------------------------------------------------------------------
    def loss(self, batch: dict[str, Any], latents: torch.Tensor | None = None,
             generator: BatchRandom | torch.Generator | None = None) -> torch.Tensor:
        """L_LDM = E ||target - net(z_t, t, tau(y))||^2 with per-plugin condition dropout.

        ``latents`` may be given (precomputed); otherwise ``batch["image"]`` is encoded.
        ``generator`` may be a ``BatchRandom`` so that sharded batches draw global randomness.
        """
        rng = as_batch_random(generator)
        if latents is None:
            with torch.no_grad():  # the first stage is frozen
                post = self.autoencoder.encode(batch["image"])
            eps_z = rng.randn(post.mean.shape).to(post.mean)
            latents = (post.mean + (0.5 * post.logvar).exp() * eps_z) * self.autoencoder.scale_factor
        z0 = latents.detach()
        b = z0.shape[0]
        t = rng.randint(self.schedule.num_timesteps, b).to(z0.device)
        noise = rng.randn(z0.shape).to(z0)
        zt = self.schedule.add_noise(z0, noise, t)
        cond = self.conditioner(batch, b, drop=True, generator=rng)
        out = self.network(zt, t, cond)
        return F.mse_loss(out.float(), self.schedule.target(self.prediction, z0, noise, t).float())

    # -- sampling -----------------------------------------------------------------------------
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.autoencoder.shape.latent_channels, *self.latent_size)

    @torch.inference_mode()
    def sample(self, values: dict[str, Any], n: int, *, sampler: str = "ddim", steps: int = 50,
               guidance: float = 1.0, generator: torch.Generator | None = None,
               sampler_options: dict[str, Any] | None = None,
               noise: torch.Tensor | None = None) -> torch.Tensor:
        """Generate ``n`` images for batched condition ``values``; returns images in [-1, 1]."""
        device = next(self.unet.parameters()).device
        cond = self.conditioner(values, n)
        uncond = self.conditioner.unconditional(n)
        net = guided(self.network, cond, uncond, guidance)

        def denoise(zt: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.schedule.to_eps_x0(self.prediction, net(zt, t).float(), zt, t)

        if noise is None:
            noise = torch.randn((n, *self.latent_shape()), generator=generator)
        x = noise.to(device)
        z0 = SAMPLERS[sampler](denoise, x, self.schedule, steps, generator=generator,
                               **(sampler_options or {}))
        return self.conditioner.finish(self.autoencoder.images(z0).clamp(-1, 1), values)
