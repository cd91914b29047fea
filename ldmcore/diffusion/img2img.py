"""Image-to-image (SDEdit) and masked sampling by latent blending, for any model and sampler.

Image-to-image (Meng et al. 2022, "SDEdit"): noise the latent of a given image to the level
``strength`` of the way up the sampler's noise levels, and run only the remaining steps.

Masked sampling without an inpainting plugin (latent blending, Avrahami et al. 2023, "Blended
Latent Diffusion"): inside the known region the denoiser's estimate is replaced by the known
latent. Every sampler here moves ``x`` along ``D + (sigma'/sigma)(x - D)`` plus fresh noise, so
the known region then stays exactly "known latent + sigma * noise" at every level - the blend
of the paper - and ends at the known latent itself, whichever sampler (first- or third-party)
runs. The unknown region sees a consistent noisy context at each step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ldmcore.errors import ConfigError


def start_index(steps: int, strength: float) -> int:
    """First sigma index to run for image-to-image: ``int(steps * strength)`` steps remain
    (diffusers' rule); strength 1 runs every step, 0 none."""
    if not 0.0 <= strength <= 1.0:
        raise ConfigError(f"strength must be in [0, 1] (the fraction of the steps to run), "
                          f"got {strength}.")
    return steps - min(int(steps * strength), steps)


def noised(latents: torch.Tensor, sigma: float, noise: torch.Tensor) -> torch.Tensor:
    """The sigma-view point ``z_0 + sigma * noise``: exactly the forward process at that level."""
    return latents + sigma * noise.to(latents)


class LatentBlend:
    """Wrap ``model(x, sigma) -> denoised`` so that where ``mask`` is 0 the estimate is
    ``known`` (mask 1 = generate, 0 = keep; soft values blend)."""

    def __init__(self, model: Callable[..., torch.Tensor], known: torch.Tensor,
                 mask: torch.Tensor) -> None:
        self.model = model
        self.known = known
        self.mask = mask

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
        return self.paste(self.model(x, sigma, **extra))

    def paste(self, z: torch.Tensor) -> torch.Tensor:
        mask = self.mask.to(z)
        return mask * z + (1 - mask) * self.known.to(z)
