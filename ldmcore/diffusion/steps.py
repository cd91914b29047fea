"""The algebra every sampler shares: its noise draws (independent, or Brownian in sigma), its
grid check, one network call, the callback, the Euler step of the probability-flow ODE, the
ancestral split of a step and the ancestral loop, and the declaration of knob ranges.

Samplers of ``samplers.py``, ``singlestep.py`` and ``multistep.py`` import these, so that a
rule (how noise is drawn from the generator, what a valid grid is) is written once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

Model = Callable[..., torch.Tensor]
Callback = Callable[[dict[str, Any]], None]


def draw_noise(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Unit normals shaped like ``like``, drawn on the CPU in float32 (the same numbers on any
    device and dtype for a seed), then moved."""
    return torch.randn(like.shape, generator=generator, dtype=torch.float32).to(like)


def levels_of(sigmas: torch.Tensor | Sequence[float]) -> list[float]:
    """Sigmas as Python floats (float64 step coefficients, whatever the dtype of ``x``), a
    repeated level dropped: a step from a level to itself moves nothing (diffusers' DDIM takes
    it as an identity step), and the multistep solvers divide by the step length. A single
    level is no step at all: the sampler returns ``x``."""
    values = sigmas.tolist() if isinstance(sigmas, torch.Tensor) else [float(s) for s in sigmas]
    if not values or any(a < b for a, b in zip(values, values[1:])) or values[-1] < 0:
        raise ValueError(f"sigmas must descend to a non-negative end, got {values}")
    return [v for i, v in enumerate(values) if i == 0 or v != values[i - 1]]


def denoise(model: Model, x: torch.Tensor, sigma: float, extra_args: dict | None) -> torch.Tensor:
    return model(x, x.new_full((x.shape[0],), sigma), **(extra_args or {}))


def report(callback: Callback | None, i: int, x: torch.Tensor, sigma: float,
            denoised: torch.Tensor, sigma_hat: float | None = None) -> None:
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma,
                  "sigma_hat": sigma if sigma_hat is None else sigma_hat, "denoised": denoised})


class BrownianNoise:
    """Noise for the interval from ``sigma`` to ``sigma_next`` (k-diffusion's
    ``noise_sampler(sigma, sigma_next)``), unit normals from ``generator``, with the
    correlations of Brownian motion in sigma (what k-diffusion's Brownian tree gives):
    intervals that do not overlap get fresh draws, and an interval that starts where the last one
    started and reaches further (DPM++ SDE's [sigma, sigma_mid], then [sigma, sigma_next])
    shares its increment, correlation ``sqrt((sigma - sigma_mid) / (sigma - sigma_next))``."""

    def __init__(self, like: torch.Tensor, generator: torch.Generator | None) -> None:
        self.like = like
        self.generator = generator
        self.last: tuple[float, float, torch.Tensor] | None = None

    def __call__(self, sigma: float | torch.Tensor, sigma_next: float | torch.Tensor) -> torch.Tensor:
        start, end = float(sigma), float(sigma_next)
        noise = draw_noise(self.like, self.generator)
        if self.last is not None and self.last[0] == start and end < self.last[1]:
            shared = (start - self.last[1]) / (start - end)
            noise = math.sqrt(shared) * self.last[2] + math.sqrt(1 - shared) * noise
        self.last = (start, end, noise)
        return noise


def ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """Split a step to ``sigma_next`` into a deterministic part to ``sigma_down`` and fresh noise
    ``sigma_up`` with ``sigma_down^2 + sigma_up^2 = sigma_next^2``.

    ``sigma_up = eta * sigma_next * sqrt(1 - sigma_next^2 / sigma^2)`` is, at ``eta = 1``, the
    standard deviation of the DDPM posterior q(x_next | x, x_0) (Ho et al. 2020, eq. 7) and, for
    any ``eta``, DDIM's sigma_t (Song et al. 2021, eq. 16) in the sigma view.
    """
    if eta == 0 or sigma_next == 0:
        return sigma_next, 0.0
    up = min(sigma_next, eta * sigma_next * math.sqrt(max(1.0 - sigma_next ** 2 / sigma ** 2, 0.0)))
    return math.sqrt(sigma_next ** 2 - up ** 2), up


def toward(x: torch.Tensor, denoised: torch.Tensor, sigma: float, sigma_to: float) -> torch.Tensor:
    """One Euler step of the probability-flow ODE ``dx/dsigma = (x - D) / sigma`` to ``sigma_to``;
    in this form (``D + (sigma_to/sigma)(x - D)``) it is exact at ``sigma_to = 0``."""
    return denoised + (sigma_to / sigma) * (x - denoised)


def euler_step(model: Model, x: torch.Tensor, denoised: torch.Tensor, sigma: float,
               sigma_to: float, extra_args: dict | None) -> torch.Tensor:
    """The Euler step of ``toward`` in the signature ``ancestral_loop`` takes."""
    return toward(x, denoised, sigma, sigma_to)


def ancestral_loop(step: Callable[..., torch.Tensor], model: Model, x: torch.Tensor,
                   sigmas: torch.Tensor, extra_args: dict | None, callback: Callback | None,
                   generator: torch.Generator | None, eta: float, s_noise: float) -> torch.Tensor:
    """Ancestral sampling with any deterministic step: ``step(model, x, denoised, sigma,
    sigma_down, extra_args)`` down to ``sigma_down``, then fresh noise ``s_noise * sigma_up``
    (``ancestral_step``); where ``sigma_down`` is 0 (the last step) an Euler step, which
    returns the estimate. At ``eta = 0`` it is the deterministic sampler ``step`` makes."""
    levels = levels_of(sigmas)
    for i, (s, s_next) in enumerate(zip(levels, levels[1:])):
        denoised = denoise(model, x, s, extra_args)
        down, up = ancestral_step(s, s_next, eta)
        if down == 0:
            x = toward(x, denoised, s, 0.0)
        else:
            x = step(model, x, denoised, s, down, extra_args)
        if up > 0:
            x = x + (s_noise * up) * draw_noise(x, generator)
        report(callback, i, x, s, denoised)
    return x


def knob_bounds(**bounds: tuple[float | None, float | None]) -> Callable[[Model], Model]:
    """Declare a sampler's own ranges for its knobs (``(lo, hi)``, inclusive, ``None`` open),
    read by ``SamplerSpec.check_knobs`` before the shared ``KNOB_BOUNDS``: e.g. ``order`` means
    1..3 for DEIS and 1..4+ for LMS."""

    def mark(fn: Model) -> Model:
        fn.knob_bounds = dict(bounds)  # type: ignore[attr-defined]
        return fn

    return mark
