"""Every shipped sampler as a sampling plan, for the benchmarks that compare samplers.

Each sampler runs with the noise levels and knobs of its shipped config
(``conf/sampler/<name>.yaml``); discrete samplers (DDIM, DDPM) on the timestep spacing asked
for. The evaluation budgets are network evaluations (NFE) per sample.
"""

from __future__ import annotations

import torch

BUDGETS = (5, 10, 20, 50, 100)


def sampler_plans(names: list[str] | None, spacing: str, guidance: float) -> dict[str, dict]:
    """Each sampler's shipped config (noise levels and knobs) as a sampling plan at ``guidance``,
    discrete ones at ``spacing``; and whether it is deterministic."""
    from ldmcore.config import conf_dir, load
    from ldmcore.sampling import sampling_plan

    shipped = sorted(p.stem for p in (conf_dir() / "sampler").glob("*.yaml"))
    out = {}
    for name in names or shipped:
        plan = sampling_plan(load([f"sampler={name}", f"sampler.spacing={spacing}"]).sampler,
                             guidance=guidance)
        out[name] = {"plan": plan, "deterministic": deterministic(plan.sampler, dict(plan.knobs))}
    return out


def deterministic(spec, knobs: dict) -> bool:
    """Whether the sampler's output ignores its generator: two seeds on a toy problem."""
    from ldmcore.diffusion.sigmas import karras_sigmas

    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    runs = [spec(lambda z, sigma: 0.5 * z, x, karras_sigmas(3, 0.1, 10.0),
                 generator=torch.Generator().manual_seed(seed), **knobs) for seed in (1, 2)]
    return torch.equal(*runs)
