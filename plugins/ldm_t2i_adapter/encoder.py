"""T2I-Adapter (Mou et al. 2023, "T2I-Adapter: Learning Adapters to Dig out More Controllable
Ability for Text-to-Image Diffusion Models"): a small network whose multi-scale features are
added to a frozen backbone's encoder features, one map per UNet level.

The hint map (``ldm_controlnet.hints``) is pixel-unshuffled by the first stage's factor f onto
the latent grid, convolved, and run through one block per level: average-pool 2x (from the
second level on), a 1x1 convolution where the width changes, and residual blocks (3x3 conv, ReLU,
1x1 conv, plus the input). The widths are the backbone's encoder widths (``encoder`` taps), so
each level's output fits the tap it feeds. That network is diffusers' ``FullAdapter``, under its
names (``adapter.conv_in``, ``adapter.body.N``).

Zero effect at initialisation: each level's features are multiplied by a learned per-channel
``gain`` that starts at 0 (a zero-initialised last layer per scale; ReZero, Bachlechner et al.
2021). The map is then exactly 0, while the gains still receive gradients, and the adapter
behind them does once they move. An adapter imported from diffusers has gains of 1. Its maps
depend on the hint only, so they are computed once per sample, not once per step. The null is
"no residual"; ``scale`` is diffusers' ``adapter_conditioning_scale``.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from ldm_controlnet.hints import HintConfig, HintInput, downsampling, hint_channels
from ldmcore.conditioning import (BackboneSpec, ConditionEncoder, ConditionOutput, Injection,
                                  OutputSpec, Residual)
from ldmcore.errors import PluginError


class T2IAdapterConfig(HintConfig):
    drop_prob: float = Field(0.0, ge=0.0, le=1.0, description="train-time probability of no "
                             "residual (the backbone alone learns nothing from it)")
    scale: float = Field(1.0, description="multiplies every residual map (conditioning scale)")
    num_res_blocks: int = Field(2, ge=1, description="residual blocks per level")


class AdapterResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.ReLU()
        self.block2 = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block2(self.act(self.block1(x))) + x


class AdapterLevel(nn.Module):
    """One level: optional 2x average pooling, a width change, residual blocks."""

    def __init__(self, channels_in: int, channels: int, res_blocks: int, down: bool) -> None:
        super().__init__()
        self.downsample = nn.AvgPool2d(2, 2, ceil_mode=True) if down else None
        self.in_conv = nn.Conv2d(channels_in, channels, 1) if channels_in != channels else None
        self.resnets = nn.Sequential(*(AdapterResBlock(channels) for _ in range(res_blocks)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            x = self.downsample(x)
        if self.in_conv is not None:
            x = self.in_conv(x)
        return self.resnets(x)


class Adapter(nn.Module):
    """Hint map -> one feature map per level, widths ``widths``."""

    def __init__(self, channels: int, widths: list[int], res_blocks: int, factor: int) -> None:
        super().__init__()
        self.unshuffle = nn.PixelUnshuffle(factor)
        self.conv_in = nn.Conv2d(channels * factor ** 2, widths[0], 3, padding=1)
        self.body = nn.ModuleList(AdapterLevel(widths[max(i - 1, 0)], w, res_blocks, down=i > 0)
                                  for i, w in enumerate(widths))

    def forward(self, hint: torch.Tensor) -> list[torch.Tensor]:
        x = self.conv_in(self.unshuffle(hint))
        features = []
        for level in self.body:
            x = level(x)
            features.append(x)
        return features


class T2IAdapterEncoder(HintInput, ConditionEncoder):
    name = "t2i_adapter"
    injections = (Injection.RESIDUAL,)
    Config = T2IAdapterConfig

    def __init__(self, config: T2IAdapterConfig, backbone: BackboneSpec) -> None:
        super().__init__(config, backbone)
        self.taps = backbone.taps("encoder")
        if not self.taps:
            raise PluginError(f"plugin {self.name!r} feeds the encoder's levels, and this "
                              f"backbone declares no residual taps.")
        widths = [tap.channels for tap in self.taps]
        self.adapter = Adapter(hint_channels(config, backbone), widths, config.num_res_blocks,
                               downsampling(backbone))
        self.gain = nn.ParameterList(nn.Parameter(torch.zeros(w)) for w in widths)

    def output_specs(self) -> dict[Injection, OutputSpec]:
        return {Injection.RESIDUAL: OutputSpec(Injection.RESIDUAL, (), taps=self.taps)}

    def forward(self, value: torch.Tensor) -> ConditionOutput:
        hint = self.hint(value, self.adapter.conv_in.weight)
        features = self.adapter(hint)
        maps = {tap.name: f * g.view(1, -1, 1, 1) for tap, f, g in zip(self.taps, features, self.gain)}
        weight = torch.full((hint.shape[0],), self.config.scale, device=hint.device)
        return {Injection.RESIDUAL: Residual(maps, weight)}

    def null(self, batch_size: int) -> ConditionOutput:
        like = self.adapter.conv_in.weight
        maps = {tap.name: torch.zeros(batch_size, *tap.shape, device=like.device, dtype=like.dtype)
                for tap in self.taps}
        return {Injection.RESIDUAL: Residual(maps, torch.zeros(batch_size, device=like.device))}
