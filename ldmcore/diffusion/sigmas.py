"""Noise levels to visit: the schedule's own timesteps, Karras et al.'s rho schedule, or
log-uniform ("exponential") levels.

Every sampler walks a descending tensor of sigmas that ends in 0 (the clean sample). In the
sigma view (Karras et al. 2022, k-diffusion), a point of the discrete DDPM chain is
``x = z_t / sqrt(abar_t) = z_0 + sigma_t eps``, so any sigma between the schedule's smallest and
largest can be visited; a network trained on integer timesteps sees the fractional timestep
whose sigma it is (``DiscreteDenoiser.sigma_to_t``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch

from ldmcore.diffusion.schedule import NoiseSchedule


class Spacing(str, Enum):
    LEADING = "leading"  # 0, k, 2k, ... (+ offset): DDIM/SD
    LINSPACE = "linspace"  # evenly from 0 to T-1, ends included
    TRAILING = "trailing"  # counted back from T-1 (Lin et al. 2023)


class SigmaKind(str, Enum):
    DISCRETE = "discrete"  # the training schedule's own sigmas at ``spacing`` timesteps
    KARRAS = "karras"  # Karras et al. 2022, eq. 5: evenly spaced in sigma^(1/rho)
    EXPONENTIAL = "exponential"  # evenly spaced in log sigma


def make_timesteps(num_train: int, steps: int, spacing: Spacing | str = Spacing.LEADING,
                   offset: int = 0) -> torch.Tensor:
    """Descending integer timesteps to visit, ``steps`` of them."""
    if not 1 <= steps <= num_train:
        raise ValueError(f"steps must be in 1..{num_train}, got {steps}")
    spacing = Spacing(spacing)
    if spacing is Spacing.LEADING:
        ts = torch.arange(steps) * (num_train // steps) + offset
    elif spacing is Spacing.LINSPACE:
        # i * (T - 1) / (steps - 1) in float64, as diffusers' numpy computes it: the midpoint
        # 499.5 (27 steps) then lands a hair below, as there, and rounds to 499
        ts = torch.arange(steps, dtype=torch.float64) * ((num_train - 1) / max(steps - 1, 1))
        ts[-1] = num_train - 1 if steps > 1 else 0
        ts = ts.round()
    else:
        # T + i * delta with delta = (T - T/steps) - T, float64: numpy's arange, as diffusers
        # counts back, so that ties such as 937.5 round the same way
        delta = (num_train - num_train / steps) - num_train
        ts = ((num_train + torch.arange(steps, dtype=torch.float64) * delta).round() - 1).flip(0)
    return ts.long().clamp(0, num_train - 1).flip(0)


def _append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def distinct_levels(sigmas: torch.Tensor) -> torch.Tensor:
    """``sigmas`` without repeats of the level before: a step from a level to itself moves
    nothing (diffusers' DDIM takes it as an identity step), and samplers need strict descent.

    Timestep grids repeat a level in two places: a grid that already ends at t = 0 followed by
    the final level sigma(t=0) (``set_alpha_to_one=False``), and leading timesteps whose offset
    pushes the top one past T - 1, clamped back onto the one below it.
    """
    keep = torch.ones(len(sigmas), dtype=torch.bool)
    keep[1:] = sigmas[1:] != sigmas[:-1]
    return sigmas[keep]


# The level a timestep grid visits at t = T of a zero-terminal-SNR schedule, where abar_T = 0
# and sigma_T is infinite. A step from it to sigma' differs from the step from infinity (what
# diffusers' DDIM takes with abar_T = 0) by O(sigma' / ZERO_SNR_SIGMA), ~1e-9 relative for SD's
# levels: below float32 round-off. x = z sqrt(1 + sigma^2) then stays far inside float32's range.
ZERO_SNR_SIGMA = 1e10


def discrete_sigmas(schedule: NoiseSchedule, steps: int, spacing: Spacing | str = Spacing.LEADING,
                    offset: int = 0) -> torch.Tensor:
    """The schedule's sigmas at the DDIM/DDPM timesteps, then 0: the grid DDIM and DDPM walk
    (a timestep that repeats after clamping is visited once; t = T of a zero-terminal-SNR
    schedule is ``ZERO_SNR_SIGMA``, which the denoiser maps back to t = T)."""
    ts = make_timesteps(schedule.num_timesteps, steps, spacing, offset)
    levels = schedule.sigmas[ts]
    if schedule.zero_terminal_snr:
        levels[ts == schedule.num_timesteps - 1] = ZERO_SNR_SIGMA
    return distinct_levels(_append_zero(levels))


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022, eq. 5: ``(smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho``.

    ``rho = 7`` concentrates steps at low noise, where the ODE curves most; ``rho = 1`` is
    uniform in sigma; ``rho -> inf`` tends to log-uniform.
    """
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((hi + ramp * (lo - hi)) ** rho)


def exponential_sigmas(steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Evenly spaced in log sigma (constant DPM-Solver step ``h``), then 0."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    lo, hi = torch.tensor(sigma_min, dtype=torch.float64).log(), torch.tensor(sigma_max, dtype=torch.float64).log()
    return _append_zero((hi + ramp * (lo - hi)).exp())


@dataclass(frozen=True)
class SigmaPlan:
    """How to choose the noise levels for ``steps`` sampler steps on a given schedule."""

    kind: SigmaKind = SigmaKind.DISCRETE
    spacing: Spacing = Spacing.LEADING  # discrete only
    offset: int = 0  # discrete + leading only (SD uses 1)
    rho: float = 7.0  # karras only
    sigma_min: float | None = None  # karras/exponential; None = the schedule's smallest
    sigma_max: float | None = None  # karras/exponential; None = the schedule's largest
    # discrete only: False ends on sigma(t=0) instead of 0 (alpha-bar of t=0, not 1), as
    # CompVis/SD's DDIM and diffusers' SD scheduler configs do
    set_alpha_to_one: bool = True

    def sigmas(self, schedule: NoiseSchedule, steps: int) -> torch.Tensor:
        """Strictly descending float64 sigmas, ``steps + 1`` of them, the last 0 (or sigma(t=0)).

        Discrete grids have fewer where a level would repeat (``distinct_levels``): linspace
        or leading-offset-0 timesteps end at t = 0 already, so with ``set_alpha_to_one=False``
        the final level sigma(t=0) is that last timestep's own, and its step is dropped.
        """
        kind = SigmaKind(self.kind)
        if kind is SigmaKind.DISCRETE:
            levels = discrete_sigmas(schedule, steps, self.spacing, self.offset)
            if not self.set_alpha_to_one:
                levels[-1] = schedule.sigmas[0]
            return distinct_levels(levels)
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        table = schedule.sigmas
        lo = float(table[0]) if self.sigma_min is None else self.sigma_min
        hi = float(table[-1]) if self.sigma_max is None else self.sigma_max
        if kind is SigmaKind.KARRAS:
            return karras_sigmas(steps, lo, hi, self.rho)
        return exponential_sigmas(steps, lo, hi)
