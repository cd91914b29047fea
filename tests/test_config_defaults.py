"""Defaults are stated once: the pydantic models hold every default and its description; a YAML
file of the Hydra tree holds only what differs from them, so changing a default is one edit."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from ldmcore.config import (AutoencoderConfig, DataConfig, ExperimentConfig, ModelConfig,
                            SamplerConfig, TrainerConfig, conf_dir, load)
from ldmcore.errors import ConfigError
from ldmcore.registry import default_registry

GROUP_MODELS: dict[str, type[BaseModel]] = {
    "model": ModelConfig, "autoencoder": AutoencoderConfig, "data": DataConfig,
    "sampler": SamplerConfig, "trainer": TrainerConfig,
}


def schema_of(path: Path) -> BaseModel:
    group = path.parent.name
    if group == "condition":
        return default_registry().condition(path.stem).Config()
    return GROUP_MODELS[group]() if group in GROUP_MODELS else ExperimentConfig()


def restated(values: dict[str, Any], defaults: dict[str, Any], where: str = "") -> list[str]:
    """Keys of ``values`` whose value equals the default at the same place."""
    found = []
    for key, value in values.items():
        if key == "defaults" or key not in defaults:
            continue
        if isinstance(value, dict) and value and isinstance(defaults[key], dict):
            found += restated(value, defaults[key], f"{where}{key}.")
        elif value == defaults[key]:
            found.append(f"{where}{key}")
    return found


FILES = sorted([conf_dir() / "config.yaml",
                *(p for g in (*GROUP_MODELS, "condition") for p in (conf_dir() / g).glob("*.yaml"))])


def interpolated() -> set[str]:
    """Every key an interpolation of the tree refers to (``${trainer.precision}``): those stay
    in their files, since Hydra resolves them before pydantic fills any default."""
    return {key for p in conf_dir().rglob("*.yaml") for key in re.findall(r"\$\{([\w.]+)\}", p.read_text())}


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_yaml_holds_only_what_differs_from_the_pydantic_defaults(path):
    values = yaml.safe_load(path.read_text()) or {}
    group = "" if path.parent == conf_dir() else f"{path.parent.name}."
    defaults = schema_of(path).model_dump(mode="json")
    found = [k for k in restated(values, defaults) if f"{group}{k}" not in interpolated()]
    assert not found, f"{path.name} restates pydantic defaults (drop them): {', '.join(found)}"


def test_a_key_no_yaml_file_mentions_is_set_without_a_plus():
    cfg = load(["model.unet.dropout=0.1", "trainer.weight_decay=0.01"])
    assert cfg.model.unet.dropout == 0.1 and cfg.trainer.weight_decay == 0.01


def test_a_plugin_key_configures_an_enabled_plugin_and_never_enables_one():
    assert load(["condition=[class]", "conditions.class.num_classes=7"]).conditions["class"]["num_classes"] == 7
    with pytest.raises(ConfigError, match=r"plugin 'segmap' is not enabled.*`condition=\[class,segmap\] conditions.segmap.channels=4`"):
        load(["condition=[class]", "conditions.segmap.channels=4"])
    assert "segmap" in load(["condition=[class]", "+conditions.segmap.channels=4"]).conditions
