"""Measured convergence order of every deterministic sampler on Gaussian data (seconds, CPU).

The exact denoiser of N(MU, COV) is closed form and each deterministic sampler is an affine
map of its start, so the output mean and covariance are computed exactly from three runs.
Prints a Markdown table: error = ||cov - cov*|| + ||mean - MU|| at 40, 80, 160, 320 Karras steps
and the order log2(e(n) / e(2n)); docs/samplers.md shows it. ``tests/test_samplers.py`` asserts
the same orders::

    python -m benchmarks.sampler_orders
"""

from __future__ import annotations

import math

import torch

from ldmcore.diffusion.samplers import SAMPLERS
from ldmcore.diffusion.sigmas import karras_sigmas

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
MU = torch.tensor([1.5, -0.5], dtype=torch.float64)
COV = torch.tensor([[0.25, 0.1], [0.1, 0.5]], dtype=torch.float64)
EYE = torch.eye(2, dtype=torch.float64)
CASES = [("euler", {}, 1), ("ddim", {"eta": 0.0}, 1), ("euler_ancestral", {"eta": 0.0}, 1),
         ("heun", {}, 2), ("dpmpp_2m", {}, 2), ("dpmpp_2m_sde", {"eta": 0.0}, 2),
         ("dpmpp_3m_sde", {"eta": 0.0}, 2), ("dpmpp_3m_sde_third_order", {"eta": 0.0}, 3),
         ("dpm_2", {}, 2), ("dpm_2_ancestral", {"eta": 0.0}, 2),
         ("dpmpp_2s_ancestral", {"eta": 0.0}, 2), ("dpmpp_sde", {"eta": 0.0}, 2),
         ("lms", {}, 4), ("deis", {}, 2), ("deis", {"order": 3}, 3), ("unipc", {"order": 1}, 2),
         ("unipc", {}, 3), ("unipc", {"order": 3}, 4)]


def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    gain = COV @ torch.linalg.inv(COV + sigma.double().view(-1, 1, 1) ** 2 * EYE)
    return MU + ((x - MU)[:, None, :] @ gain.transpose(1, 2))[:, 0]


def error(name: str, steps: int, knobs: dict) -> float:
    chol = torch.linalg.cholesky(COV + SIGMA_MAX ** 2 * EYE)
    out = SAMPLERS[name](denoiser, torch.cat([MU[None], MU[None] + chol.T]),
                         karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX), **knobs)
    cols = (out[1:] - out[0]).T
    gain = COV @ torch.linalg.inv(COV + SIGMA_MIN ** 2 * EYE)
    target = gain @ (COV + SIGMA_MIN ** 2 * EYE) @ gain.T  # exact flow, then the last step x -> D(x)
    return float((cols @ cols.T - target).norm() + (out[0] - MU).norm())


def main() -> None:
    print("| sampler | stated order | error at 40 steps | 80 | 160 | 320 | measured order |")
    print("|---|---|---|---|---|---|---|")
    for name, knobs, order in CASES:
        errs = [error(name, n, knobs) for n in (40, 80, 160, 320)]
        rates = ", ".join(f"{math.log2(a / b):.2f}" for a, b in zip(errs, errs[1:]))
        label = name + (" (" + ", ".join(f"{k} {v:g}" for k, v in knobs.items()) + ")" if knobs else "")
        print(f"| {label} | {order} | " + " | ".join(f"{e:.2e}" for e in errs) + f" | {rates} |")


if __name__ == "__main__":
    main()
