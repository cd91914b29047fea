"""Plugins whose layers act over part of the sampling steps: diffusers' ControlNet
``control_guidance_start`` / ``control_guidance_end``, GLIGEN's scheduled sampling.

A residual output (``Residual.steps``) or the tokens of a plugin with inserted layers
(``Tokens.steps``, gated_attention and decoupled_crossattn) declare a window as fractions of the
sampling run, ``(start, end)``: at step ``i`` of ``N`` the plugin acts when ``start <= i / N`` and
``(i + 1) / N <= end``, the rule of diffusers' ControlNet pipelines (``(0.2, 0.8)`` of 10 steps
acts at steps 2..7; GLIGEN's ``gligen_scheduled_sampling_beta`` is ``(0, beta)``: the first
``int(beta N)`` steps). A denoiser call at noise level ``sigma`` belongs to the step that starts at
the last level at or above it: step ``i`` evaluates at ``sigma_i`` and, for samplers with a
midpoint, between ``sigma_i`` and ``sigma_{i+1}``. Image-to-image counts only the steps it runs,
as diffusers does. Outside its window a plugin's maps or layers are left out of the UNet call
altogether. Training ignores windows (there are no sampling steps).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from ldmcore.conditioning import Conditioning
from ldmcore.conditioning.residual import Residuals
from ldmcore.nn.inserted_layers import EVERY_STEP, InsertedLayers, StepWindow


def acts_at(window: StepWindow, step: int, steps: int) -> bool:
    """Does a plugin with ``window`` act at ``step`` (0-based) of ``steps``?"""
    start, end = window
    return not (step / steps < start or (step + 1) / steps > end)


def _windowed(cond: Conditioning) -> bool:
    res = [] if cond.residuals is None else cond.residuals.parts.values()
    ins = [] if cond.inserted is None else (*cond.inserted.gated, *cond.inserted.decoupled)
    return any(p.steps != EVERY_STEP for p in (*res, *ins))


class StepWindows:
    """``denoiser(x, sigma, cond=...)`` that, at each step of a sampling run over the noise
    ``levels``, leaves out the plugins whose window excludes that step."""

    def __init__(self, denoiser: Callable[..., torch.Tensor], levels: torch.Tensor) -> None:
        self.denoiser = denoiser
        self.starts = [float(s) for s in levels[:-1]]  # the level each step starts at
        self._at: dict[tuple, Conditioning] = {}

    def __getattr__(self, name: str) -> Any:  # the wrapped denoiser's prediction, schedule, ...
        return getattr(self.__dict__["denoiser"], name)

    def step(self, sigma: torch.Tensor) -> int:
        """The step a call at ``sigma`` belongs to (every row of a sampling batch is at one level)."""
        s = float(sigma.flatten()[0]) * (1 - 1e-6)
        return max(0, sum(1 for start in self.starts if start >= s) - 1)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, *, cond: Conditioning) -> torch.Tensor:
        if not _windowed(cond):
            return self.denoiser(x, sigma, cond=cond)
        return self.denoiser(x, sigma, cond=self.at_step(cond, self.step(sigma)))

    def at_step(self, cond: Conditioning, step: int) -> Conditioning:
        """``cond`` with only the plugins that act at ``step`` (made once per set that acts)."""
        def on(window: StepWindow) -> bool:
            return acts_at(window, step, len(self.starts))

        res = {} if cond.residuals is None else {n: p for n, p in cond.residuals.parts.items() if on(p.steps)}
        ins = cond.inserted or InsertedLayers()
        gated = tuple(g for g in ins.gated if on(g.steps))
        decoupled = tuple(d for d in ins.decoupled if on(d.steps))
        key = (id(cond), tuple(res), tuple(map(id, gated)), tuple(map(id, decoupled)))
        if key not in self._at:
            self._at[key] = replace(
                cond, residuals=Residuals(res, cond.residuals.taps) if res else None,
                inserted=InsertedLayers(gated, decoupled) if gated or decoupled else None)
        return self._at[key]
