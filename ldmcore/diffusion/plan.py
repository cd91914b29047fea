"""SamplingPlan: everything that says how to sample, as one value.

A plan names the sampler (a registered ``SamplerSpec``), the step count, the noise levels
(``SigmaPlan``), the sampler's knobs, the guidance and, for image-to-image, the strength. It
is resolved once (``ldmcore.sampling.sampling_plan``: a run's sampler config, overrides, the
registry) and handed to ``LatentDiffusion.sample``; training grids, ``ldm sample``, ``ldm eval``
and the benchmarks all sample this way, so a setting means the same thing everywhere. A model
built from a run carries the run's own plan as its default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ldmcore.diffusion.guidance import Guidance
from ldmcore.diffusion.img2img import start_index
from ldmcore.diffusion.samplers import SAMPLERS, SamplerSpec
from ldmcore.diffusion.schedule import NoiseSchedule
from ldmcore.diffusion.sigmas import SigmaPlan


@dataclass(frozen=True)
class SamplingPlan:
    """How to sample: sampler, steps, noise levels, knobs, guidance, image-to-image strength.

    ``knobs`` must already be checked against the sampler (``SamplerSpec.check_knobs``); the
    resolver does that. ``strength`` < 1 runs only the last ``int(steps * strength)`` steps
    from a noised init image (SDEdit); it has no effect without one.
    """

    sampler: SamplerSpec = SAMPLERS["ddim"]
    steps: int = 50
    sigmas: SigmaPlan = SigmaPlan()
    knobs: Mapping[str, Any] = field(default_factory=dict)
    guidance: Guidance = Guidance()
    strength: float = 1.0

    def levels(self, schedule: NoiseSchedule) -> torch.Tensor:
        """The descending noise levels of all ``steps`` steps on ``schedule``."""
        return self.sigmas.sigmas(schedule, self.steps)

    def first_step(self, levels: torch.Tensor) -> int:
        """Index into ``levels`` (descending, ending at the last level) of the first level an
        image-to-image run visits: ``int(steps * strength)`` steps remain (0 for strength 1).
        The steps are those ``levels`` holds, which a grid with repeated levels has fewer of."""
        return start_index(len(levels) - 1, self.strength)

    def evaluations(self) -> int:
        """Network evaluations of a full run of this plan (guidance branches batched in one)."""
        return self.sampler.evals(self.steps)

    def but(self, **changes: Any) -> SamplingPlan:
        """This plan with some fields replaced (already resolved values: a ``SamplerSpec``, not a
        name; use ``ldmcore.sampling.sampling_plan`` to resolve names and check knobs)."""
        return replace(self, **changes)

    def describe(self) -> str:
        """One line saying how this plan samples (what ``ldm sample`` prints before it starts)."""
        g = self.guidance
        parts = [f"{self.sampler.name}, {self.steps} steps ({self.evaluations()} evaluations), "
                 f"{self.sigmas.kind.value} noise levels"]
        if self.knobs:
            parts.append(" ".join(f"{k}={v}" for k, v in self.knobs.items()))
        parts.append(f"guidance {g.scale:g}" + "".join(f", {k} {v:g}" for k, v in g.per_plugin.items()))
        if self.strength < 1:
            parts.append(f"strength {self.strength:g}")
        return "; ".join(parts)

    def record(self) -> dict[str, Any]:
        """The plan as plain JSON values (what ``samples.json`` records)."""
        g = self.guidance
        return {"sampler": self.sampler.name, "steps": self.steps, "evaluations": self.evaluations(),
                "sigmas": self.sigmas.kind.value, "knobs": dict(self.knobs), "guidance": g.scale,
                "plugin_guidance": dict(g.per_plugin), "guidance_rescale": g.rescale,
                "guidance_interval": g.interval}
