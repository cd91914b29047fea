"""Residual plugins that act over part of the sampling steps (diffusers' ``control_guidance_start``
/ ``control_guidance_end``).

A ``Residual`` declares its window as fractions of the sampling run, ``steps=(start, end)``: at
step ``i`` of ``N`` its maps are added when ``start <= i / N`` and ``(i + 1) / N <= end``, the
rule of diffusers' ControlNet pipelines (so ``(0.2, 0.8)`` of 10 steps acts at steps 2..7). A
denoiser call at noise level ``sigma`` belongs to the step that starts at the last level at or
above it: step ``i`` evaluates at ``sigma_i`` and, for samplers with a midpoint, between
``sigma_i`` and ``sigma_{i+1}``. Image-to-image counts only the steps it runs, as diffusers does.
Outside its window a plugin's maps are left out of the UNet call altogether: the backbone alone,
as its null. Training ignores windows (there are no sampling steps).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from ldmcore.conditioning import Conditioning
from ldmcore.conditioning.residual import EVERY_STEP, Residuals, StepWindow


def acts_at(window: StepWindow, step: int, steps: int) -> bool:
    """Does a plugin with ``window`` act at ``step`` (0-based) of ``steps``?"""
    start, end = window
    return not (step / steps < start or (step + 1) / steps > end)


class StepWindows:
    """``denoiser(x, sigma, cond=...)`` that, at each step of a sampling run over the noise
    ``levels``, leaves out the residual plugins whose window excludes that step."""

    def __init__(self, denoiser: Callable[..., torch.Tensor], levels: torch.Tensor) -> None:
        self.denoiser = denoiser
        self.starts = [float(s) for s in levels[:-1]]  # the level each step starts at
        self._without: dict[tuple[int, frozenset[str]], Conditioning] = {}

    def __getattr__(self, name: str) -> Any:  # the wrapped denoiser's prediction, schedule, ...
        return getattr(self.__dict__["denoiser"], name)

    def step(self, sigma: torch.Tensor) -> int:
        """The step a call at ``sigma`` belongs to (every row of a sampling batch is at one level)."""
        s = float(sigma.flatten()[0]) * (1 - 1e-6)
        return max(0, sum(1 for start in self.starts if start >= s) - 1)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, *, cond: Conditioning) -> torch.Tensor:
        parts = {} if cond.residuals is None else cond.residuals.parts
        windows = {name: p.steps for name, p in parts.items() if p.steps != EVERY_STEP}
        if not windows:
            return self.denoiser(x, sigma, cond=cond)
        i = self.step(sigma)
        off = frozenset(n for n, w in windows.items() if not acts_at(w, i, len(self.starts)))
        return self.denoiser(x, sigma, cond=self.without(cond, off) if off else cond)

    def without(self, cond: Conditioning, off: frozenset[str]) -> Conditioning:
        """``cond`` without the residual plugins ``off`` (made once per conditioning and set)."""
        key = (id(cond), off)
        if key not in self._without:
            res = cond.residuals
            kept = {n: p for n, p in res.parts.items() if n not in off}
            self._without[key] = replace(cond, residuals=Residuals(kept, res.taps) if kept else None)
        return self._without[key]

