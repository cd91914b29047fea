"""Samplers over the discrete schedule: DDPM (ancestral) and DDIM.

Every sampler has one signature::

    sample_NAME(denoise, x, schedule, steps, *, generator=None, callback=None, **knobs) -> x0

where ``denoise(z_t, t) -> (eps, z0)`` is the (guided) network already converted from its
prediction type, ``x`` is the starting noise and ``steps`` the number of network evaluations.
Randomness comes only from ``generator`` (drawn on the CPU), so a seed fixes every pixel.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

import torch

from ldmcore.diffusion.schedule import NoiseSchedule

Denoise = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
Callback = Callable[[int, torch.Tensor], None]


class Spacing(str, Enum):
    LEADING = "leading"  # 0, k, 2k, ... (+ offset): DDIM/SD
    LINSPACE = "linspace"  # evenly from 0 to T-1, ends included
    TRAILING = "trailing"  # counted back from T-1 (Lin et al. 2023)


def make_timesteps(num_train: int, steps: int, spacing: Spacing | str = Spacing.LEADING,
                   offset: int = 0) -> torch.Tensor:
    """Descending integer timesteps to visit, ``steps`` of them."""
    if not 1 <= steps <= num_train:
        raise ValueError(f"steps must be in 1..{num_train}, got {steps}")
    spacing = Spacing(spacing)
    if spacing is Spacing.LEADING:
        ts = torch.arange(steps) * (num_train // steps) + offset
    elif spacing is Spacing.LINSPACE:
        ts = torch.linspace(0, num_train - 1, steps).round()
    else:
        ts = ((num_train - torch.arange(steps) * (num_train / steps)).round() - 1).flip(0)
    return ts.long().clamp(0, num_train - 1).flip(0)


def _noise(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(like.shape, generator=generator, dtype=torch.float32).to(like)


def _abar(schedule: NoiseSchedule, t: int, final: float = 1.0) -> float:
    return final if t < 0 else float(schedule.alphas_cumprod[t])


def sample_ddim(denoise: Denoise, x: torch.Tensor, schedule: NoiseSchedule, steps: int, *,
                eta: float = 0.0, spacing: Spacing | str = Spacing.LEADING, offset: int = 0,
                set_alpha_to_one: bool = True, generator: torch.Generator | None = None,
                callback: Callback | None = None) -> torch.Tensor:
    """DDIM (Song, Meng & Ermon 2021, eq. 12): deterministic at ``eta=0``, DDPM-like at 1.

    ``set_alpha_to_one=False`` ends on alpha-bar of t=0 instead of 1, as CompVis/SD's DDIM and
    diffusers' SD scheduler configs do (needed to sample a converted SD model like the original).
    """
    ts = make_timesteps(schedule.num_timesteps, steps, spacing, offset)
    final = 1.0 if set_alpha_to_one else float(schedule.alphas_cumprod[0])
    for i, t in enumerate(ts.tolist()):
        t_prev = ts[i + 1].item() if i + 1 < len(ts) else -1
        a, a_prev = _abar(schedule, t), _abar(schedule, t_prev, final)
        eps, z0 = denoise(x, torch.full((x.shape[0],), t, device=x.device))
        sigma = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)) ** 0.5
        direction = max(1 - a_prev - sigma ** 2, 0.0) ** 0.5 * eps
        x = a_prev ** 0.5 * z0 + direction
        if sigma > 0:
            x = x + sigma * _noise(x, generator)
        if callback is not None:
            callback(i, x)
    return x


def sample_ddpm(denoise: Denoise, x: torch.Tensor, schedule: NoiseSchedule, steps: int, *,
                spacing: Spacing | str = Spacing.LEADING, offset: int = 0,
                generator: torch.Generator | None = None, callback: Callback | None = None
                ) -> torch.Tensor:
    """Ancestral sampling from the DDPM posterior q(z_s | z_t, z0) (Ho et al. 2020, eq. 6-7),
    over a strided timestep subsequence (each stride is one step of the respaced chain)."""
    ts = make_timesteps(schedule.num_timesteps, steps, spacing, offset)
    for i, t in enumerate(ts.tolist()):
        t_prev = ts[i + 1].item() if i + 1 < len(ts) else -1
        a, a_prev = _abar(schedule, t), _abar(schedule, t_prev)
        beta = 1 - a / a_prev  # beta of the respaced step t_prev -> t
        _, z0 = denoise(x, torch.full((x.shape[0],), t, device=x.device))
        mean = (a_prev ** 0.5 * beta / (1 - a)) * z0 + ((1 - beta) ** 0.5 * (1 - a_prev) / (1 - a)) * x
        var = beta * (1 - a_prev) / (1 - a)
        x = mean + var ** 0.5 * _noise(x, generator) if t_prev >= 0 else mean
        if callback is not None:
            callback(i, x)
    return x


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "ddim": sample_ddim,
    "ddpm": sample_ddpm,
}
