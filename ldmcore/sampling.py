"""The one sampling recipe: a run's sampler config, plus overrides, through the registry, into a
``SamplingPlan``.

``SamplerConfig`` is the ``sampler:`` section of an experiment (what a run records about how
it samples). ``sampling_plan`` is the only place a sampler name is looked up and knobs are
checked: the model a run builds carries the plan of its config (``LatentDiffusion.sampling``),
``ldm sample`` and ``ldm eval`` override parts of it, and a sampler registered by a third-party
package is found the same way as a built-in one.

Naming another sampler than the config's (``sampler=NAME``: ``ldm sample``, ``ldm eval``, ``ldm
train``) takes that sampler's own config, ``sampler/NAME.yaml`` (the host's or a plugin's): its
steps, noise levels and knobs replace the config's (``SAMPLER_KEYS``; pydantic defaults where
the file is silent), anything else the file sets too (LCM's guidance of 1); the other keys
(guidance, schedule-bound offset and end points) stay. Explicit overrides win over both.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from ldmcore.conftree import config_sources
from ldmcore.diffusion.guidance import Guidance, RescaleSpace
from ldmcore.diffusion.plan import SamplingPlan
from ldmcore.diffusion.sigmas import SigmaKind, SigmaPlan, Spacing
from ldmcore.errors import ConfigError
from ldmcore.registry import Registry, default_registry
from ldmcore.schema import Strict, format_validation_error


class SamplerConfig(Strict):
    """How a run samples: sampler, noise levels, sampler knobs and guidance. The sampler name
    and its knobs are checked against the registry by ``sampling_plan``."""

    name: str = "ddim"
    steps: int = Field(50, ge=1, description="sampler steps (Heun: two evaluations each)")
    sigmas: SigmaKind = Field(SigmaKind.DISCRETE, description="noise levels: the schedule's "
                              "own timesteps (discrete), karras or exponential")
    spacing: Spacing = Spacing.LEADING
    offset: int = Field(0, ge=0, description="added to leading timesteps (SD uses 1)")
    rho: float = Field(7.0, gt=0, description="Karras et al.'s rho (sigmas=karras)")
    sigma_min: float | None = Field(None, gt=0, description="default: the schedule's smallest")
    sigma_max: float | None = Field(None, gt=0, description="default: the schedule's largest")
    eta: float | None = Field(None, ge=0.0, le=1.0, description="noise knob of stochastic "
                              "samplers; None = the sampler's default")
    options: dict[str, Any] = Field(default_factory=dict, description="other sampler knobs")
    guidance: float = 3.0
    plugin_guidance: dict[str, float] = Field(default_factory=dict, description="per-plugin "
                                              "scales: compositional guidance")
    guidance_rescale: float = Field(0.0, ge=0.0, le=1.0)
    guidance_rescale_space: RescaleSpace = Field(RescaleSpace.OUTPUT, description="what "
                                                 "guidance_rescale matches the std of: the "
                                                 "network's eps/v output (as diffusers) or the "
                                                 "denoised estimate")
    guidance_interval: tuple[float, float] | None = Field(None, description="guide only for "
                                                          "sigmas in [lo, hi]")
    set_alpha_to_one: bool = Field(True, description="discrete sigmas: the last step lands on "
                                   "alpha-bar 1 (sigma 0); false: on alpha-bar of t=0, as SD does")

    @model_validator(mode="after")
    def _guidance_is_valid(self) -> SamplerConfig:
        try:
            self.guidance_spec()  # checks rescale and interval
        except ConfigError as err:
            raise ValueError(str(err)) from None
        return self

    def knobs(self) -> dict[str, Any]:
        """The sampler knobs this config sets (eta is one when given)."""
        return {**self.options, **({} if self.eta is None else {"eta": self.eta})}

    def plan(self) -> SigmaPlan:
        return SigmaPlan(self.sigmas, self.spacing, self.offset, self.rho, self.sigma_min,
                         self.sigma_max, self.set_alpha_to_one)

    def guidance_spec(self) -> Guidance:
        return Guidance(self.guidance, dict(self.plugin_guidance), self.guidance_rescale,
                        self.guidance_interval, self.guidance_rescale_space)


# what a sampler's own config replaces when a command switches to it
SAMPLER_KEYS = ("steps", "sigmas", "spacing", "rho", "eta", "options")


def sampler_file(name: str, registry: Registry | None = None) -> dict[str, Any]:
    """The keys ``sampler/NAME.yaml`` sets (the host's tree first, then the plugins'); empty
    when no tree ships one (a sampler registered without a config file)."""
    for _, folder in config_sources(registry):
        path = folder / "sampler" / f"{name}.yaml"
        if path.is_file():
            keys = yaml.safe_load(path.read_text()) or {}
            return {k: v for k, v in keys.items() if k != "defaults"}
    return {}


def switched_to(section: dict[str, Any], name: str, registry: Registry | None = None) -> dict[str, Any]:
    """A ``sampler:`` section (plain values) switched to sampler ``name``: its ``SAMPLER_KEYS``
    from ``sampler/NAME.yaml`` (defaults where the file is silent), the rest kept."""
    defaults = SamplerConfig().model_dump(mode="json")
    return {**section, **{k: defaults[k] for k in SAMPLER_KEYS}, **sampler_file(name, registry),
            "name": name}


def sampling_plan(config: SamplerConfig, registry: Registry | None = None, *,
                  where: str = "sampler.", strength: float | None = None,
                  **overrides: Any) -> SamplingPlan:
    """The plan of ``config`` with ``overrides`` (``SamplerConfig`` fields; ``None`` = keep).

    A ``name`` other than the config's switches to that sampler's own config first
    (``switched_to``). ``options`` and ``plugin_guidance`` are merged into the base's. ``where``
    prefixes the key names in error messages. ``strength`` is the image-to-image strength
    (default 1).
    """
    changes = {k: v for k, v in overrides.items() if v is not None}
    base = config.model_dump(mode="json")
    if changes.get("name", config.name) != config.name:
        base = switched_to(base, changes["name"], registry)
    merged = {**base, **changes,
              "options": {**base.get("options", {}), **changes.get("options", {})},
              "plugin_guidance": {**base["plugin_guidance"], **changes.get("plugin_guidance", {})}}
    try:
        cfg = SamplerConfig.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, prefix=where, model=SamplerConfig)) from None
    try:
        spec = (registry or default_registry()).sampler(cfg.name)
    except ConfigError as err:
        if not where:
            raise
        raise ConfigError(f"config key '{where}name': {err}") from None
    knobs = spec.check_knobs(cfg.knobs(), where=where)
    return SamplingPlan(spec, cfg.steps, cfg.plan(), knobs, cfg.guidance_spec(),
                        1.0 if strength is None else strength)
