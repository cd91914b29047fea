"""A condition outside guidance (``ConditionEncoder.guided`` False; the ControlNet's
``guided=false``): every branch of classifier-free guidance gets it, the unconditional one
included, as diffusers' ControlNet pipelines give a ControlNet to both branches outside guess
mode. Parity with that pipeline: tests/test_parity_residual.py."""

from __future__ import annotations

import pytest
import torch

from ldmcore.diffusion.guidance import Guidance
from ldmcore.errors import ConfigError
from tests.test_residual_injection import shapes_batch
from tests.test_step_windows import control_model


def test_an_unguided_controlnet_is_in_the_unconditional_branch_and_the_class_is_not():
    model = control_model("conditions.controlnet.guided=false", "conditions.controlnet.scale=0.5")
    batch = shapes_batch(1)
    values = model.conditioner.resolve({"class": batch["class"], "controlnet": batch["mask"]})
    guided = model.guided_denoiser(values, 1, Guidance(scale=3.0))
    conditional, unconditional = guided.branches
    assert guided.weights == [3.0, -2.0]
    for branch in (conditional, unconditional):  # the hint at its scale in both
        assert branch.residuals.parts["controlnet"].weight.tolist() == [0.5]
    # the class is guided: its null (vector) differs between the branches
    assert not torch.equal(conditional.vector, unconditional.vector)


def test_a_guidance_scale_for_an_unguided_condition_is_refused_naming_both_settings():
    model = control_model("conditions.controlnet.guided=false")
    batch = shapes_batch(1)
    values = model.conditioner.resolve({"class": batch["class"], "controlnet": batch["mask"]})
    with pytest.raises(ConfigError, match=r"guidance.controlnet: .*conditions.controlnet.guided=false"):
        model.guided_denoiser(values, 1, Guidance(scale=3.0, per_plugin={"controlnet": 2.0}))
