"""The space a model diffuses in: its latents, or their scaled residual from a base estimate.

With a plugin that gives a base (``ConditionEncoder.base``: the bicubic upsampling of a
low-resolution input, a hole filled from its border), the model learns and samples
``r = s (z_0 - base)`` instead of ``z_0``, and returns ``base + r / s``. Pure noise then denoises
to the base under an untrained network, and the network's whole capacity goes to what the base
misses. ``s`` (``model.diffusion.residual_scale``) brings the residual to about unit variance,
where the noise schedule was designed to work: a residual of std 0.1 left unscaled would be
drowned by noise at all but the last few percent of timesteps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ResidualSpace:
    """``into`` maps latents to the diffused variable, ``out`` maps it back (exact inverses);
    without a base both are the identity."""

    base: torch.Tensor | None
    scale: float = 1.0

    def into(self, latents: torch.Tensor) -> torch.Tensor:
        if self.base is None:
            return latents
        return (latents - self.base.to(latents)) * self.scale

    def out(self, residual: torch.Tensor) -> torch.Tensor:
        if self.base is None:
            return residual
        return self.base.to(residual) + residual / self.scale
