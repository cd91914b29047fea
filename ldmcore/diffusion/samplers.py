"""Samplers in k-diffusion's contract: free functions over a denoiser in sigma space.

Every sampler has one signature::

    sample_NAME(model, x, sigmas, *, extra_args=None, callback=None, generator=None, **knobs) -> x0

``model(x, sigma, **extra_args)`` returns the denoised estimate of ``x = z_0 + sigma * eps``
(``DiscreteDenoiser`` adapts an eps- or v-prediction network to it), ``x`` is the starting
point already at noise level ``sigmas[0]``, and ``sigmas`` descends to 0. ``callback`` receives
k-diffusion's dict ``{x, i, sigma, sigma_hat, denoised}`` after each step. Randomness comes only
from ``generator`` (noise drawn on the CPU in float32, then moved), so a seed fixes every pixel,
for the stochastic samplers too.

Notation: ``h = log(sigma / sigma_next)`` is the step in half-log-SNR ``lambda = -log sigma``
(Lu et al.'s DPM-Solver variable for the VE view). The last step to sigma = 0 returns the
denoised estimate (the ODE's solution there is the data point itself), except in the linear
multistep methods, which integrate that interval with their polynomial as k-diffusion and
diffusers do. A grid that repeats a level steps over it (``steps.levels_of``).

This module holds the first-order samplers and the DPM-Solver++ multistep family;
``singlestep.py`` the two-evaluation samplers (DPM2, DPM++ 2S, DPM++ SDE), ``multistep.py`` the
polynomial multistep ones (LMS, DEIS, UniPC), ``steps.py`` the algebra they share. Samplers
register through the ``register_samplers`` hook (this module implements it for the built-ins,
exactly as a third-party package would); ``SamplerSpec`` records how many network evaluations
a step costs and validates knobs against the function's own keyword defaults and ranges.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ldmcore.diffusion.steps import (BrownianNoise, Callback, Model, ancestral_loop, denoise,
                                     draw_noise, euler_step, levels_of, report, toward)
from ldmcore.diffusion.steps import ancestral_step  # noqa: F401 (re-exported for samplers' authors)
from ldmcore.diffusion.multistep import sample_deis, sample_lms, sample_unipc
from ldmcore.diffusion.singlestep import (sample_dpm_2, sample_dpm_2_ancestral,
                                          sample_dpmpp_2s_ancestral, sample_dpmpp_sde)
from ldmcore.errors import ConfigError, nearest
from ldmcore.hookspecs import hookimpl


# ------------------------------------------------------------------------------------------
# first order
# ------------------------------------------------------------------------------------------


def sample_euler(model: Model, x: torch.Tensor, sigmas: torch.Tensor, *,
                 extra_args: dict | None = None, callback: Callback | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Euler's method on the probability-flow ODE (Karras et al. 2022, Algorithm 2 without
    churn). First order: the output's error shrinks like 1/steps."""
    levels = levels_of(sigmas)
    for i, (s, s_next) in enumerate(zip(levels, levels[1:])):
        denoised = denoise(model, x, s, extra_args)
        x = toward(x, denoised, s, s_next)
        report(callback, i, x, s, denoised)
    return x


def sample_euler_ancestral(model: Model, x: torch.Tensor, sigmas: torch.Tensor, *,
                           extra_args: dict | None = None, callback: Callback | None = None,
                           generator: torch.Generator | None = None, eta: float = 1.0,
                           s_noise: float = 1.0) -> torch.Tensor:
    """Ancestral Euler (k-diffusion's ``sample_euler_ancestral``; Song et al. 2021's reverse SDE
    discretised as in Karras et al. 2022, sec. 4): an Euler step down to ``sigma_down``, then
    fresh noise ``sigma_up`` (``ancestral_step``). ``eta = 0`` is ``sample_euler``."""
    return ancestral_loop(euler_step, model, x, sigmas, extra_args, callback, generator, eta,
                          s_noise)


def sample_ddim(model: Model, x: torch.Tensor, sigmas: torch.Tensor, *,
                extra_args: dict | None = None, callback: Callback | None = None,
                generator: torch.Generator | None = None, eta: float = 0.0) -> torch.Tensor:
    """DDIM (Song, Meng & Ermon 2021, eq. 12): deterministic at ``eta = 0``, DDPM at 1.

    Divided by ``sqrt(abar_prev)``, eq. 12 reads ``x' = x0 + sqrt(s'^2 - s_up^2) eps + s_up n``
    with ``s_up`` DDIM's sigma_t over ``sqrt(abar_prev)``: at ``eta = 0`` this is exactly an
    Euler step of the probability-flow ODE (Karras et al. 2022, sec. 3), in general an
    ancestral step. Run on ``SigmaKind.DISCRETE`` sigmas it visits the paper's timesteps.
    """
    return ancestral_loop(euler_step, model, x, sigmas, extra_args, callback, generator, eta, 1.0)


def sample_ddpm(model: Model, x: torch.Tensor, sigmas: torch.Tensor, *,
                extra_args: dict | None = None, callback: Callback | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Ancestral sampling from the DDPM posterior q(x_next | x, x0) (Ho et al. 2020, eq. 6-7),
    one respaced step per interval. In the sigma view the forward chain adds independent noise
    of variance ``s^2 - s'^2``, so the posterior is ``N(x0 + (s'/s)^2 (x - x0),
    s'^2 (s^2 - s'^2) / s^2)``, with ``x0`` the network's estimate."""
    levels = levels_of(sigmas)
    for i, (s, s_next) in enumerate(zip(levels, levels[1:])):
        denoised = denoise(model, x, s, extra_args)
        ratio = (s_next / s) ** 2
        x = denoised + ratio * (x - denoised)
        if s_next > 0:
            x = x + math.sqrt(s_next ** 2 * (1 - ratio)) * draw_noise(x, generator)
        report(callback, i, x, s, denoised)
    return x


def sample_lcm(model: Model, x: torch.Tensor, sigmas: torch.Tensor, *,
               extra_args: dict | None = None, callback: Callback | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Multistep consistency sampling (Song et al. 2023, "Consistency Models", Algorithm 1;
    Luo et al. 2023's LCM; diffusers' ``LCMScheduler``): jump to the network's estimate of the
    clean sample, then noise it afresh to the next level, ``x' = D + sigma' n``. For
    consistency-distilled networks, whose single estimate is already a sample; for others it
    is ancestral sampling with ``sigma_down = 0``. (diffusers' LCM boundary condition, ``c_skip``
    = 0.25 / ((10 t)^2 + 0.25), is below 4e-8 for t >= 259, its coarsest grids' last timestep.)"""
    levels = levels_of(sigmas)
    for i, (s, s_next) in enumerate(zip(levels, levels[1:])):
        denoised = denoise(model, x, s, extra_args)
        x = denoised
        if s_next > 0:
            x = x + s_next * draw_noise(x, generator)
        report(callback, i, x, s, denoised)
    return x


# ------------------------------------------------------------------------------------------
# second and third order
# ------------------------------------------------------------------------------------------


def sample_heun(model: Model, x: torch.Tensor, sigmas: torch.Tensor, *,
                extra_args: dict | None = None, callback: Callback | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Heun's method (Karras et al. 2022, Algorithm 1 without churn): an Euler predictor, then
    the trapezoidal corrector with the slope at the predicted point. Second order; two network
    evaluations per step, one for the last step to sigma = 0 (where Euler is exact)."""
    levels = levels_of(sigmas)
    for i, (s, s_next) in enumerate(zip(levels, levels[1:])):
        denoised = denoise(model, x, s, extra_args)
        slope = (x - denoised) / s
        predicted = x + (s_next - s) * slope
        if s_next == 0:
            x = predicted
        else:
            slope_next = (predicted - denoise(model, predicted, s_next, extra_args)) / s_next
            x = x + (s_next - s) * 0.5 * (slope + slope_next)
        report(callback, i, x, s, denoised)
    return x


def sample_dpmpp_2m(model: Model, x: torch.Tensor, sigmas: torch.Tensor, *,
                    extra_args: dict | None = None, callback: Callback | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2): the exponential
    integrator of the data-prediction ODE, ``x' = (s'/s) x + (1 - e^-h) D``, with ``D``
    extrapolated linearly in lambda from the last two estimates,
    ``D = (1 + 1/(2r)) D_i - 1/(2r) D_{i-1}``, ``r = h_prev / h``. Second order, one evaluation
    per step; the first step (no history) is DDIM."""
    levels = levels_of(sigmas)
    previous: torch.Tensor | None = None
    h_prev = 0.0
    for i, (s, s_next) in enumerate(zip(levels, levels[1:])):
        denoised = denoise(model, x, s, extra_args)
        if s_next == 0:
            x = denoised
        else:
            h = math.log(s / s_next)
            target = denoised
            if previous is not None:
                r = h_prev / h
                target = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * previous
            x = (s_next / s) * x + (-math.expm1(-h)) * target
            h_prev = h
        previous = denoised
        report(callback, i, x, s, denoised)
    return x


def sample_dpmpp_2m_sde(model: Model, x: torch.Tensor, sigmas: torch.Tensor, *,
                        extra_args: dict | None = None, callback: Callback | None = None,
                        generator: torch.Generator | None = None, eta: float = 1.0,
                        s_noise: float = 1.0) -> torch.Tensor:
    """DPM-Solver++(2M) SDE: Lu et al. 2022's multistep data-prediction solver applied to the
    reverse SDE (the SDE variant its first author added to k-diffusion and diffusers as
    ``sde-dpmsolver++``; midpoint form). The linear part decays at
    rate ``(1 + eta)`` in lambda, ``x' = (s'/s) e^(-eta h) x + (1 - e^(-(1+eta)h)) D
    + (1 - e^(-(1+eta)h)) (D_i - D_{i-1}) / (2r) + s' sqrt(1 - e^(-2 eta h)) s_noise n``.
    ``eta = 0`` is exactly ``sample_dpmpp_2m``; ``eta = 1`` samples the reverse SDE. Independent
    Gaussian increments per step (k-diffusion uses a Brownian tree; in distribution the same)."""
    levels = levels_of(sigmas)
    previous: torch.Tensor | None = None
    h_prev = 0.0
    for i, (s, s_next) in enumerate(zip(levels, levels[1:])):
        denoised = denoise(model, x, s, extra_args)
        if s_next == 0:
            x = denoised
        else:
            h = math.log(s / s_next)
            decay = -math.expm1(-(1 + eta) * h)  # 1 - e^(-(1+eta) h)
            x = (s_next / s) * math.exp(-eta * h) * x + decay * denoised
            if previous is not None:
                x = x + (decay / (2 * (h_prev / h))) * (denoised - previous)
            if eta > 0:
                x = x + (s_next * math.sqrt(-math.expm1(-2 * eta * h)) * s_noise) * draw_noise(x, generator)
            h_prev = h
        previous = denoised
        report(callback, i, x, s, denoised)
    return x


def _dpmpp_3m_sde(model: Model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None,
                  callback: Callback | None, generator: torch.Generator | None, eta: float,
                  s_noise: float, curvature_weight: float) -> torch.Tensor:
    """The DPM-Solver++(3M) SDE step shared by both variants; they differ only in the weight
    of the second-difference term, ``- curvature_weight * phi3 * d2``.

    With ``g = (1 + eta) h`` the exponential integrator keeps the linear part exact,
    ``x' = (s'/s) e^(-eta h) x + (1 - e^-g) D``, and adds ``phi2 d1 - w phi3 d2`` with
    ``phi2 = (g - 1 + e^-g) / g``, ``phi3 = phi2 / g - 1/2``, and ``d1 ~ h D'`` (at the current
    point) and ``d2 ~ h^2 D''/2`` from divided differences of the last three estimates on the
    nonuniform lambda grid; then noise ``s' sqrt(1 - e^(-2 eta h)) s_noise``. The first two
    steps use orders 1 and 2.
    """
    levels = levels_of(sigmas)
    history: list[tuple[torch.Tensor, float]] = []  # (denoised, h of the step that followed it)
    for i, (s, s_next) in enumerate(zip(levels, levels[1:])):
        denoised = denoise(model, x, s, extra_args)
        if s_next == 0:
            x = denoised
        else:
            h = math.log(s / s_next)
            g = (1 + eta) * h
            x = (s_next / s) * math.exp(-eta * h) * x + (-math.expm1(-g)) * denoised
            phi2 = (g + math.expm1(-g)) / g
            if len(history) >= 1:
                d1, h1 = history[-1]
                r0 = h1 / h
                slope0 = (denoised - d1) / r0  # ~ h D' at the midpoint of the last interval
                if len(history) >= 2:
                    d2, h2 = history[-2]
                    r1 = h2 / h
                    slope1 = (d1 - d2) / r1
                    curvature = (slope0 - slope1) / (r0 + r1)  # ~ h^2 D'' / 2
                    slope = slope0 + curvature * r0  # h D' moved to the current point
                    phi3 = phi2 / g - 0.5
                    x = x + phi2 * slope - (curvature_weight * phi3) * curvature
                else:
                    x = x + phi2 * slope0
            if eta > 0:
                x = x + (s_next * math.sqrt(-math.expm1(-2 * eta * h)) * s_noise) * draw_noise(x, generator)
            history.append((denoised, h))
            del history[:-2]
        report(callback, i, x, s, denoised)
    return x


def sample_dpmpp_3m_sde(model: Model, x: torch.Tensor, sigmas: torch.Tensor, *,
                        extra_args: dict | None = None, callback: Callback | None = None,
                        generator: torch.Generator | None = None, eta: float = 1.0,
                        s_noise: float = 1.0) -> torch.Tensor:
    """DPM-Solver++(3M) SDE as k-diffusion's ``sample_dpmpp_3m_sde`` and diffusers'
    ``DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", solver_order=3)`` compute
    it (Lu et al. 2022's multistep data-prediction solver on the reverse SDE): the
    second-difference term is ``- phi3 d2``. With ``d2 ~ h^2 D''/2`` that is half the term a
    quadratic D needs, so at ``eta = 0`` it converges at second order (measured 1.9 on Gaussian
    data); ``dpmpp_3m_sde_third_order`` has the full term. Same samples as theirs for the
    same settings and noise."""
    return _dpmpp_3m_sde(model, x, sigmas, extra_args, callback, generator, eta, s_noise, 1.0)


def sample_dpmpp_3m_sde_third_order(model: Model, x: torch.Tensor, sigmas: torch.Tensor, *,
                                    extra_args: dict | None = None,
                                    callback: Callback | None = None,
                                    generator: torch.Generator | None = None, eta: float = 1.0,
                                    s_noise: float = 1.0) -> torch.Tensor:
    """DPM-Solver++(3M) SDE with the full second-difference term ``- 2 phi3 d2``
    (``= - phi3 h^2 D''``): the exponential integrator is then exact for a denoiser quadratic
    in lambda, and at ``eta = 0`` the solver is third order (measured 3.1 on Gaussian data).
    Not what k-diffusion or diffusers compute under the name ``dpmpp_3m_sde`` (that is
    ``sample_dpmpp_3m_sde``); their samples differ by O(h^3 D'') per step."""
    return _dpmpp_3m_sde(model, x, sigmas, extra_args, callback, generator, eta, s_noise, 2.0)


# ------------------------------------------------------------------------------------------
# registration and knobs
# ------------------------------------------------------------------------------------------

# keyword parameters that belong to the contract, not to a sampler's knobs
CONTRACT = frozenset({"model", "x", "sigmas", "extra_args", "callback", "generator", "disable",
                      "noise_sampler"})
# bounds of well-known knobs, for every sampler that has them (first- or third-party)
KNOB_BOUNDS: dict[str, tuple[float | None, float | None]] = {
    "eta": (0.0, 1.0), "s_noise": (0.0, None), "s_churn": (0.0, None), "s_tmin": (0.0, None),
    "s_tmax": (0.0, None), "order": (1, None),
}


@dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler: its function, name, cost per step, and where it came from."""

    name: str
    fn: Callable[..., torch.Tensor]
    evals_per_step: int = 1  # network evaluations per step (Heun: 2; its last step takes 1)
    package: str = "ldmcore"

    @property
    def knobs(self) -> dict[str, Any]:
        """Knob name -> default, read from the function's keyword parameters."""
        params = inspect.signature(self.fn).parameters
        return {k: p.default for k, p in params.items()
                if k not in CONTRACT and p.default is not inspect.Parameter.empty}

    def evals(self, steps: int) -> int:
        """Network evaluations of ``steps`` steps ending at sigma = 0."""
        return self.evals_per_step * steps - (self.evals_per_step - 1)

    def steps_for(self, evals: int) -> int:
        """The most steps whose evaluations fit in ``evals``."""
        return max(1, (evals + self.evals_per_step - 1) // self.evals_per_step)

    def bounds(self, knob: str) -> tuple[float | None, float | None]:
        """The range of ``knob``: the sampler's own (``steps.knob_bounds``), else the shared one."""
        own = getattr(self.fn, "knob_bounds", {})
        return own.get(knob, KNOB_BOUNDS.get(knob, (None, None)))

    def describe_knobs(self) -> str:
        knobs = self.knobs
        if not knobs:
            return "it takes no knobs"
        return "its knobs: " + ", ".join(f"{k} (default {v!r}{_bounds_text(*self.bounds(k))})"
                                         for k, v in knobs.items())

    def check_knobs(self, knobs: dict[str, Any], where: str = "") -> dict[str, Any]:
        """Validated knobs (types follow the defaults); unknown or out-of-range ones are a
        ``ConfigError`` listing what this sampler takes."""
        valid = self.knobs
        out: dict[str, Any] = {}
        for key, value in knobs.items():
            if key not in valid:
                hint = f" ({nearest(key, valid).rstrip('.')})" if valid else ""
                raise ConfigError(f"{where}{key}={value!r}: sampler {self.name!r} has no knob "
                                  f"{key!r}{hint}; {self.describe_knobs()}.")
            default = valid[key]
            try:
                value = _coerce(type(default) if default is not None else float, value)
            except (TypeError, ValueError):
                raise ConfigError(f"{where}{key}={value!r} is not a {type(default).__name__}; "
                                  f"sampler {self.name!r}: {self.describe_knobs()}.") from None
            lo, hi = self.bounds(key)
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                raise ConfigError(f"{where}{key}={value!r} is out of range "
                                  f"({_range_text(lo, hi)}); sampler {self.name!r}: "
                                  f"{self.describe_knobs()}.")
            out[key] = value
        return out

    def __call__(self, model: Model, x: torch.Tensor, sigmas: torch.Tensor, *,
                 extra_args: dict | None = None, callback: Callback | None = None,
                 generator: torch.Generator | None = None, **knobs: Any) -> torch.Tensor:
        """Run the sampler, passing the generator the way its function accepts it
        (``generator=``, or a k-diffusion ``noise_sampler`` drawing from it)."""
        params = inspect.signature(self.fn).parameters
        kwargs: dict[str, Any] = {"extra_args": extra_args, "callback": callback, **knobs}
        if "generator" in params:
            kwargs["generator"] = generator
        elif "noise_sampler" in params and generator is not None:
            kwargs["noise_sampler"] = BrownianNoise(x, generator)
        if "disable" in params:
            kwargs["disable"] = True
        return self.fn(model, x, sigmas, **kwargs)


def _coerce(kind: type, value: Any) -> Any:
    if kind is bool and isinstance(value, str):
        if value.lower() not in ("true", "false", "1", "0"):
            raise ValueError(value)
        return value.lower() in ("true", "1")
    if kind is float:
        out = float(value)
        if not math.isfinite(out):
            raise ValueError(value)
        return out
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise ValueError(value)
    return kind(value)


def _range_text(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f"[{lo:g}, {hi:g}]"
    if lo is not None:
        return f">= {lo:g}"
    return f"<= {hi:g}" if hi is not None else ""


def _bounds_text(lo: float | None, hi: float | None) -> str:
    text = _range_text(lo, hi)
    return f", in {text}" if text.startswith("[") else (f", {text}" if text else "")


BUILTIN: tuple[SamplerSpec, ...] = (
    SamplerSpec("ddim", sample_ddim),
    SamplerSpec("ddpm", sample_ddpm),
    SamplerSpec("euler", sample_euler),
    SamplerSpec("euler_ancestral", sample_euler_ancestral),
    SamplerSpec("heun", sample_heun, evals_per_step=2),
    SamplerSpec("dpmpp_2m", sample_dpmpp_2m),
    SamplerSpec("dpmpp_2m_sde", sample_dpmpp_2m_sde),
    SamplerSpec("dpmpp_3m_sde", sample_dpmpp_3m_sde),
    SamplerSpec("dpmpp_3m_sde_third_order", sample_dpmpp_3m_sde_third_order),
    SamplerSpec("lcm", sample_lcm),
    SamplerSpec("dpm_2", sample_dpm_2, evals_per_step=2),
    SamplerSpec("dpm_2_ancestral", sample_dpm_2_ancestral, evals_per_step=2),
    SamplerSpec("dpmpp_2s_ancestral", sample_dpmpp_2s_ancestral, evals_per_step=2),
    SamplerSpec("dpmpp_sde", sample_dpmpp_sde, evals_per_step=2),
    SamplerSpec("lms", sample_lms),
    SamplerSpec("deis", sample_deis),
    SamplerSpec("unipc", sample_unipc),
)

SAMPLERS: dict[str, SamplerSpec] = {spec.name: spec for spec in BUILTIN}


@hookimpl
def register_samplers(register: Callable[..., None]) -> None:
    """The built-in samplers, registered through the same hook as third-party ones."""
    for spec in BUILTIN:
        register(spec.fn, name=spec.name, evals_per_step=spec.evals_per_step)
