"""An integer class map, one-hot, brought to latent resolution by a small learned rescaler.

LDM's SpatialRescaler idea: area-average the one-hot map down to the latent grid (so each latent
cell sees the class proportions of its pixels), then 1x1/3x3 convolutions map the classes to
``channels`` feature maps that are concatenated to z_t. The null map is a learned per-channel
constant, saved with the weights.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ldmcore.conditioning import (BackboneSpec, ConditionEncoder, ConditionOutput, EncoderConfig,
                                  Injection, OutputSpec, Widget, WidgetKind)
from ldmcore.errors import ConfigError
from ldmcore.images import read_label_map


class SegmapConfig(EncoderConfig):
    input_key: str = Field("mask", description="the data key of the class map when a batch has "
                                               "none under the plugin's name (sampling requests)")
    num_classes: int = Field(4, ge=2, description="classes in the map, background included")
    class_names: tuple[str, ...] = Field((), description="a name per class index, for the page "
                                         "of `ldm serve` (default: class 0, class 1, ...)")
    channels: int = Field(8, ge=1, description="feature maps concatenated to the latents")
    hidden: int = Field(32, ge=1)


class SegmapEncoder(ConditionEncoder):
    name = "segmap"
    injections = (Injection.CONCAT,)
    Config = SegmapConfig

    def __init__(self, config: SegmapConfig, backbone: BackboneSpec) -> None:
        super().__init__(config, backbone)
        self.rescaler = nn.Sequential(
            nn.Conv2d(config.num_classes, config.hidden, 3, padding=1), nn.SiLU(),
            nn.Conv2d(config.hidden, config.channels, 1))
        self.null_map = nn.Parameter(torch.zeros(config.channels))

    def output_specs(self) -> dict[Injection, OutputSpec]:
        return {Injection.CONCAT: OutputSpec(Injection.CONCAT, (self.config.channels, *self.backbone.latent_size))}

    def batch_value(self, batch):
        return batch[self.name] if self.name in batch else batch[self.config.input_key]

    def forward(self, value: torch.Tensor) -> ConditionOutput:
        labels = torch.as_tensor(value).long().to(self.null_map.device)
        n = self.config.num_classes
        if labels.dim() != 3 or tuple(labels.shape[1:]) != self.backbone.image_size:
            raise ConfigError(f"segmap: the map has shape {tuple(labels.shape[1:])}, this model "
                              f"needs {self.backbone.image_size[0]}x{self.backbone.image_size[1]} "
                              f"(the image size).")
        if labels.numel() and (labels.min() < 0 or labels.max() >= n):
            raise ConfigError(f"segmap: class index {int(labels.max())} is outside 0..{n - 1} "
                              f"(conditions.segmap.num_classes={n}).")
        onehot = F.one_hot(labels, n).permute(0, 3, 1, 2).float()
        small = F.adaptive_avg_pool2d(onehot, self.backbone.latent_size)
        return {Injection.CONCAT: self.rescaler(small.to(self.null_map.dtype))}

    def null(self, batch_size: int) -> ConditionOutput:
        h, w = self.backbone.latent_size
        return {Injection.CONCAT: self.null_map.view(1, -1, 1, 1).expand(batch_size, -1, h, w)}

    def widget(self) -> Widget:
        n, names = self.config.num_classes, self.config.class_names
        return Widget(WidgetKind.LABEL_MAP, label="semantic map",
                      help="paint each region with its class, or upload a PNG of class indices",
                      choices=names[:n] + tuple(f"class {i}" for i in range(len(names), n)),
                      size=self.backbone.image_size)

    @classmethod
    def parse(cls, value: Any) -> torch.Tensor:
        """A PNG path: a single-channel map of class indices."""
        return read_label_map(str(value), "cond.segmap")
