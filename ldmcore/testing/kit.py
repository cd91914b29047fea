"""The tiny backbone every rule builds (16x16 images, f=2, a 16-channel UNet), its data, and
registries that hold only the plugins a rule asks for."""

from __future__ import annotations

import importlib.metadata as md
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import lru_cache
from types import ModuleType
from typing import Any

import torch

from ldmcore.build import backbone_spec, build_autoencoder, build_dataset, frozen_encoder
from ldmcore.conditioning import BackboneSpec, ConditionEncoder
from ldmcore.config import validate
from ldmcore.data.datasets import collate
from ldmcore.hookspecs import hookimpl
from ldmcore.registry import ENTRY_POINT_GROUP, build_registry
from ldmcore.testing.case import PluginCase


IMAGE_SIZE = 16


def kit_config(case: PluginCase, conditions: Mapping[str, Mapping[str, Any]]) -> Any:
    """A validated smoke-size ExperimentConfig (16x16 images, f=2, a 16-channel UNet)."""
    return validate({
        "name": "conformance", "run_dir": "runs/conformance",
        "data": {"name": case.dataset, "image_size": IMAGE_SIZE, "channels": case.image_channels},
        "autoencoder": {"ch": 16, "ch_mult": [1, 2], "norm_groups": 8, "latent_channels": 2},
        "model": {"unet": {"model_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1,
                           "attention_levels": [1], "num_head_channels": 16, "context_dim": 32,
                           "norm_groups": 8}},
        "trainer": {"precision": "fp32"},
        "conditions": {k: dict(v) for k, v in conditions.items()},
    })


def kit_backbone(case: PluginCase) -> BackboneSpec:
    """The kit backbone's spec, with the frozen first stage a plugin may use (``encode``)."""
    spec = backbone_spec(kit_config(case, {}))
    return replace(spec, encode=frozen_encoder(kit_autoencoder(case.image_channels)))


@lru_cache(maxsize=2)
def kit_autoencoder(image_channels: int) -> Any:
    rng = torch.get_rng_state()
    torch.manual_seed(0)
    ae = build_autoencoder(kit_config(PluginCase(ConditionEncoder, image_channels=image_channels), {}))
    torch.set_rng_state(rng)
    return ae.requires_grad_(False).eval()


@lru_cache(maxsize=4)
def dataset_batch(name: str, channels: int, size: int) -> dict[str, Any]:
    ds = build_dataset(name, path=None, image_size=IMAGE_SIZE, channels=channels, hflip=False,
                       shift=0.0)
    step = max(1, len(ds) // size)
    return collate([ds[i * step] for i in range(size)])


def builtin_plugin_modules() -> list[ModuleType]:
    """The hook modules of ldmcore's own plugins, read from its entry points (whatever
    ``LDM_LOAD_PLUGINS`` or ``LDM_DISABLE_ENTRY_POINTS`` say)."""
    return [ep.load() for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
            if ep.dist is not None and ep.dist.metadata["Name"] == "ldmcore"]


def isolated_registry(*plugins: ModuleType | object, builtins: bool = False):
    """A registry holding only ``plugins`` (and ldmcore's built-ins when asked); no other
    installed package is loaded."""
    reg = build_registry(load_entry_points=False)
    if builtins:
        for module in builtin_plugin_modules():
            if module not in plugins:
                reg.add_module(module, package="ldmcore")
    for p in plugins:
        reg.add_module(p)
    return reg


class EncoderPlugin:
    """A plugin object registering given classes (how the kit registers a case's encoder)."""

    def __init__(self, classes: Sequence[type]) -> None:
        self.classes = list(classes)

    @hookimpl
    def register_conditions(self, register: Callable[[type], None]) -> None:
        for cls in self.classes:
            register(cls)
