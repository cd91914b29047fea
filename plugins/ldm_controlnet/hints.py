"""Image-like conditions as a hint: the picture a ControlNet or a T2I-Adapter reads.

``condition`` picks what the hint is, and the value is read as the plugin of that condition
reads it: ``segmap`` a map of class indices (batch key ``mask``; ``cond.NAME=MAP.png``),
``edges`` Canny edges of the image (derived from ``image`` at train time; ``cond.NAME=EDGES.png``,
white edges on black, at sampling time), ``lowres`` the image area-downsampled by ``factor``
(``cond.NAME=LOW.png``), ``image`` any picture given as it is (a depth map, a pose drawing, a
photo; batch key ``image``). Whatever the condition, the hint is a (B, C, H, W) map at the image
size with values in [0, 1], as ControlNet and T2I-Adapter take it: a one-hot class map, an edge
map, the bicubic upsampling of the low-resolution image, or the image.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from ldmcore.conditioning import BackboneSpec, EncoderConfig, Widget, WidgetKind
from ldmcore.errors import ConfigError
from ldmcore.images import read_image, read_label_map

Condition = Literal["segmap", "edges", "lowres", "image"]
DEFAULT_KEY = {"segmap": "mask", "edges": "image", "lowres": "image", "image": "image"}


class HintConfig(EncoderConfig):
    """What the hint is: the part of a residual plugin's config that reads its value (and
    whether guidance contrasts it with the backbone alone)."""

    condition: Condition = Field("segmap", description="what the hint is: a class map, edges of "
                                 "the image, the image at low resolution, or an image as given")
    input_key: str | None = Field(None, description="the data key the value is read or derived "
                                  "from (default: mask for segmap, image otherwise)")
    num_classes: int = Field(4, ge=2, description="segmap: classes in the map, background included")
    factor: int = Field(4, ge=1, description="lowres: downsampling factor of the low-res image")
    low_threshold: int = Field(100, ge=0, le=255, description="edges: Canny's lower threshold")
    high_threshold: int = Field(200, ge=0, le=255, description="edges: Canny's upper threshold")
    guided: bool = Field(True, description="false: every guidance branch gets the hint, the "
                         "unconditional one included, as diffusers' ControlNet pipelines (outside "
                         "guess mode) and T2I-Adapter pipelines do; true: the conditional branch "
                         "only, the unconditional one is the backbone alone")


def hint_channels(config: HintConfig, backbone: BackboneSpec) -> int:
    """Channels of the hint map for ``config.condition``."""
    return {"segmap": config.num_classes, "edges": 1}.get(config.condition, backbone.image_channels)


def downsampling(backbone: BackboneSpec) -> int:
    """The first stage's factor f (image size / latent size), a power of two."""
    (h, w), (ih, iw) = backbone.latent_size, backbone.image_size
    f = ih // h
    if ih % h or iw % w or iw // w != f or f & (f - 1):
        raise ConfigError(f"a hint encoder needs the image size {backbone.image_size} to be the "
                          f"latent size {backbone.latent_size} times a power of two.")
    return f


def canny(images: torch.Tensor, low: int, high: int) -> torch.Tensor:
    """(B, C, H, W) images in [-1, 1] -> (B, 1, H, W) Canny edge maps in {0, 1} (OpenCV's Canny
    on the luma, ITU-R BT.601 weights, of colour images)."""
    import cv2

    images = images.detach().float().cpu().clamp(-1, 1)
    if images.shape[1] == 3:
        images = torch.einsum("bchw,c->bhw", images, torch.tensor([0.299, 0.587, 0.114]))[:, None]
    grey = ((images[:, 0] + 1) * 127.5).round().to(torch.uint8).numpy()
    edges = np.stack([cv2.Canny(np.ascontiguousarray(g), low, high) for g in grey])
    return torch.from_numpy(edges > 0).float()[:, None]


class HintInput:
    """Jobs 1 and 2 of a plugin whose value is an image-like condition (``HintConfig``): the
    value in a batch, on the command line, and as the hint map its network reads."""

    name: str
    config: HintConfig
    backbone: BackboneSpec

    @property
    def guided(self) -> bool:
        """``ConditionEncoder.guided``: the config's ``guided``."""
        return self.config.guided

    @property
    def input_key(self) -> str:
        return self.config.input_key or DEFAULT_KEY[self.config.condition]

    def batch_value(self, batch: dict[str, Any]) -> torch.Tensor:
        if self.name in batch:  # sampling passes cond.<name>=... under the plugin's name
            return batch[self.name]
        value = batch[self.input_key]
        c = self.config
        if c.condition == "edges":
            return canny(value, c.low_threshold, c.high_threshold)
        if c.condition == "lowres":
            return F.avg_pool2d(value.float(), c.factor)
        return value

    def widget(self) -> Widget:
        """The page's input for the hint: a painted or uploaded class map, or an uploaded image."""
        c, (h, w) = self.config, self.backbone.image_size
        if c.condition == "segmap":
            return Widget(WidgetKind.LABEL_MAP, label=f"{self.name}: class map",
                          help="paint each region with its class, or upload a PNG of class indices",
                          choices=tuple(f"class {i}" for i in range(c.num_classes)), size=(h, w))
        if c.condition == "lowres":
            return Widget(WidgetKind.IMAGE, label=f"{self.name}: low-resolution image",
                          help=f"a PNG of {w // c.factor}x{h // c.factor} pixels",
                          size=(h // c.factor, w // c.factor))
        shown = "a PNG of white edges on black" if c.condition == "edges" else "the hint image"
        return Widget(WidgetKind.IMAGE, label=f"{self.name}: {c.condition}", help=shown, size=(h, w))

    def parse(self, value: Any) -> torch.Tensor:
        """A PNG path: a class-index map (segmap), an edge map (white edges on black), a
        low-resolution image (lowres) or the image."""
        c, what = self.config, f"cond.{self.name}"
        if c.condition == "segmap":
            return read_label_map(str(value), what)
        if c.condition == "edges":
            return (read_image(str(value), 1, what) > 0).float()
        return read_image(str(value), self.backbone.image_channels, what)

    def hint(self, value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """A batch of values -> (B, C, *image_size) hint maps in [0, 1], dtype and device of
        ``like`` (a weight of the network that reads them)."""
        c, size = self.config, self.backbone.image_size
        value = torch.as_tensor(value).to(like.device)
        if c.condition == "segmap":
            labels = value.long()
            if labels.dim() != 3 or tuple(labels.shape[1:]) != size:
                raise ConfigError(f"{self.name}: the class map has shape {tuple(labels.shape[1:])}; "
                                  f"this model needs {size[0]}x{size[1]} (the image size).")
            if labels.numel() and (labels.min() < 0 or labels.max() >= c.num_classes):
                raise ConfigError(f"{self.name}: class index {int(labels.max())} is outside "
                                  f"0..{c.num_classes - 1} (conditions.{self.name}.num_classes="
                                  f"{c.num_classes}).")
            return F.one_hot(labels, c.num_classes).permute(0, 3, 1, 2).to(like.dtype)
        value = value.float()
        if c.condition != "edges":
            value = (value + 1) / 2  # images in [-1, 1] -> [0, 1]
        if tuple(value.shape[-2:]) != size:
            value = F.interpolate(value, size=size, mode="bicubic", align_corners=False).clamp(0, 1)
        return value.to(like.dtype)
