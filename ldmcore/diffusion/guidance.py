"""Classifier-free guidance (Ho & Salimans 2022), global or per plugin, in one batched forward.

Every form of guidance here is a weighted sum of denoiser outputs under different
conditionings ("branches"), ``D = sum_j w_j D(x, sigma, c_j)`` with ``sum_j w_j = 1``:

* global CFG at scale s: ``D_u + s (D_c - D_u)``, branches (all conditions, none);
* per-plugin scales (compositional guidance, Liu et al. 2022, "Compositional Visual Generation
  with Composable Diffusion Models", eq. 10): ``D_u + sum_i s_i (D_i - D_u)``, where ``D_i``
  keeps plugin ``i`` and nulls the others. A plugin without a scale of its own takes the
  global one; a plugin at scale 0 drops out of every branch.

All branches run as one network call on a batch ``len(branches)`` times larger. At a fixed
sigma the denoised estimate, eps and v are affine in one another with the same offset for
every branch, so guiding any of them gives the same result.

Two refinements: guidance *rescale* (Lin et al. 2023, sec. 3.4) pulls the per-sample std of
the guided network output back toward that of the unguided one (every scale 1), mixing by
``rescale`` in [0, 1]. By default it is applied where diffusers applies it
(``rescale_noise_cfg`` on ``noise_pred``): to the network's eps or v output
(``RescaleSpace.OUTPUT``). ``RescaleSpace.DENOISED`` applies it to the denoised estimate
instead, the image whose std the paper means to restore; the two differ because the std of
``a x + b D`` is not ``b`` times the std of ``D``. A guidance *interval* (Kynkaanniemi et al.
2024, "Applying Guidance in a Limited Interval Improves Sample and Distribution Quality")
guides only for sigmas inside [lo, hi] and runs the plain conditional model elsewhere.

Unlike diffusers' pipelines, which switch guidance off at a scale <= 1 and return the
conditional output, a scale below 1 here means what the formula says (0: unconditional;
between 0 and 1: interpolation toward it), and scale 1 is the conditional output.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch

from ldmcore.conditioning import Conditioner, Conditioning
from ldmcore.diffusion.denoisers import denoised_from_output, network_output
from ldmcore.diffusion.schedule import Prediction
from ldmcore.errors import ConfigError, nearest

Keep = frozenset  # the plugins a branch keeps conditional (the rest use their null)


class RescaleSpace(str, Enum):
    """What guidance rescale matches the std of."""

    OUTPUT = "output"  # the network's eps or v output, as diffusers' pipelines do
    DENOISED = "denoised"  # the denoised estimate (the image)


@dataclass(frozen=True)
class Guidance:
    """What to guide with: a global scale, optional per-plugin scales, rescale, interval."""

    scale: float = 1.0
    per_plugin: Mapping[str, float] = field(default_factory=dict)
    rescale: float = 0.0
    interval: tuple[float, float] | None = None  # (sigma_lo, sigma_hi)
    rescale_space: RescaleSpace = RescaleSpace.OUTPUT

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "rescale_space", RescaleSpace(self.rescale_space))
        except ValueError:
            raise ConfigError(f"guidance rescale space must be one of "
                              f"{', '.join(r.value for r in RescaleSpace)} (what the rescale "
                              f"matches the std of), got {self.rescale_space!r}.") from None
        if not 0.0 <= self.rescale <= 1.0:
            raise ConfigError(f"guidance rescale must be in [0, 1] (Lin et al.'s phi), got "
                              f"{self.rescale}.")
        if self.interval is not None:
            lo, hi = self.interval
            if not 0.0 <= lo <= hi:
                raise ConfigError(f"guidance interval must be [lo, hi] sigmas with "
                                  f"0 <= lo <= hi, got {list(self.interval)}.")

    def branches(self, plugins: Sequence[str]) -> tuple[list[Keep | None], list[float], list[float]]:
        """(keep sets, weights, unguided weights) over branches; ``None`` keeps every plugin.

        The unguided weights (every scale 1) give the reference estimate guidance rescale
        compares against.
        """
        unknown = [p for p in self.per_plugin if p not in plugins]
        if unknown:
            raise ConfigError(f"guidance.{unknown[0]} names no condition of this model: "
                              f"{nearest(unknown[0], plugins)} This model's conditions: "
                              f"{', '.join(plugins) or 'none (unconditional)'}.")
        if not plugins:
            return [None], [1.0], [1.0]
        if not self.per_plugin:
            if self.scale == 1.0:
                return [None], [1.0], [1.0]
            if self.scale == 0.0 and self.rescale == 0.0:
                return [Keep()], [1.0], [1.0]
            return [None, Keep()], [self.scale, 1.0 - self.scale], [1.0, 0.0]
        scales = {p: float(self.per_plugin.get(p, self.scale)) for p in plugins}
        keeps: list[Keep | None] = []
        weights: list[float] = []
        reference: list[float] = []
        for p, s in scales.items():
            if s != 0.0 or self.rescale > 0.0:
                keeps.append(Keep({p}))
                weights.append(s)
                reference.append(1.0)
        keeps.append(Keep())
        weights.append(1.0 - sum(weights))
        reference.append(1.0 - sum(reference))
        return keeps, weights, reference

    def dropped(self, plugins: list[str]) -> set[str]:
        """The plugins given scale 0 of their own: they drop out of every branch, the plain
        conditional one outside the interval included."""
        return {p for p in plugins if self.per_plugin.get(p) == 0.0}

    def active(self, sigma: torch.Tensor) -> torch.Tensor:
        """Per-sample: is guidance applied at this sigma?"""
        if self.interval is None:
            return torch.ones(sigma.shape, dtype=torch.bool, device=sigma.device)
        lo, hi = self.interval
        return (sigma >= lo) & (sigma <= hi)


def rescale_guided(guided: torch.Tensor, reference: torch.Tensor, phi: float) -> torch.Tensor:
    """Lin et al. 2023, Algorithm 2: scale ``guided`` so its per-sample std matches
    ``reference``'s, then mix with the unscaled one by ``phi``."""
    if phi == 0.0:
        return guided
    dims = tuple(range(1, guided.dim()))
    factor = reference.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True).clamp_min(1e-12)
    return guided * (phi * factor + (1.0 - phi))


class GuidedDenoiser:
    """``model(x, sigma) -> denoised`` with guidance, every branch in one batched call.

    ``denoiser(x, sigma, cond=Conditioning)`` is the conditional denoiser (a
    ``DiscreteDenoiser`` over the UNet); ``branches`` are the conditionings whose weighted sum
    is the guided estimate (``weights``), ``reference`` the weights of the unguided estimate
    (for rescale), ``plain`` the fully conditional branch used outside the guidance interval.
    Rescale in ``RescaleSpace.OUTPUT`` reads the prediction type from the denoiser's
    ``prediction`` (a denoiser without one is taken as eps-predicting: ``(x - D) / sigma``).
    """

    def __init__(self, denoiser: Callable[..., torch.Tensor], branches: list[Conditioning],
                 weights: list[float], reference: list[float], guidance: Guidance,
                 plain: Conditioning) -> None:
        self.denoiser = denoiser
        self.branches = branches
        self.joined = Conditioning.cat(branches) if len(branches) > 1 else branches[0]
        self.weights = weights
        self.reference = reference
        self.guidance = guidance
        self.plain = plain

    def guided(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        k = len(self.branches)
        if k == 1:
            out = self.denoiser(x, sigma, cond=self.joined)
            return out if self.weights[0] == 1.0 else self.weights[0] * out
        outs = self.denoiser(torch.cat([x] * k), torch.cat([sigma] * k), cond=self.joined).chunk(k)
        guided = sum(w * o for w, o in zip(self.weights, outs))
        if self.guidance.rescale > 0.0:
            reference = sum(w * o for w, o in zip(self.reference, outs))
            guided = self.rescaled(x, sigma, guided, reference)
        return guided

    def rescaled(self, x: torch.Tensor, sigma: torch.Tensor, guided: torch.Tensor,
                 reference: torch.Tensor) -> torch.Tensor:
        """The guided estimate with guidance rescale, in the space ``guidance`` names."""
        phi = self.guidance.rescale
        if self.guidance.rescale_space is RescaleSpace.DENOISED:
            return rescale_guided(guided, reference, phi)
        prediction = getattr(self.denoiser, "prediction", Prediction.EPS)
        out = rescale_guided(network_output(prediction, x, sigma, guided),
                             network_output(prediction, x, sigma, reference), phi)
        return denoised_from_output(prediction, x, sigma, out)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **_: Any) -> torch.Tensor:
        if self.guidance.interval is None:  # no interval: no per-step host sync on the mask
            return self.guided(x, sigma)
        active = self.guidance.active(sigma)
        if bool(active.all()):
            return self.guided(x, sigma)
        plain = self.denoiser(x, sigma, cond=self.plain)
        if not bool(active.any()):
            return plain
        mask = active.view(-1, *([1] * (x.dim() - 1)))
        return torch.where(mask, self.guided(x, sigma), plain)


def guide(denoiser: Callable[..., torch.Tensor], conditioner: Conditioner,
          values: dict[str, Any], n: int, guidance: Guidance) -> GuidedDenoiser:
    """``D(x, sigma)`` for ``n`` samples of condition ``values``, guided as ``guidance`` asks:
    each branch (all conditions, one plugin alone, none) is encoded once, here, and every step
    runs them all in one batch through ``denoiser(x, sigma, cond=...)``. Conditions whose encoder
    is not ``guided`` are kept in every branch."""
    unguided = {name for name, enc in conditioner.encoders.items() if not enc.guided}
    scaled = sorted(unguided & set(guidance.per_plugin))
    if scaled:
        raise ConfigError(f"guidance.{scaled[0]}: the {scaled[0]!r} condition is not guided (it is "
                          f"given to every guidance branch, conditions.{scaled[0]}.guided=false), "
                          f"so it has no guidance scale; drop guidance.{scaled[0]} or guide it.")
    plugins = [p for p in conditioner.encoders if p not in unguided]
    keeps, weights, reference = guidance.branches(plugins)
    conds = [conditioner(values, n, keep=None if k is None else set(k) | unguided) for k in keeps]
    if dropped := guidance.dropped(plugins):
        plain = conditioner(values, n, keep=set(conditioner.encoders) - dropped)
    else:
        plain = conds[keeps.index(None)] if None in keeps else conditioner(values, n)
    return GuidedDenoiser(denoiser, conds, weights, reference, guidance, plain)
