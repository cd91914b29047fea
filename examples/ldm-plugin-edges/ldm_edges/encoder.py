"""Edge maps as a concat condition: OpenCV's Canny at train time, a PNG at sampling time.

Training derives the value from the batch's images (``batch_value``), so any dataset with
images trains it; ``ldm sample ... cond.edges=EDGES.png`` reads an edge map (white edges on
black; ``python -m ldm_edges PHOTO.png EDGES.png`` makes one). Both arrive as (1, H, W) maps in
{0, 1} at image resolution. A small trainable stem (pixel-unshuffle by the autoencoder's factor
f, then two convolutions, as ControlNet's hint encoder does) brings the map to latent
resolution; the null is a learned map, trained by condition dropout and saved with the weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from ldmcore.conditioning import (BackboneSpec, ConditionEncoder, ConditionOutput, EncoderConfig,
                                  Injection, OutputSpec, Widget, WidgetKind)
from ldmcore.errors import PluginError


class EdgesConfig(EncoderConfig):
    low_threshold: int = Field(50, ge=0, le=255, description="Canny's lower hysteresis threshold")
    high_threshold: int = Field(150, ge=0, le=255, description="Canny's upper hysteresis threshold")
    channels: int = Field(4, ge=1, description="channels of the map at latent resolution")
    hidden: int = Field(32, ge=1, description="width of the convolutional stem")

    @model_validator(mode="after")
    def _ordered(self) -> EdgesConfig:
        if self.low_threshold > self.high_threshold:
            raise ValueError(f"low_threshold={self.low_threshold} is above high_threshold="
                             f"{self.high_threshold}; Canny needs low <= high")
        return self


def canny(images: torch.Tensor, low: int = 50, high: int = 150) -> torch.Tensor:
    """(B, C, H, W) images in [-1, 1] (C = 1 or 3) -> (B, 1, H, W) edge maps in {0, 1}."""
    import cv2

    pixels = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    maps = []
    for image in pixels.permute(0, 2, 3, 1).numpy():
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.shape[-1] == 3 else image[..., 0]
        maps.append(cv2.Canny(np.ascontiguousarray(grey), low, high) > 0)
    return torch.from_numpy(np.stack(maps)).float()[:, None]


def load_edge_map(path: str | Path) -> torch.Tensor:
    """A PNG (white edges on black, any size) -> (1, H, W) float map in {0, 1}."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path).expanduser()
    if not path.is_file():
        raise PluginError(f"cond.edges={str(path)!r} is not a file; give an edge map PNG (white "
                          f"edges on black). `python -m ldm_edges PHOTO.png EDGES.png` makes one "
                          f"from any picture.")
    try:
        with Image.open(path) as img:
            grey = np.asarray(img.convert("L"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise PluginError(f"cond.edges={str(path)!r} is not a readable image ({exc}); give an "
                          f"edge map PNG (white edges on black).") from None
    return torch.from_numpy(grey >= 128).float()[None]


class EdgesEncoder(ConditionEncoder):
    name = "edges"
    injections = (Injection.CONCAT,)
    Config = EdgesConfig

    def __init__(self, config: EdgesConfig, backbone: BackboneSpec) -> None:
        super().__init__(config, backbone)
        (h, w), (ih, iw) = backbone.latent_size, backbone.image_size
        if ih % h or iw % w or ih // h != iw // w:
            raise PluginError(f"plugin 'edges' needs the image size {backbone.image_size} to be "
                              f"a whole multiple of the latent size {backbone.latent_size}.")
        f = ih // h
        self.stem = nn.Sequential(
            nn.PixelUnshuffle(f),
            nn.Conv2d(f * f, config.hidden, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(config.hidden, config.channels, 3, padding=1),
        )
        self.null_map = nn.Parameter(torch.zeros(config.channels, h, w))

    def output_specs(self) -> dict[Injection, OutputSpec]:
        return {Injection.CONCAT: OutputSpec(Injection.CONCAT,
                                             (self.config.channels, *self.backbone.latent_size))}

    def batch_value(self, batch: dict[str, Any]) -> torch.Tensor:
        if self.name in batch:  # given explicitly: sampling (cond.edges=EDGES.png)
            return batch[self.name]
        return canny(batch["image"], self.config.low_threshold, self.config.high_threshold)

    def _fit(self, edges: torch.Tensor) -> torch.Tensor:
        """Maps of another size are area-resampled to the image size the stem expects."""
        if tuple(edges.shape[-2:]) != self.backbone.image_size:
            edges = F.interpolate(edges, size=self.backbone.image_size, mode="area")
        return edges

    def forward(self, value: torch.Tensor) -> ConditionOutput:
        weight = self.stem[1].weight
        edges = self._fit(torch.as_tensor(value).to(weight.device, weight.dtype))
        return {Injection.CONCAT: self.stem(edges)}

    def null(self, batch_size: int) -> ConditionOutput:
        return {Injection.CONCAT: self.null_map.expand(batch_size, -1, -1, -1)}

    def widget(self) -> Widget:
        return Widget(WidgetKind.IMAGE, label="edge map",
                      help="a PNG of white edges on black (python -m ldm_edges PHOTO.png EDGES.png)",
                      size=self.backbone.image_size)

    @classmethod
    def parse(cls, value: Any) -> torch.Tensor:
        """A PNG path: the edge map (white = edge)."""
        return load_edge_map(str(value).strip())

    def collate(self, values: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([self._fit(v[None].float()) for v in values])
