"""The conformance kit's rules for the residual injection catch residual plugins broken on
purpose, naming the rule each breaks (the two built-in residual plugins pass every rule in
tests/test_conformance.py)."""

from __future__ import annotations

import pytest
import torch

from ldm_controlnet.encoder import COPIED, ControlNetEncoder
from ldm_t2i_adapter.encoder import T2IAdapterEncoder
from ldmcore.testing import ConformanceError, PluginCase, check_plugin

RESIDUAL_RULES = ["residual-zero-init", "residual-ownership", "residual-removal", "residual-save-load"]


def case(cls: type) -> PluginCase:
    return PluginCase(cls, config={"condition": "segmap"}, dataset="shapes", image_channels=3)


class EagerAdapter(T2IAdapterEncoder):
    """Its gains start at 1: attaching it moves the pretrained model's output at step 0."""

    def __init__(self, config, backbone):
        super().__init__(config, backbone)
        with torch.no_grad():
            for gain in self.gain:
                gain.fill_(1.0)


class SharingControlNet(ControlNetEncoder):
    """It takes the backbone's encoder half itself instead of a copy: training it trains the
    backbone, and removing it no longer gives the pretrained model back."""

    def init_from_backbone(self, unet):
        for part in COPIED:
            if hasattr(unet, part):
                setattr(self, part, getattr(unet, part))
        self.model_channels = unet.shape.model_channels
        self.vector_input = unet.shape.vector_dim > 0


class ForgetfulAdapter(T2IAdapterEncoder):
    """Its gains are plain tensors drawn at construction, not parameters: they are neither
    trained nor saved, so a model loading its file has other gains."""

    def __init__(self, config, backbone):
        super().__init__(config, backbone)
        gains = [torch.rand_like(g) for g in self.gain]
        del self.gain
        self.gain = gains


@pytest.mark.parametrize("broken, rules, words", [
    (EagerAdapter, {"residual-zero-init"}, "not zero at initialisation"),
    (SharingControlNet, {"residual-ownership", "residual-removal"}, "the backbone's own tensors"),
])
def test_a_broken_residual_plugin_is_caught_naming_the_rule(broken, rules, words):
    with pytest.raises(ConformanceError) as exc:
        check_plugin(case(broken), RESIDUAL_RULES)
    assert set(exc.value.rules) == rules
    assert words in " ".join(exc.value.failures.values())
    assert all(f"plugin '{broken.name}' breaks rule '{r}'" in str(exc.value) for r in rules)


def test_state_missing_from_the_plugin_file_breaks_save_load():
    with pytest.raises(ConformanceError) as exc:
        check_plugin(case(ForgetfulAdapter), ["residual-save-load"])
    assert exc.value.rules == ["residual-save-load"]
    assert "differs" in exc.value.failures["residual-save-load"]
