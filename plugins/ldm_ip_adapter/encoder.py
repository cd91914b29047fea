"""Image prompts (``ip_adapter``): a reference image as tokens read by decoupled cross-attention.

As IP-Adapter (Ye et al. 2023): an image encoder gives one embedding per image; a projection
(diffusers' ``ImageProjection``: a linear map to ``num_tokens`` tokens of the backbone's context
width, then LayerNorm) turns it into tokens; in every cross-attention layer the plugin's own
key/value projection (``ldmcore.nn.decoupled_attention``) reads them beside the text, and the
result is added to the text attention's output times ``scale``. The value projections start at
zero, so attached to a pretrained model the output is unchanged until training. The image
encoder is a small trainable one by default, or a frozen local ``transformers`` vision model
(``model=PATH``, e.g. a CLIP vision tower; never downloaded, not saved in checkpoints).

A value is a reference image, optionally with a region ((1, H, W) in [0, 1]) where it acts:
``cond.ip_adapter=ref.png`` or ``cond.ip_adapter='{"image":"ref.png","region":"left.png"}'``. In training the
reference is the batch's own image (``input_key``), as IP-Adapter trains; dropped, the tokens
are those of a zero embedding, as IP-Adapter's unconditional branch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ldm_ip_adapter.image_encoders import FrozenVisionModel, SmallImageEncoder
from ldmcore.conditioning import (BackboneSpec, ConditionEncoder, ConditionOutput, EncoderConfig,
                                  Injection, OutputSpec, Tokens, Widget, WidgetKind)
from ldmcore.errors import ConfigError
from ldmcore.images import read_image
from ldmcore.nn.decoupled_attention import decoupled_layers
from ldmcore.nn.norms import LayerNorm


class IPAdapterConfig(EncoderConfig):
    input_key: str = Field("image", description="the data key of the reference image in training "
                                                "batches (IP-Adapter: the target image itself)")
    model: str | None = Field(None, description="a local transformers vision model folder (frozen); "
                                                "default: a small trainable encoder")
    embed_dim: int = Field(128, ge=1, description="the small encoder's embedding width")
    num_tokens: int = Field(4, ge=1, description="image tokens per reference (IP-Adapter: 4)")
    scale: float = Field(1.0, description="weight of the image attention beside the text's")


@dataclass
class ImagePrompt:
    """A batch of reference images (B, C, H, W) in [-1, 1] and where each acts (B, 1, H, W)."""

    images: torch.Tensor
    regions: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: slice) -> ImagePrompt:
        return ImagePrompt(self.images[index], None if self.regions is None else self.regions[index])


class ImageTokens(nn.Module):
    """One embedding -> ``num_tokens`` tokens (diffusers' ``ImageProjection``: linear, LayerNorm)."""

    def __init__(self, embed_dim: int, token_dim: int, num_tokens: int) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.image_embeds = nn.Linear(embed_dim, num_tokens * token_dim)
        self.norm = LayerNorm(token_dim)

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        tokens = self.image_embeds(embeds.to(self.image_embeds.weight.dtype))
        return self.norm(tokens.reshape(embeds.shape[0], self.num_tokens, -1))


class IPAdapterEncoder(ConditionEncoder):
    name = "ip_adapter"
    injections = (Injection.DECOUPLED_CROSSATTN,)
    Config = IPAdapterConfig

    def __init__(self, config: IPAdapterConfig, backbone: BackboneSpec) -> None:
        super().__init__(config, backbone)
        if config.model:
            vision = FrozenVisionModel(backbone.local_path(config.model, f"conditions.{self.name}.model"),
                                       f"conditions.{self.name}.model")
            self.__dict__["vision"] = vision  # frozen and unregistered: its folder holds its weights
            embed_dim = vision.dim
        else:
            self.small = SmallImageEncoder(backbone.image_channels, config.embed_dim)
            embed_dim = config.embed_dim
        width = backbone.context_dim
        self.proj = ImageTokens(embed_dim, width, config.num_tokens)
        self.adapters = decoupled_layers(backbone.transformer_blocks, width, config.scale)

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        if "vision" in self.__dict__:
            self.vision.model._apply(fn)
        return self

    def output_specs(self) -> dict[Injection, OutputSpec]:
        return {Injection.DECOUPLED_CROSSATTN: OutputSpec(
            Injection.DECOUPLED_CROSSATTN, (self.config.num_tokens, self.backbone.context_dim))}

    def block_layers(self) -> dict[Injection, nn.ModuleList]:
        return {Injection.DECOUPLED_CROSSATTN: self.adapters}

    def batch_value(self, batch: dict[str, Any]) -> ImagePrompt:
        if self.name in batch:
            return batch[self.name]
        return ImagePrompt(batch[self.config.input_key])

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [-1, 1] -> (B, embed_dim)."""
        device = self.proj.image_embeds.weight.device
        if "vision" in self.__dict__:
            return self.vision(images.to(device))
        return self.small(images.to(device))

    def forward(self, value: ImagePrompt) -> ConditionOutput:
        tokens = self.proj(self.embed(value.images))
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        regions = None if value.regions is None else value.regions.to(tokens.device)
        return {Injection.DECOUPLED_CROSSATTN: Tokens(tokens, mask, regions)}

    def null(self, batch_size: int) -> ConditionOutput:
        weight = self.proj.image_embeds.weight
        tokens = self.proj(torch.zeros(batch_size, weight.shape[1], device=weight.device))
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return {Injection.DECOUPLED_CROSSATTN: Tokens(tokens, mask)}

    def widget(self) -> Widget:
        """An uploaded reference image (any size: it is resized); a region is command-line only."""
        return Widget(WidgetKind.IMAGE, label=f"{self.name}: image prompt",
                      help="a reference image the samples take after")

    def parse(self, value: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A reference image path, or ``{"image": PATH, "region": PATH}`` (the region's grey
        level is where the image prompt acts, white = fully). A JSON list of these gives one
        grid row each."""
        image, region = value, None
        if isinstance(value, dict) and set(value) <= {"image", "region"}:
            image, region = value.get("image"), value.get("region")
        if not isinstance(image, str) or not (region is None or isinstance(region, str)):
            raise ConfigError(f"cond.{self.name}={value!r} is not an image prompt; write a path "
                              f"(cond.{self.name}=ref.png) or a reference with the region where it "
                              f"acts (cond.{self.name}='{{\"image\":\"ref.png\",\"region\":\"left.png\"}}').")
        pixels = read_image(image, self.backbone.image_channels, f"cond.{self.name}")
        if region is None:
            return pixels, None
        return pixels, (read_image(region, 1, f"cond.{self.name} region") + 1) / 2

    def collate(self, values: list[tuple[torch.Tensor, torch.Tensor | None]]) -> ImagePrompt:
        size = self.backbone.image_size
        images = torch.stack([_resized(img, size) for img, _ in values])
        if all(r is None for _, r in values):
            return ImagePrompt(images)
        regions = torch.stack([torch.ones(1, *size) if r is None else _resized(r, size) for _, r in values])
        return ImagePrompt(images, regions)


def _resized(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image[None], size=size, mode="area")[0]
