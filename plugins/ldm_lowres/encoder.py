"""A low-resolution image, resized to the latent grid and concatenated; its noise level as a vector.

As Stable Diffusion's x4 upscaler: at train time the low-resolution image gets Gaussian noise of
a random level (noise augmentation, so the model does not copy compression artefacts), and the
level is given to the UNet as a vector condition (sinusoidal embedding). At sampling time the
level is ``sample_noise_level``. In a batch the value is the low-resolution image; at train time
it is derived from ``batch["image"]`` by area downsampling by ``factor``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from ldmcore.conditioning import (BackboneSpec, ConditionEncoder, ConditionOutput, EncoderConfig,
                                  Injection, OutputSpec)
from ldmcore.errors import ConfigError
from ldmcore.images import read_image
from ldmcore.nn.embeddings import timestep_embedding


class LowresConfig(EncoderConfig):
    drop_prob: float = Field(0.0, ge=0.0, le=1.0)
    factor: int = Field(4, ge=1, description="downsampling factor of the low-resolution input")
    max_noise_level: float = Field(0.2, ge=0.0, description="train-time augmentation std, at most")
    sample_noise_level: float = Field(0.0, ge=0.0)
    level_dim: int = Field(64, ge=2)


class LowresEncoder(ConditionEncoder):
    name = "lowres"
    injections = (Injection.CONCAT, Injection.VECTOR)
    Config = LowresConfig
    trainable = False  # no parameters: resizing and a fixed level embedding

    def __init__(self, config: LowresConfig, backbone: BackboneSpec) -> None:
        super().__init__(config, backbone)
        self.register_buffer("_device_probe", torch.zeros(()), persistent=False)

    def output_specs(self) -> dict[Injection, OutputSpec]:
        c, (h, w) = self.backbone.image_channels, self.backbone.latent_size
        return {Injection.CONCAT: OutputSpec(Injection.CONCAT, (c, h, w)),
                Injection.VECTOR: OutputSpec(Injection.VECTOR, (self.config.level_dim,))}

    def batch_value(self, batch):
        if "lowres" in batch:
            return batch["lowres"]
        f = self.config.factor
        return F.avg_pool2d(batch["image"], f) if f > 1 else batch["image"]

    def forward(self, value: torch.Tensor) -> ConditionOutput:
        low = torch.as_tensor(value).float().to(self._device_probe.device)
        if low.dim() == 4 and low.shape[1] == 3 and self.backbone.image_channels == 1:
            low = low.mean(1, keepdim=True)
        if low.dim() != 4 or low.shape[1] != self.backbone.image_channels:
            raise ConfigError(f"lowres: expected images with {self.backbone.image_channels} "
                              f"channels, got shape {tuple(low.shape)}.")
        b = low.shape[0]
        if self.training and self.config.max_noise_level > 0:
            level = self.random().rand(b).to(low.device) * self.config.max_noise_level
        else:
            level = torch.full((b,), self.config.sample_noise_level, device=low.device)
        low = low + level.view(-1, 1, 1, 1) * self.random().randn(tuple(low.shape)).to(low)
        grid = F.interpolate(low, size=self.backbone.latent_size, mode="bilinear", align_corners=False,
                             antialias=True)
        return {Injection.CONCAT: grid, Injection.VECTOR: self._level(level)}

    def _level(self, level: torch.Tensor) -> torch.Tensor:
        return timestep_embedding(level * 1000.0, self.config.level_dim)

    def null(self, batch_size: int) -> ConditionOutput:
        c, (h, w) = self.backbone.image_channels, self.backbone.latent_size
        device = self._device_probe.device
        return {Injection.CONCAT: torch.zeros(batch_size, c, h, w, device=device),
                Injection.VECTOR: self._level(torch.full((batch_size,), -1.0, device=device))}

    @classmethod
    def parse(cls, text: str) -> torch.Tensor:
        """A PNG/JPEG path; read as RGB (averaged to grey for one-channel models)."""
        return read_image(text, 3, "cond.lowres")
