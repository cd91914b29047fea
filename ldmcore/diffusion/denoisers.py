"""Adapters from a network over the discrete DDPM schedule to the sampler contract.

Samplers speak k-diffusion's contract (Karras et al. 2022, "Elucidating the Design Space of
Diffusion-Based Generative Models", sec. 2 and table 1): a *denoiser*
``denoised = model(x, sigma, **extra)`` that returns its estimate of the clean sample for
``x = z_0 + sigma * eps``. A latent diffusion UNet instead sees the variance-preserving point
``z_t = x / sqrt(1 + sigma^2)`` and the integer timestep ``t`` with that noise level, and
predicts eps or v (Salimans & Ho 2022). ``DiscreteDenoiser`` is that translation, like
k-diffusion's ``external.py`` wrappers: samplers never learn about prediction types.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ldmcore.diffusion.schedule import NoiseSchedule, Prediction

Network = Callable[..., torch.Tensor]  # network(z_t, t, **extra) -> eps or v


def network_output(prediction: Prediction | str, x: torch.Tensor, sigma: torch.Tensor,
                   denoised: torch.Tensor) -> torch.Tensor:
    """What the network output (eps or v) is for the denoised estimate ``denoised`` of ``x`` at
    ``sigma`` (per sample): ``eps = (x - D) / sigma``, ``v = (c_in^2 x - D) / (sigma c_in)``.
    Both are affine in ``D`` with coefficients fixed by ``x`` and ``sigma``."""
    s = sigma.to(torch.float64).view(-1, *([1] * (x.dim() - 1)))
    if Prediction(prediction) is Prediction.EPS:
        return ((x - denoised) / s).to(x.dtype)
    c_in = (1 + s ** 2).rsqrt()
    return ((c_in ** 2 * x - denoised) / (s * c_in)).to(x.dtype)


def denoised_from_output(prediction: Prediction | str, x: torch.Tensor, sigma: torch.Tensor,
                         output: torch.Tensor) -> torch.Tensor:
    """The denoised estimate of ``x`` at ``sigma`` for network output ``output`` (eps or v):
    the inverse of ``network_output``."""
    s = sigma.to(torch.float64).view(-1, *([1] * (x.dim() - 1)))
    if Prediction(prediction) is Prediction.EPS:
        return (x - s * output).to(x.dtype)
    c_in = (1 + s ** 2).rsqrt()
    return (c_in ** 2 * x - s * c_in * output).to(x.dtype)


class DiscreteDenoiser:
    """``denoised = D(x, sigma, **extra)`` for a network trained on a discrete schedule.

    With ``c_in = 1 / sqrt(1 + sigma^2)`` (so ``c_in x = z_t``):
    eps-prediction gives ``D = x - sigma * eps``; v-prediction gives
    ``D = c_in^2 x - sigma c_in v`` (from ``z_0 = sqrt(abar) z_t - sqrt(1 - abar) v``).
    Sigmas between the schedule's entries map to fractional timesteps by interpolating
    ``log sigma`` (the timestep embedding accepts them); sigmas from the schedule's own table
    map back to their integer timestep exactly.
    """

    def __init__(self, network: Network, schedule: NoiseSchedule,
                 prediction: Prediction | str = Prediction.EPS) -> None:
        self.network = network
        self.schedule = schedule
        self.prediction = Prediction(prediction)
        self.log_sigmas = schedule.sigmas.log()  # float64, increasing in t

    @property
    def sigma_min(self) -> float:
        return float(self.log_sigmas[0].exp())

    @property
    def sigma_max(self) -> float:
        return float(self.log_sigmas[-1].exp())

    def _table(self, device: torch.device) -> torch.Tensor:
        """``log_sigmas`` on ``device``, copied once: the lookup then runs where sigma lives,
        with no device-to-host copy (a host sync on CUDA) per sampler step."""
        if self.log_sigmas.device != device:
            self.log_sigmas = self.log_sigmas.to(device)
        return self.log_sigmas

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Fractional timesteps (float64) whose schedule sigma is ``sigma``, clamped to the table."""
        table = self._table(sigma.device)
        log_sigma = sigma.detach().double().log().clamp(table[0], table[-1])
        high = torch.searchsorted(table, log_sigma).clamp(1, len(table) - 1)
        low = high - 1
        w = (log_sigma - table[low]) / (table[high] - table[low])
        t = low.double() + w.clamp(0, 1)
        # float32 sigmas of table entries land within ~1e-5 of their integer timestep
        nearest = t.round()
        return torch.where((t - nearest).abs() < 1e-4, nearest, t)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Inverse of ``sigma_to_t`` (log-linear between integer timesteps)."""
        table = self._table(t.device)
        t = t.double().clamp(0, len(table) - 1)
        low = t.floor().long().clamp(max=len(table) - 2)
        w = t - low
        return ((1 - w) * table[low] + w * table[low + 1]).exp()

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
        c_in = (1 + sigma.to(torch.float64).view(-1, *([1] * (x.dim() - 1))) ** 2).rsqrt()
        out = self.network((x * c_in).to(x.dtype), self.sigma_to_t(sigma), **extra).to(x.dtype)
        return denoised_from_output(self.prediction, x, sigma, out)

    @staticmethod
    def initial_noise_scale(sigma: float) -> float:
        """Multiply unit noise by this to start at ``sigma``: the VP marginal at large t is
        ``z_t ~ N(0, 1)``, i.e. ``x = sqrt(1 + sigma^2) z_t`` (diffusers' ``init_noise_sigma``)."""
        return (1.0 + float(sigma) ** 2) ** 0.5
