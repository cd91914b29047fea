"""The discrete DDPM noise schedule and conversions between what a network predicts.

Forward process: ``z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps``. In the sigma view
(Karras/k-diffusion) the same point is ``z_t / sqrt(abar_t) = z_0 + sigma_t eps`` with
``sigma_t = sqrt((1 - abar_t) / abar_t)``. The v-prediction target (Salimans & Ho 2022) is
``v = sqrt(abar_t) eps - sqrt(1 - abar_t) z_0``.

A schedule may be rescaled to zero terminal SNR (Lin et al. 2023, "Common Diffusion Noise
Schedules and Sample Steps are Flawed", Algorithm 1): then ``abar_T = 0``, the last training
timestep sees pure noise, and only v-prediction can be trained on it (an eps-model cannot say
anything about z_0 from pure noise).
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


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2023, Algorithm 1: shift and scale ``sqrt(abar)`` so that it ends at exactly 0
    and starts where it did, then recover the betas. The last beta becomes 1."""
    root = torch.cumprod(1.0 - betas.double(), dim=0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)
    abar = root ** 2
    alphas = torch.cat([abar[:1], abar[1:] / abar[:-1]])
    return 1.0 - alphas


class NoiseSchedule:
    """Cumulative products and per-timestep coefficients of a beta schedule."""

    def __init__(self, betas: torch.Tensor) -> None:
        self.betas = betas.double()
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        self.num_timesteps = len(betas)

    @classmethod
    def build(cls, kind: BetaSchedule | str, steps: int = 1000, beta_start: float = 0.00085,
              beta_end: float = 0.012, zero_terminal_snr: bool = False) -> NoiseSchedule:
        betas = make_betas(BetaSchedule(kind), steps, beta_start, beta_end)
        return cls(rescale_zero_terminal_snr(betas) if zero_terminal_snr else betas)

    @property
    def zero_terminal_snr(self) -> bool:
        return float(self.alphas_cumprod[-1]) == 0.0

    def abar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """alpha-bar at integer timesteps ``t``, shaped to broadcast against ``like``."""
        a = self.alphas_cumprod.to(like.device)[t.long()].to(like.dtype)
        return a.view(-1, *([1] * (like.dim() - 1)))

    @property
    def sigmas(self) -> torch.Tensor:
        """``sqrt((1 - abar) / abar)`` per timestep, increasing.

        At zero terminal SNR the last sigma is infinite; this table continues it geometrically
        from the two before it (one more step of the schedule's own log-sigma slope; ~4500 for
        SD's schedule, where diffusers' Euler uses 4096): the top of the Karras and exponential
        ranges and of the denoiser's timestep lookup. Timestep grids visit t = T at
        ``sigmas.ZERO_SNR_SIGMA`` instead, close enough to infinity for DDIM to match diffusers'
        abar_T = 0 step.
        """
        abar = self.alphas_cumprod
        sigmas = ((1 - abar) / abar).sqrt()
        if self.zero_terminal_snr:
            sigmas[-1] = sigmas[-2] ** 2 / sigmas[-3]
        return sigmas

    def add_noise(self, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.abar(t, z0)
        return a.sqrt() * z0 + (1 - a).sqrt() * noise

    def min_snr_weight(self, t: torch.Tensor, prediction: Prediction, gamma: float) -> torch.Tensor:
        """Per-sample loss weights of Min-SNR-gamma (Hang et al. 2023, eq. 9), shape (B,).

        With SNR(t) = abar / (1 - abar), the weight that turns the ``prediction`` loss into
        min(SNR, gamma) times the x0 loss: min(SNR, gamma) / SNR for eps (1 wherever SNR <= gamma,
        and 1 in the limit SNR -> 0), min(SNR, gamma) / (SNR + 1) for v. It stops the many
        low-noise steps, whose targets are easy, from dominating the gradient."""
        abar = self.alphas_cumprod.to(t.device)[t.long()].double()
        snr = abar / (1 - abar).clamp_min(1e-20)
        clipped = snr.clamp(max=gamma)
        if Prediction(prediction) is Prediction.EPS:
            weight = torch.where(snr > 0, clipped / snr.clamp_min(1e-20), torch.ones_like(snr))
        else:
            weight = clipped / (snr + 1)
        return weight.float()

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
