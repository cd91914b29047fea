"""LatentDiffusion: autoencoder + UNet + conditioner, with the L_LDM loss and sampling.

The model does not know which conditions exist: it receives built encoders (resolved through
the registry by whoever builds the model) and derives the UNet's input channels, context width
and vector width from their declared specs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ldmcore.conditioning import Conditioner, Conditioning, UNetInput
from ldmcore.diffusion.denoisers import DiscreteDenoiser
from ldmcore.diffusion.guidance import Guidance, GuidedDenoiser, guide
from ldmcore.diffusion.img2img import LatentBlend, noised
from ldmcore.diffusion.loss import denoising_loss
from ldmcore.diffusion.plan import SamplingPlan
from ldmcore.diffusion.residual import ResidualSpace
from ldmcore.diffusion.schedule import NoiseSchedule, Prediction
from ldmcore.diffusion.step_windows import StepWindows
from ldmcore.errors import ConfigError
from ldmcore.nn.pixel_space import FirstStage
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
    def __init__(self, autoencoder: FirstStage, unet: UNetModel, conditioner: Conditioner,
                 schedule: NoiseSchedule, latent_size: tuple[int, int],
                 prediction: Prediction = Prediction.EPS, snr_gamma: float | None = None,
                 residual_scale: float = 1.0, sampling: SamplingPlan | None = None) -> None:
        super().__init__()
        self.sampling = sampling or SamplingPlan()  # how ``sample`` samples unless told otherwise
        self.snr_gamma = snr_gamma  # Min-SNR-gamma loss weights (None: uniform)
        self.residual_scale = residual_scale  # with a base plugin: diffuse s (z_0 - base)
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
        for enc in conditioner.encoders.values():  # e.g. a ControlNet copies the encoder half
            enc.init_from_backbone(unet)

    def train(self, mode: bool = True) -> LatentDiffusion:
        super().train(mode)
        self.autoencoder.eval()  # the first stage is frozen
        return self

    # -- the network --------------------------------------------------------------------------
    def network(self, zt: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The UNet on z_t with routed conditions: concat maps joined on channels, residual
        plugins' maps (made from this call's inputs where they depend on them) added at taps."""
        dtype = self.unet.out[-1].weight.dtype  # a float64 sampler state runs the UNet in its own dtype
        zt = zt.to(dtype)
        x = zt if cond.concat is None else torch.cat([zt, cond.concat.to(dtype)], dim=1)
        residuals = None
        if cond.residuals is not None:
            residuals = cond.residuals.maps(UNetInput(x, t, cond.context, cond.context_mask, cond.vector))
        return self.unet(x, t, cond.context, cond.context_mask, cond.vector, residuals,
                         inserted=cond.inserted)

    # -- training -----------------------------------------------------------------------------
    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Scaled latents of images in [-1, 1], sampled from the frozen first stage's posterior."""
        return self.autoencoder.latents(images, generator)

    def loss(self, batch: dict[str, Any], latents: torch.Tensor | None = None,
             generator: BatchRandom | torch.Generator | None = None) -> torch.Tensor:
        """L_LDM = E ||target - net(z_t, t, tau(y))||^2 with per-plugin condition dropout,
        each element weighted as the enabled plugins say (``Conditioner.loss_weight``; uniform
        unless one does) and each sample by Min-SNR-gamma when ``snr_gamma`` is set.

        ``latents`` may be given (precomputed); otherwise ``batch["image"]`` is encoded.
        ``generator`` may be a ``BatchRandom`` so that sharded batches draw global randomness.
        """
        rng = as_batch_random(generator)
        if latents is None:
            with torch.no_grad():  # the first stage is frozen
                post = self.autoencoder.encode(batch["image"])
            eps_z = rng.randn(post.mean.shape).to(post.mean)
            latents = (post.mean + (0.5 * post.logvar).exp() * eps_z) * self.autoencoder.scale_factor
        values = self.conditioner.resolve(batch, generator=rng)  # e.g. one random hole for all
        z0 = self.diffusion_space(values).into(latents.detach())
        b = z0.shape[0]
        t = rng.randint(self.schedule.num_timesteps, b).to(z0.device)
        noise = rng.randn(z0.shape).to(z0)
        zt = self.schedule.add_noise(z0, noise, t)
        cond = self.conditioner(values, b, drop=True, generator=rng)
        out = self.network(zt, t, cond)
        target = self.schedule.target(self.prediction, z0, noise, t)
        snr_weight = None
        if self.snr_gamma is not None:
            snr_weight = self.schedule.min_snr_weight(t, self.prediction, self.snr_gamma)
        return denoising_loss(out, target, self.conditioner.loss_weight(values, tuple(z0.shape)),
                              snr_weight)

    def diffusion_space(self, values: dict[str, Any]) -> ResidualSpace:
        """Where the diffusion runs for condition ``values``: the latents, or the scaled residual
        from the base plugin's estimate of them."""
        return ResidualSpace(self.conditioner.base(values), self.residual_scale)

    # -- sampling -----------------------------------------------------------------------------
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.autoencoder.shape.latent_channels, *self.latent_size)

    def denoiser(self) -> DiscreteDenoiser:
        """The UNet as a sigma-space denoiser ``D(x, sigma, cond=Conditioning)``."""
        return DiscreteDenoiser(self.network, self.schedule, self.prediction)

    def guided_denoiser(self, values: dict[str, Any], n: int, guidance: Guidance,
                        levels: torch.Tensor | None = None) -> GuidedDenoiser:
        """``D(x, sigma)`` for ``n`` samples of condition ``values``, guided as asked; with the
        run's noise ``levels``, residual plugins act only in their step windows."""
        denoiser = self.denoiser() if levels is None else StepWindows(self.denoiser(), levels)
        return guide(denoiser, self.conditioner, values, n, guidance)

    @torch.inference_mode()
    def sample(self, values: dict[str, Any], n: int, plan: SamplingPlan | None = None, *,
               noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
               init: torch.Tensor | None = None, mask: torch.Tensor | None = None,
               callback: Callable[[dict[str, Any]], None] | None = None) -> torch.Tensor:
        """Generate ``n`` images for batched condition ``values``; returns images in [-1, 1].

        ``plan`` says how (sampler, steps, noise levels, knobs, guidance, strength); by default
        the model's own ``sampling`` (a run's sampler config). ``noise`` is the starting latent
        noise (default: drawn from ``generator``, which stochastic samplers also draw from).
        ``init`` (images in [-1, 1]) with ``plan.strength`` < 1 is image-to-image; ``mask``
        (1 = generate, 0 = keep; image or latent resolution) blends the known latent in for
        any model.
        """
        plan = plan or self.sampling
        device = next(self.unet.parameters()).device
        levels = plan.levels(self.schedule)
        if noise is None:
            noise = torch.randn((n, *self.latent_shape()), generator=generator)
        noise = noise.to(device)
        values = self.conditioner.resolve(values)
        space = self.diffusion_space(values)
        if init is None:
            if mask is not None:
                raise ConfigError("a mask needs an init image: the mask says which parts of "
                                  "it to keep (init=PATH mask=PATH).")
            # the sampler state is float64: x = z sqrt(1 + sigma^2) is up to ~15x larger than z,
            # and float32 steps would lose digits the UNet's float32 output still has
            x = noise.double() * DiscreteDenoiser.initial_noise_scale(float(levels[0]))
        else:
            if init.shape[0] == 1:
                init = init.expand(n, *init.shape[1:])
            known = space.into(self.encode_images(init.to(device), generator).float())
            levels = levels[plan.first_step(levels):]
            if len(levels) == 1:
                return self.autoencoder.images(space.out(known)).clamp(-1, 1)
            x = noised(known.double(), float(levels[0]), noise.double())
        model: Callable[..., torch.Tensor] = self.guided_denoiser(values, n, plan.guidance, levels)
        if mask is not None:
            model = LatentBlend(model, known, self.latent_mask(mask).to(device))
        z0 = plan.sampler(model, x, levels, generator=generator, callback=callback, **plan.knobs)
        if isinstance(model, LatentBlend):
            z0 = model.paste(z0)
        if float(levels[-1]) > 0:  # ended at sigma > 0: x = z / sqrt(abar), abar = 1 / (1 + sigma^2)
            z0 = z0 / (1.0 + float(levels[-1]) ** 2) ** 0.5
        z0 = space.out(z0.float())
        return self.conditioner.finish(self.autoencoder.images(z0).clamp(-1, 1), values)

    def latent_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """A (B, 1, H, W) mask at image or latent resolution, area-averaged to the latents."""
        if mask.dim() == 3:
            mask = mask[:, None]
        mask = mask.float()
        if tuple(mask.shape[-2:]) != self.latent_size:
            mask = F.interpolate(mask, size=self.latent_size, mode="area")
        return mask.clamp(0, 1)



def denoiser_params(model: LatentDiffusion) -> dict[str, torch.nn.Parameter]:
    """The trained parameters: UNet and trainable condition encoders (not the autoencoder)."""
    params = {f"unet.{k}": p for k, p in model.unet.named_parameters()}
    for name, enc in model.conditioner.encoders.items():
        if enc.trainable:
            params.update({f"conditioner.encoders.{name}.{k}": p for k, p in enc.named_parameters()
                           if p.requires_grad})
    return params
