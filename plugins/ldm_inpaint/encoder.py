"""Inpainting: the masked image encoded by the frozen autoencoder, plus the mask (SD's 4+1 layout).

The value is a pair (image, mask): image (C, H, W) in [-1, 1], mask (1, H, W) with 1 = hole
(to generate) and 0 = known. The condition is ``[E(image * (1 - mask)) | mask at latent size]``
concatenated to z_t, as Stable Diffusion's inpainting UNet (4 latent + 1 mask channels). After
decoding, the known pixels are pasted back, so the known region is exactly unchanged. At train
time a random hole is cut from ``batch["image"]``: a rectangle, or (a ``free_form`` share of the
time) a free-form brush stroke, the thick random polyline of DeepFill v2 (Yu et al. 2019). The
null is "everything is a hole": an all-ones mask and the encoding of an all-zero (grey) image.
With ``centre_on`` naming a data key of an (H, W) map (the shapes' semantic ``mask``), each
training and evaluation hole is centred on a random pixel where that map is nonzero, so every
hole hides part of an object instead of often only background.

``base: blur_fill`` gives the model a base image (``ConditionEncoder.base``): the image with its
hole filled smoothly from the border (``ldmcore.hole_fill.blur_fill``, the harmonic fill), encoded
by the frozen first stage. The model then diffuses the scaled residual from it (set
``model.diffusion.residual_scale``), which is zero outside the hole, and learns only the texture
and structure the smooth fill misses. ``shows: filled`` hands the network that fill in place of
the masked image (the known pixels are the same; the hole holds the base instead of zeros), so it
need not work out the fill it diffuses around. ``known_weight`` below 1 weighs the known region's
elements less in the training loss (``loss_weight``), so that the loss is mostly about the hole.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from ldmcore.conditioning import (BackboneSpec, ConditionEncoder, ConditionOutput, EncoderConfig,
                                  Injection, OutputSpec, Widget, WidgetKind)
from ldmcore.errors import ConfigError, PluginError
from ldmcore.hole_fill import blur_fill
from ldmcore.images import read_image
from ldmcore.randomness import BatchRandom


class InpaintConfig(EncoderConfig):
    input_key: str = Field("image", description="the data key of the image holes are cut into "
                                                "(training)")
    min_hole: float = Field(0.25, gt=0.0, le=1.0, description="train holes: smallest side, of the image")
    max_hole: float = Field(0.6, gt=0.0, le=1.0)
    free_form: float = Field(0.0, ge=0.0, le=1.0, description="share of train holes that are "
                                                               "brush strokes instead of rectangles")
    stroke_segments: int = Field(5, ge=1, description="free-form: line segments per stroke")
    stroke_width: tuple[float, float] = Field((0.08, 0.2), description="free-form: brush width range, "
                                                                        "of the image's shorter side")
    centre_on: str | None = Field(None, description="data key of an (H, W) map: each hole is "
                                  "centred on a random pixel where it is nonzero (shapes: mask, so "
                                  "holes hide part of a shape); none: anywhere in the image")
    base: Literal["none", "blur_fill"] = Field("none", description="blur_fill: the model diffuses the "
                                               "residual from the hole filled smoothly from its border")
    shows: Literal["masked", "filled"] = Field("masked", description="what the network sees of the "
                                               "image: masked (the hole zeroed, as SD) or filled (the "
                                               "hole blur-filled: the base it diffuses around)")
    known_weight: float = Field(1.0, ge=0.0, le=1.0, description="weight of the known region's "
                                "elements in the training loss, the hole's being 1 (1: uniform)")

    @model_validator(mode="after")
    def _ordered_ranges(self) -> InpaintConfig:
        lo, hi = self.stroke_width
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"stroke_width={list(self.stroke_width)}: write [low, high] with "
                             f"0 < low <= high <= 1 (shares of the image's shorter side).")
        return self


class InpaintEncoder(ConditionEncoder):
    name = "inpaint"
    injections = (Injection.CONCAT,)
    Config = InpaintConfig
    trainable = False  # nothing to learn: the frozen first stage does the encoding

    def __init__(self, config: InpaintConfig, backbone: BackboneSpec) -> None:
        super().__init__(config, backbone)
        if backbone.encode is None:
            raise PluginError("inpaint needs the backbone's frozen autoencoder (BackboneSpec.encode); "
                              "build it with ldmcore.build.build_model.")
        self.register_buffer("_device_probe", torch.zeros(()), persistent=False)

    def output_specs(self) -> dict[Injection, OutputSpec]:
        return {Injection.CONCAT: OutputSpec(Injection.CONCAT,
                                             (self.backbone.latent_channels + 1, *self.backbone.latent_size))}

    def batch_value(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.name in batch:
            return batch[self.name]
        image = batch[self.config.input_key]
        where = None if self.config.centre_on is None else self._centre_map(batch, image)
        return image, random_holes(image.shape[0], image.shape[-2:], self.config, self.random(),
                                   where).to(image.device)

    def _centre_map(self, batch: dict[str, Any], image: torch.Tensor) -> torch.Tensor:
        key = self.config.centre_on
        if key not in batch:
            raise ConfigError(f"inpaint: centre_on={key!r} names no key of the data items (they "
                              f"hold {', '.join(sorted(batch))}); name a per-pixel map such as the "
                              f"shapes' 'mask', or set conditions.inpaint.centre_on=null.")
        where = torch.as_tensor(batch[key])
        if tuple(where.shape) != (image.shape[0], *image.shape[-2:]):
            raise ConfigError(f"inpaint: centre_on={key!r} is of shape {tuple(where.shape)}; it must "
                              f"be one (H, W) map per image, {(image.shape[0], *image.shape[-2:])}.")
        return where.cpu() != 0

    def forward(self, value: tuple[torch.Tensor, torch.Tensor]) -> ConditionOutput:
        image, mask = self._checked(value)
        shown = blur_fill(image, mask) if self.config.shows == "filled" else image * (1 - mask)
        latents = self.backbone.encode(shown)
        small = F.adaptive_max_pool2d(mask, self.backbone.latent_size)  # a cell with any hole is a hole
        return {Injection.CONCAT: torch.cat([latents, small.to(latents)], dim=1)}

    def null(self, batch_size: int) -> ConditionOutput:
        c, (h, w) = self.backbone.image_channels, self.backbone.image_size
        zeros = torch.zeros(batch_size, c, h, w, device=self._device_probe.device)
        ones = torch.ones(batch_size, 1, *self.backbone.latent_size, device=zeros.device)
        return {Injection.CONCAT: torch.cat([self.backbone.encode(zeros), ones.to(zeros)], dim=1)}

    @property
    def provides_base(self) -> bool:
        return self.config.base != "none"

    def base(self, value: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The image with its hole blur-filled from the border, in the first stage's latents."""
        return self.backbone.encode(blur_fill(*self._checked(value)))

    def loss_weight(self, value: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor | None:
        """1 on the hole (at latent size: a cell with any hole is a hole), ``known_weight``
        elsewhere; None when that is 1. With ``base: blur_fill`` the target outside the hole is
        the noise alone (the residual is zero there), which the network learns early; weighing
        it less spends the loss on the hole."""
        if self.config.known_weight == 1.0:
            return None
        _, mask = self._checked(value)
        hole = F.adaptive_max_pool2d(mask, self.backbone.latent_size)
        return self.config.known_weight + (1.0 - self.config.known_weight) * hole

    def finish(self, images: torch.Tensor, value: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Paste the known pixels back: outside the hole the result is the input, exactly."""
        image, mask = self._checked(value)
        return torch.where(mask.to(images.device) > 0.5, images.float(), image.to(images.device))

    def _checked(self, value: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = value
        image = torch.as_tensor(image).float().to(self._device_probe.device)
        mask = (torch.as_tensor(mask).float().to(image.device) > 0.5).float()
        if image.dim() == 4 and image.shape[1] == 3 and self.backbone.image_channels == 1:
            image = image.mean(1, keepdim=True)
        size = self.backbone.image_size
        if tuple(image.shape[-2:]) != size or tuple(mask.shape[-2:]) != size:
            raise ConfigError(f"inpaint: image {tuple(image.shape[-2:])} and mask "
                              f"{tuple(mask.shape[-2:])} must both be {size[0]}x{size[1]} "
                              f"(this model's image size).")
        return image, mask.reshape(image.shape[0], 1, *size)

    def collate(self, values: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.stack([v[0] for v in values]), torch.stack([v[1] for v in values])

    def widget(self) -> Widget:
        return Widget(WidgetKind.IMAGE_MASK, label="image and hole",
                      help="upload an image, then paint the hole to fill in",
                      size=self.backbone.image_size, value="{image},{mask}")

    @classmethod
    def parse(cls, value: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``IMAGE.png,MASK.png``: the mask's white pixels are the hole."""
        parts = [p for p in str(value).split(",") if p.strip()]
        if len(parts) != 2:
            raise ConfigError(f"cond.inpaint={value!r}: write IMAGE.png,MASK.png (white mask pixels "
                              f"are filled in, black ones kept).")
        image = read_image(parts[0], 3, "cond.inpaint image")
        mask = (read_image(parts[1], 1, "cond.inpaint mask") > 0).float()
        return image, mask


def random_holes(n: int, size: tuple[int, int], config: InpaintConfig, rng: BatchRandom,
                 where: torch.Tensor | None = None) -> torch.Tensor:
    """(n, 1, H, W) masks: a ``free_form`` share brush strokes, the rest rectangles; with
    ``where`` ((n, H, W) bool), each centred on one of its true pixels (``random_points``).

    Every number comes from ``rng`` in a fixed order, so the holes of a training step depend only
    on its seed; with ``free_form=0`` no stroke is drawn and the draws are the rectangles' alone.
    """
    centres = None if where is None else random_points(where, rng)
    boxes = random_rectangles(n, size, config, rng, centres)
    if config.free_form == 0:
        return boxes
    strokes = random_strokes(n, size, config, rng, centres)
    return torch.where((rng.rand(n) < config.free_form).view(-1, 1, 1, 1), strokes, boxes)


def random_points(where: torch.Tensor, rng: BatchRandom) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) pixel centres, one per (H, W) map of ``where`` (n, H, W) bool, uniform over its true
    pixels (over the whole map where none is true); one uniform number per map from ``rng``."""
    n, h, w = where.shape
    flat = where.reshape(n, h * w)
    flat = flat | ~flat.any(1, keepdim=True)
    count = flat.sum(1)
    k = (rng.rand(n) * count).floor().long().clamp(max=count - 1)
    index = torch.searchsorted(flat.long().cumsum(1), k.view(n, 1), right=True).view(n)
    return (index % w).float() + 0.5, (index // w).float() + 0.5


def random_rectangles(n: int, size: tuple[int, int], config: InpaintConfig, rng: BatchRandom,
                      centres: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """(n, 1, H, W) masks, each one random rectangle of side in [min_hole, max_hole] of the image,
    centred on ``centres`` (x, y) where given (moved inside the image if it would leave it).

    Four uniform numbers per sample (height, width, top, left) from ``rng``.
    """
    h, w = size
    lo, hi = config.min_hole, max(config.min_hole, config.max_hole)
    u = [rng.rand(n) for _ in range(4)]
    hh = (h * (lo + (hi - lo) * u[0])).round().long().clamp(1, h)
    ww = (w * (lo + (hi - lo) * u[1])).round().long().clamp(1, w)
    top = (u[2] * (h - hh + 1)).floor().long().clamp(max=h - hh)
    left = (u[3] * (w - ww + 1)).floor().long().clamp(max=w - ww)
    if centres is not None:
        x, y = centres
        top = torch.minimum((y - hh / 2).round().long().clamp_min(0), h - hh)
        left = torch.minimum((x - ww / 2).round().long().clamp_min(0), w - ww)
    ys, xs = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
    inside = ((ys >= top.view(-1, 1, 1)) & (ys < (top + hh).view(-1, 1, 1))
              & (xs >= left.view(-1, 1, 1)) & (xs < (left + ww).view(-1, 1, 1)))
    return inside[:, None].float()


def random_strokes(n: int, size: tuple[int, int], config: InpaintConfig, rng: BatchRandom,
                   centres: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """(n, 1, H, W) masks, each one brush stroke: a polyline of ``stroke_segments`` segments from a
    uniform start (``centres`` where given), each of uniform direction and a length of 15-40% of
    the shorter side (ends kept in the image), drawn with a round brush of width in
    ``stroke_width``. The pixels whose centres lie within half a width of the polyline are the
    hole."""
    h, w = size
    side = float(min(h, w))
    x, y = rng.rand(n) * w, rng.rand(n) * h
    if centres is not None:
        x, y = centres
    lo, hi = config.stroke_width
    radius = side * (lo + (hi - lo) * rng.rand(n)) / 2
    ys = (torch.arange(h, dtype=torch.float32) + 0.5).view(1, h, 1)
    xs = (torch.arange(w, dtype=torch.float32) + 0.5).view(1, 1, w)
    inside = torch.zeros(n, h, w, dtype=torch.bool)
    for _ in range(config.stroke_segments):
        angle, length = rng.rand(n) * 2 * math.pi, side * (0.15 + 0.25 * rng.rand(n))
        x2 = (x + length * torch.cos(angle)).clamp(0, w)
        y2 = (y + length * torch.sin(angle)).clamp(0, h)
        dx, dy = (x2 - x).view(-1, 1, 1), (y2 - y).view(-1, 1, 1)
        x0, y0 = x.view(-1, 1, 1), y.view(-1, 1, 1)
        along = (((xs - x0) * dx + (ys - y0) * dy) / (dx * dx + dy * dy).clamp_min(1e-12)).clamp(0, 1)
        near = (xs - x0 - along * dx) ** 2 + (ys - y0 - along * dy) ** 2 <= radius.view(-1, 1, 1) ** 2
        inside |= near
        x, y = x2, y2
    return inside[:, None].float()
