"""The discrete DDPM noise schedule and conversions between what a network predicts.

Forward process: ``z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps``. In the sigma view
(Karras/k-diffusion) the same point is ``z_t / sqrt(abar_t) = z_0 + sigma_t eps`` with
``sigma_t = sqrt((1 - abar_t) / abar_t)``. The v-prediction target (Salimans & Ho 2022) is
``v = sqrt(abar_t) eps - sqrt(1 - abar_t) z_0``.
"""

from __future__ import annotations

import math
from enum import Enum

import torch


class BetaSchedule(str, Enum):
    LINEAR = "linear"  # DDPM: betas evenly spaced
    SCALED_LINEAR = "scaled_linear"  # LDM/SD: sqrt(betas) evenly spaced
    COSINE = "cosine"  # Nichol & Dhariwal 2021


class Prediction(str, Enum):
    EPS = "eps"
    V = "v"


def make_betas(kind: BetaSchedule, steps: int, beta_start: float = 0.00085,
               beta_end: float = 0.012, cosine_s: float = 0.008) -> torch.Tensor:
    """Betas in float64 for ``steps`` training timesteps."""
    kind = BetaSchedule(kind)
    if kind is BetaSchedule.LINEAR:
        return torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
    if kind is BetaSchedule.SCALED_LINEAR:
        return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, steps, dtype=torch.float64) ** 2
    t = torch.arange(steps + 1, dtype=torch.float64) / steps
    abar = torch.cos((t + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2
    return (1 - abar[1:] / abar[:-1]).clamp(max=0.999)


class NoiseSchedule:
    """Cumulative products and per-timestep coefficients of a beta schedule."""

    def __init__(self, betas: torch.Tensor) -> None:
        self.betas = betas.double()
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        self.num_timesteps = len(betas)

    @classmethod
    def build(cls, kind: BetaSchedule | str, steps: int = 1000, beta_start: float = 0.00085,
              beta_end: float = 0.012) -> NoiseSchedule:
        return cls(make_betas(BetaSchedule(kind), steps, beta_start, beta_end))

    def abar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """alpha-bar at integer timesteps ``t``, shaped to broadcast against ``like``."""
        a = self.alphas_cumprod.to(like.device)[t.long()].to(like.dtype)
        return a.view(-1, *([1] * (like.dim() - 1)))

    @property
    def sigmas(self) -> torch.Tensor:
        return ((1 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()

    def add_noise(self, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.abar(t, z0)
        return a.sqrt() * z0 + (1 - a).sqrt() * noise

    def target(self, prediction: Prediction, z0: torch.Tensor, noise: torch.Tensor,
               t: torch.Tensor) -> torch.Tensor:
        """What the network is trained to output."""
        if Prediction(prediction) is Prediction.EPS:
            return noise
        a = self.abar(t, z0)
        return a.sqrt() * noise - (1 - a).sqrt() * z0

    def to_eps_x0(self, prediction: Prediction, output: torch.Tensor, zt: torch.Tensor,
                  t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Convert a network output to (eps, z0) estimates."""
        a = self.abar(t, zt)
        sa, s1a = a.sqrt(), (1 - a).sqrt()
        if Prediction(prediction) is Prediction.EPS:
            eps = output
            return eps, (zt - s1a * eps) / sa
        # v = sa*eps - s1a*z0 and zt = sa*z0 + s1a*eps  =>  z0 = sa*zt - s1a*v, eps = s1a*zt + sa*v
        return s1a * zt + sa * output, sa * zt - s1a * output
