"""A residual plugin's step window (ControlNet's ``control_guidance_start`` / ``end``) in sampling.

The truth is diffusers' rule, written out here from its definition: at step ``i`` of ``N`` a
ControlNet acts unless ``i / N < start`` or ``(i + 1) / N > end``. The test counts, for each
denoiser call of a real sampling run, whether the ControlNet's maps reached the UNet.
"""

from __future__ import annotations

import pytest
import torch

from ldmcore.build import build_model
from ldmcore.config import load
from ldmcore.errors import ConfigError
from tests.test_residual_injection import SHAPES, randomised, shapes_batch


def control_model(*options: str):
    cfg = load([*SHAPES, "condition=[class,controlnet]", "conditions.controlnet.condition=segmap",
                "sampler.guidance=3", *options])
    return randomised(build_model(cfg))


@pytest.mark.parametrize("sampler, calls_per_step", [("ddim", 1), ("heun", 2)])
def test_the_controlnet_acts_in_the_steps_of_its_window_only(sampler, calls_per_step):
    model = control_model("conditions.controlnet.control_guidance_start=0.2",
                          "conditions.controlnet.control_guidance_end=0.7", f"sampler.name={sampler}", "~sampler.eta",
                          "sampler.steps=10")
    acted = []
    network = model.network

    def recording(zt, t, cond):
        acted.append(cond.residuals is not None and "controlnet" in cond.residuals.parts)
        return network(zt, t, cond)

    model.network = recording
    batch = shapes_batch(1)
    values = {"class": batch["class"], "controlnet": batch["mask"]}
    model.sample(values, 1, noise=torch.randn(1, 2, 8, 8, generator=torch.Generator().manual_seed(0)))
    n = 10
    want = [not (i / n < 0.2 or (i + 1) / n > 0.7) for i in range(n)]
    assert acted[::calls_per_step] == want  # each step's first call, at the level it starts at
    assert sum(want) == 5  # steps 2..6


def test_a_window_that_ends_before_it_starts_is_refused_naming_both_keys():
    with pytest.raises(ConfigError, match="control_guidance_start=0.8 must be below control_guidance_end=0.3"):
        control_model("conditions.controlnet.control_guidance_start=0.8",
                      "conditions.controlnet.control_guidance_end=0.3")


def test_gligens_scheduled_sampling_keeps_the_gated_layers_to_the_first_steps():
    """``scheduled_sampling_beta=0.3`` of 10 steps: the gated layout's layers act in steps 0..2
    (diffusers' GLIGEN pipeline: ``int(beta * N)`` steps), in both guidance branches."""
    cfg = load([*SHAPES, "condition=[class,layout]", "conditions.layout.injection=gated",
                "conditions.layout.scheduled_sampling_beta=0.3", "sampler.guidance=3", "sampler.steps=10"])
    model = randomised(build_model(cfg))
    acted = []
    network = model.network

    def recording(zt, t, cond):
        acted.append(cond.inserted is not None and len(cond.inserted.gated) == 1)
        return network(zt, t, cond)

    model.network = recording
    value = [(torch.tensor([[0.1, 0.1, 0.6, 0.5]]), torch.tensor([1]))]
    model.sample({"class": torch.tensor([0]), "layout": value}, 1,
                 noise=torch.randn(1, 2, 8, 8, generator=torch.Generator().manual_seed(0)))
    assert acted == [i < int(0.3 * 10) for i in range(10)]
