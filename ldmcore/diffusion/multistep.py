"""Linear multistep samplers: each step reuses the network's estimates at the last few levels
(one evaluation a step), interpolating them with a polynomial.

* ``lms`` - k-diffusion's ``sample_lms`` / diffusers' ``LMSDiscreteScheduler``: Adams-Bashforth
  on ``dx/dsigma = (x - D)/sigma``, the slopes interpolated by a polynomial in sigma;
* ``deis`` - Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential Integrator"
  (DEIS), as diffusers' ``DEISMultistepScheduler`` (``logrho``): the same ODE with the noise
  estimates interpolated by a polynomial in log sigma;
* ``unipc`` - Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework" as diffusers'
  ``UniPCMultistepScheduler`` (``bh2``, data prediction): a multistep predictor in lambda and,
  after every step, a corrector that reuses the estimate at the new point (no extra evaluation).

The interpolating polynomials' integrals are computed exactly (Gauss-Legendre with as many nodes
as the polynomial has coefficients, or the closed form of ``int P(u) e^u du``) where k-diffusion
and diffusers call scipy's adaptive quadrature: the same numbers to float64 round-off.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ldmcore.diffusion.steps import (Callback, Model, denoise, knob_bounds, levels_of, report,
                                     toward)


def _lagrange_basis(nodes: list[float], j: int) -> np.polynomial.Polynomial:
    """The Lagrange polynomial that is 1 at ``nodes[j]`` and 0 at the other nodes."""
    others = [u for k, u in enumerate(nodes) if k != j]
    scale = math.prod(nodes[j] - u for u in others)
    return np.polynomial.Polynomial.fromroots(others) / scale if others else np.polynomial.Polynomial([1.0])


def _integral_in_sigma(nodes: list[float], j: int, a: float, b: float) -> float:
    """``int_a^b L_j(sigma) dsigma`` exactly: Gauss-Legendre with ``len(nodes)`` points is exact
    for the degree ``len(nodes) - 1`` polynomial, evaluated in product form (expanded
    coefficients lose digits when the nodes are close together and far from 0)."""
    points, weights = np.polynomial.legendre.leggauss(len(nodes))
    taus = (b + a) / 2 + (b - a) / 2 * points
    values = np.ones_like(taus)
    for k, node in enumerate(nodes):
        if k != j:
            values *= (taus - node) / (nodes[j] - node)
    return float((b - a) / 2 * np.sum(weights * values))


def _integral_in_log_sigma(nodes: list[float], j: int, a: float, b: float) -> float:
    """``int_a^b L_j(log sigma) dsigma`` for the Lagrange basis over ``log(nodes)``, exactly:
    with ``u = log sigma`` it is ``int P(u) e^u du = [e^u sum_m (-1)^m P^(m)(u)]``, and the
    bracket vanishes at sigma = 0."""
    basis = _lagrange_basis([math.log(s) for s in nodes], j)
    terms = [(-1) ** m * basis.deriv(m) for m in range(len(nodes))]

    def antiderivative(sigma: float) -> float:
        if sigma == 0:
            return 0.0
        u = math.log(sigma)
        return sigma * float(sum(term(u) for term in terms))

    return antiderivative(b) - antiderivative(a)


def _interpolating_multistep(model: Model, x: torch.Tensor, sigmas: torch.Tensor,
                             extra_args: dict | None, callback: Callback | None, order: int,
                             integral, lower_order_final_below: int) -> torch.Tensor:
    """``x' = x + sum_j c_j eps_j`` over the last ``order`` levels, ``eps = (x - D)/sigma`` (the
    ODE's slope dx/dsigma), ``c_j = integral(nodes, j, sigma, sigma')`` of the j-th Lagrange
    polynomial through them; in runs shorter than ``lower_order_final_below`` steps the last
    step is first order and the one before at most second."""
    levels = levels_of(sigmas)
    steps = len(levels) - 1
    slopes: list[torch.Tensor] = []
    for i, (s, s_next) in enumerate(zip(levels, levels[1:])):
        denoised = denoise(model, x, s, extra_args)
        slopes.append((x - denoised) / s)
        del slopes[:-order]
        k = len(slopes) if steps >= lower_order_final_below else min(len(slopes), steps - i)
        nodes = levels[i + 1 - k: i + 1]
        for j, slope in enumerate(slopes[-k:]):
            x = x + integral(nodes, j, s, s_next) * slope
        report(callback, i, x, s, denoised)
    return x


@knob_bounds(order=(1, None))
def sample_lms(model: Model, x: torch.Tensor, sigmas: torch.Tensor, *,
               extra_args: dict | None = None, callback: Callback | None = None,
               generator: torch.Generator | None = None, order: int = 4) -> torch.Tensor:
    """Linear multistep (k-diffusion's ``sample_lms``, diffusers' ``LMSDiscreteScheduler``):
    the Adams-Bashforth method of order ``order`` on ``dx/dsigma = (x - D)/sigma`` over the
    nonuniform sigma grid, ``x' = x + sum_j c_j d_j`` with ``c_j`` the integral over the step of
    the Lagrange polynomial (in sigma) through the last ``order`` levels. The first steps use
    the orders their history allows. Unlike most samplers its last step to sigma = 0 is not the
    denoised estimate itself but the polynomial's extrapolation, as in k-diffusion."""
    return _interpolating_multistep(model, x, sigmas, extra_args, callback, order,
                                    _integral_in_sigma, lower_order_final_below=0)


@knob_bounds(order=(1, 3))
def sample_deis(model: Model, x: torch.Tensor, sigmas: torch.Tensor, *,
                extra_args: dict | None = None, callback: Callback | None = None,
                generator: torch.Generator | None = None, order: int = 2) -> torch.Tensor:
    """DEIS (Zhang & Chen 2023, the "logrho" multistep solver; diffusers'
    ``DEISMultistepScheduler``): the multistep method of ``lms`` with the noise estimates
    ``eps = (x - D)/sigma`` interpolated by a polynomial in log sigma instead of sigma. Order 1
    is DDIM. As diffusers does, the first steps
    use the orders their history allows and, in runs under 15 steps, the last step is first
    order and the one before at most second."""
    return _interpolating_multistep(model, x, sigmas, extra_args, callback, order,
                                    _integral_in_log_sigma, lower_order_final_below=15)


def _unipc_coefficients(rks: list[float], h: float, order: int, corrector: bool) -> list[float]:
    """UniPC's B(h) = e^h - 1 ("bh2") weights of the scaled differences (Zhao et al. 2023,
    Algorithm 2): solve ``R rho = b`` with ``R[i] = r^i`` over the nodes' ratios ``rks`` (the
    corrector's include the new point, r = 1) and ``b_i = i! phi_(i+1)(h) / B(h)``."""
    hh = -h  # data prediction: the integrator runs in -lambda
    b_h = math.expm1(hh)
    phi = math.expm1(hh) / hh - 1
    factorial = 1
    b = []
    for i in range(1, order + 1):
        b.append(phi * factorial / b_h)
        factorial *= i + 1
        phi = phi / hh - 1 / factorial
    if (order == 1 and corrector) or (order == 2 and not corrector):
        return [0.5]  # diffusers' (and the paper's) fixed choice where the system is 1 x 1
    size = order if corrector else order - 1
    matrix = torch.tensor([[r ** i for r in rks[:size]] for i in range(size)], dtype=torch.float64)
    return torch.linalg.solve(matrix, torch.tensor(b[:size], dtype=torch.float64)).tolist()


def _unipc_update(x: torch.Tensor, sigma_to: float, history: list[tuple[torch.Tensor, float]],
                  order: int, new: torch.Tensor | None = None) -> torch.Tensor:
    """One UniP step (``new is None``) or UniC correction (``new``: the estimate at
    ``sigma_to``) from ``x`` at the level of ``history[-1]``, ``history`` holding (estimate,
    level) pairs: ``x' = (s'/s) x + (1 - e^-h) (D_0 + sum_k rho_k (D_k - D_0) / r_k)``."""
    d0, sigma = history[-1]
    if sigma_to == 0:  # the last step is first order: the estimate itself
        return d0
    h = math.log(sigma / sigma_to)
    rks, scaled = [], []
    for estimate, level in history[-order:-1][::-1]:
        r = math.log(sigma / level) / h  # (lambda_k - lambda_0) / h, negative
        rks.append(r)
        scaled.append((estimate - d0) / r)
    total = d0
    if new is not None:
        rhos = _unipc_coefficients(rks + [1.0], h, order, corrector=True)
        total = total + rhos[-1] * (new - d0)
        rhos = rhos[:-1]
    else:
        rhos = _unipc_coefficients(rks + [1.0], h, order, corrector=False) if order > 1 else []
    for rho, diff in zip(rhos, scaled):
        total = total + rho * diff
    return toward(x, total, sigma, sigma_to)


@knob_bounds(order=(1, 3))
def sample_unipc(model: Model, x: torch.Tensor, sigmas: torch.Tensor, *,
                 extra_args: dict | None = None, callback: Callback | None = None,
                 generator: torch.Generator | None = None, order: int = 2) -> torch.Tensor:
    """UniPC (Zhao et al. 2023) as diffusers' ``UniPCMultistepScheduler`` with its defaults
    (``bh2``, data prediction, ``solver_order=2``, corrector on, lower order final): a
    multistep predictor UniP of order ``min(order, steps done + 1, steps left)``, and at each
    new level (before the next step) the corrector UniC, which redoes the step just taken with
    the network's estimate at its end - the evaluation the next step needs anyway - one order
    higher. One evaluation per step."""
    levels = levels_of(sigmas)
    steps = len(levels) - 1
    history: list[tuple[torch.Tensor, float]] = []  # (estimate, its level), the last `order`
    last: tuple[torch.Tensor, int] | None = None  # the last step's start and order
    for i, (s, s_next) in enumerate(zip(levels, levels[1:])):
        denoised = denoise(model, x, s, extra_args)
        if last is not None:
            x = _unipc_update(last[0], s, history, last[1], new=denoised)
        history.append((denoised, s))
        del history[:-order]
        this_order = min(order, i + 1, steps - i)
        last = (x, this_order)
        x = _unipc_update(x, s_next, history, this_order)
        report(callback, i, x, s, denoised)
    return x
