"""ControlNet (Zhang, Rao & Agrawala 2023, "Adding Conditional Control to Text-to-Image Diffusion
Models"): a trainable copy of the backbone's encoder half steers a frozen backbone through its
skip connections.

* The copy - time embedding, vector input, input blocks, middle block - is made from the
  backbone's UNet (``init_from_backbone``: when the model is built, and again from the
  pretrained weights when the plugin is attached with ``model.init_from``). It reads what the
  UNet reads (z_t joined with concat conditions, the timestep, the context, the vector).
* A hint encoder (convolutions, three of them stride 2 for f = 8, the last one zero) brings the
  hint map (``hints.py``) to the latent grid; it is added to the copy's features after its input
  convolution.
* A zero-initialised 1x1 convolution on every skip output and on the middle block's output gives
  one map per ``skip`` tap; they are added to the backbone's skip connections and middle block
  (``ldmcore.nn.taps``). At initialisation every map is exactly zero, so the backbone's output is
  unchanged bit for bit.

Parameter names follow the original ControlNet's ``control_model`` (``input_hint_block``,
``zero_convs.N.0``, ``middle_block_out.0``, and the copy under the UNet's own names), so its
single files map by prefix. The null is "no residual" (weight 0): the backbone alone; the
conditioning scale (diffusers' ``controlnet_conditioning_scale``) is ``scale``.

``guess_mode`` and ``control_guidance_start`` / ``control_guidance_end`` are diffusers' options
of the same names. Under classifier-free guidance the ControlNet feeds the conditional branch
only (its null is the backbone alone), as in diffusers' guess mode, which adds the per-tap
scales, ``logspace(-1, 0)`` from the shallowest skip to the middle block; ``guided=false`` gives
the hint to every branch instead, as diffusers' pipelines do outside guess mode.
"""

from __future__ import annotations

import copy

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from ldm_controlnet.hints import HintConfig, HintInput, downsampling, hint_channels
from ldmcore.conditioning import (BackboneSpec, ConditionEncoder, ConditionOutput, Injection,
                                  OutputSpec, Residual, UNetInput)
from ldmcore.errors import ConfigError, PluginError
from ldmcore.nn.embeddings import timestep_embedding

HINT_WIDTHS = (16, 32, 96, 256)  # ControlNet's hint encoder for f = 8
COPIED = ("time_embed", "label_emb", "input_blocks", "middle_block")  # the backbone's encoder half


class ControlNetConfig(HintConfig):
    drop_prob: float = Field(0.0, ge=0.0, le=1.0, description="train-time probability of no "
                             "residual (the backbone alone learns nothing from it)")
    scale: float = Field(1.0, description="multiplies every residual map (conditioning scale)")
    hint_widths: tuple[int, ...] | None = Field(None, description="widths of the hint encoder's "
                                                "convolutions, one more than stride-2 steps; "
                                                "default (16, 32, 96, 256) cut to log2(f) + 1")

    guess_mode: bool = Field(False, description="diffusers' guess mode: each skip map scaled by "
                             "logspace(-1, 0) over the taps, the shallowest by 0.1, the middle "
                             "by 1 (the ControlNet recognises the hint's content with less help "
                             "from the prompt)")
    control_guidance_start: float = Field(0.0, ge=0.0, le=1.0, description="the fraction of "
                                          "sampling steps done before the ControlNet acts")
    control_guidance_end: float = Field(1.0, ge=0.0, le=1.0, description="the fraction of "
                                        "sampling steps done when it stops acting")

    @model_validator(mode="after")
    def _window(self) -> ControlNetConfig:
        if self.control_guidance_start >= self.control_guidance_end:
            raise ValueError(f"control_guidance_start={self.control_guidance_start} must be below "
                             f"control_guidance_end={self.control_guidance_end}: the ControlNet "
                             f"acts from the first fraction of the sampling steps to the second, "
                             f"e.g. 0.0 and 0.6 for the first 60%")
        return self

    @field_validator("hint_widths")
    @classmethod
    def _positive(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if v is not None and (not v or min(v) < 1):
            raise ValueError("hint_widths must be positive channel counts, e.g. [16, 32, 96, 256]")
        return v


def hint_encoder(channels: int, widths: tuple[int, ...], out: int) -> nn.Sequential:
    """conv-SiLU, then (conv, SiLU, stride-2 conv, SiLU) per step, then a zero conv to ``out``."""
    layers: list[nn.Module] = [nn.Conv2d(channels, widths[0], 3, padding=1), nn.SiLU()]
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Conv2d(a, a, 3, padding=1), nn.SiLU(),
                   nn.Conv2d(a, b, 3, padding=1, stride=2), nn.SiLU()]
    layers.append(zero(nn.Conv2d(widths[-1], out, 3, padding=1)))
    return nn.Sequential(*layers)


def zero(conv: nn.Conv2d) -> nn.Conv2d:
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class ControlNetEncoder(HintInput, ConditionEncoder):
    name = "controlnet"
    injections = (Injection.RESIDUAL,)
    Config = ControlNetConfig

    def __init__(self, config: ControlNetConfig, backbone: BackboneSpec) -> None:
        super().__init__(config, backbone)
        self.taps = backbone.taps("skip")
        if not self.taps:
            raise PluginError(f"plugin {self.name!r} feeds the backbone's skip connections, and "
                              f"this backbone declares no residual taps.")
        steps = downsampling(backbone).bit_length() - 1
        widths = config.hint_widths or HINT_WIDTHS[:steps + 1]
        if len(widths) != steps + 1:
            raise ConfigError(f"conditions.{self.name}.hint_widths={list(widths)} gives "
                              f"{len(widths) - 1} stride-2 steps; the first stage downsamples by "
                              f"{2 ** steps}, so give {steps + 1} widths (e.g. "
                              f"{[16 * 2 ** i for i in range(steps + 1)]}).")
        first, *skips, middle = self.taps
        self.input_hint_block = hint_encoder(hint_channels(config, backbone), widths, first.channels)
        self.zero_convs = nn.ModuleList(nn.Sequential(zero(nn.Conv2d(t.channels, t.channels, 1)))
                                        for t in (first, *skips))
        self.middle_block_out = nn.Sequential(zero(nn.Conv2d(middle.channels, middle.channels, 1)))
        self.model_channels = 0  # set with the copy (init_from_backbone)

    # -- the copy of the encoder half ----------------------------------------------------------
    def init_from_backbone(self, unet: nn.Module) -> None:
        """Make the copy of ``unet``'s encoder half, or copy ``unet``'s weights into it."""
        if not self.model_channels:
            for part in COPIED:
                if hasattr(unet, part):
                    setattr(self, part, copy.deepcopy(getattr(unet, part)))
            self.model_channels = unet.shape.model_channels
            self.vector_input = unet.shape.vector_dim > 0
            return
        with torch.no_grad():
            for part in COPIED:
                if hasattr(unet, part):
                    getattr(self, part).load_state_dict(getattr(unet, part).state_dict())

    def control(self, features: dict[str, torch.Tensor], unet_input: UNetInput) -> dict[str, torch.Tensor]:
        """The copy on the UNet's input, the embedded hint added after its input convolution:
        one map per skip tap (zero convolutions of each block's output) and the middle map."""
        if not self.model_channels:
            raise PluginError(f"plugin {self.name!r} has no copy of the backbone's encoder half "
                              f"yet; it is made when the model is built (LatentDiffusion calls "
                              f"init_from_backbone).")
        weight = self.input_blocks[0][0].weight
        x = unet_input.x.to(weight.dtype)
        context = None if unet_input.context is None else unet_input.context.to(weight.dtype)
        emb = self.time_embed(timestep_embedding(unet_input.t, self.model_channels).to(x.dtype))
        if self.vector_input:
            emb = emb + self.label_emb(unet_input.vector.to(emb.dtype))
        maps = {}
        h = x
        for i, block in enumerate(self.input_blocks):
            h = block(h, emb, context, unet_input.context_mask)
            if i == 0:
                h = h + features["hint"].to(h.dtype)
            maps[f"skip.{i}"] = self.zero_convs[i](h)
        h = self.middle_block(h, emb, context, unet_input.context_mask)
        maps[self.taps[-1].name] = self.middle_block_out(h)
        if self.config.guess_mode:
            scales = torch.logspace(-1, 0, len(maps), device=h.device)
            maps = {tap: m * scales[i] for i, (tap, m) in enumerate(maps.items())}
        return maps

    # -- the contract ----------------------------------------------------------------------------
    def output_specs(self) -> dict[Injection, OutputSpec]:
        return {Injection.RESIDUAL: OutputSpec(Injection.RESIDUAL, (), taps=self.taps)}

    def forward(self, value: torch.Tensor) -> ConditionOutput:
        conv = self.input_hint_block[0].weight
        hint = self.input_hint_block(self.hint(value, conv))
        weight = torch.full((hint.shape[0],), self.config.scale, device=conv.device)
        return {Injection.RESIDUAL: Residual({"hint": hint}, weight, self.control, self.steps)}

    def null(self, batch_size: int) -> ConditionOutput:
        out = self.input_hint_block[-1]
        h, w = self.backbone.latent_size
        hint = torch.zeros(batch_size, out.out_channels, h, w, device=out.weight.device,
                           dtype=out.weight.dtype)
        weight = torch.zeros(batch_size, device=out.weight.device)
        return {Injection.RESIDUAL: Residual({"hint": hint}, weight, self.control, self.steps)}

    @property
    def steps(self) -> tuple[float, float]:
        """The fraction of sampling steps it acts in (``ldmcore.diffusion.step_windows``)."""
        return (self.config.control_guidance_start, self.config.control_guidance_end)
