"""The UNet's residual tap points: where per-level feature maps may be added to its encoder.

Methods that steer a pretrained UNet without touching its weights add feature maps at fixed
places of its encoder half. Two kinds of place exist, and they differ in what the addition
reaches:

* ``skip.<i>`` - the output of input block ``i`` *as stored for the skip connection* (the
  decoder reads it); the encoder goes on from the unmodified features. ``middle`` - the middle
  block's output. ControlNet (Zhang et al. 2023) feeds these: one map per skip connection and
  one for the middle block (diffusers' ``down_block_additional_residuals`` and
  ``mid_block_additional_residual``).
* ``encoder.<level>`` - the encoder's features at the end of a level (after its last ResBlock
  and transformer, before its downsampling); the addition flows on through the rest of the
  encoder *and* into that skip connection. T2I-Adapter (Mou et al. 2023) feeds these, one map
  per level (diffusers' ``down_intrablock_additional_residuals``).

Every tap's width and size follow from the UNet's shape and the latent size; nothing is
restated. A plugin is told the taps (``BackboneSpec.residual_taps``) and declares those it feeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # the UNet imports this module to find its taps
    from ldmcore.nn.unet import UNetShape

MIDDLE = "middle"


@dataclass(frozen=True)
class ResidualTap:
    """One place where a residual may be added: its name, what it adds to, and its map shape."""

    name: str  # "skip.<i>", "middle" or "encoder.<level>"
    adds_to: Literal["skip", "encoder"]  # the stored skip connection only, or the encoder's flow
    level: int  # the UNet level (index into channel_mult) the tap sits at
    channels: int
    size: tuple[int, int]

    @property
    def shape(self) -> tuple[int, int, int]:
        """The per-sample shape of the map this tap takes."""
        return (self.channels, *self.size)


def level_end_block(shape: UNetShape, level: int) -> int:
    """Index of the input block that ends ``level`` (its last ResBlock, before downsampling)."""
    return level * (shape.num_res_blocks + 1) + shape.num_res_blocks


def residual_taps(shape: UNetShape, latent_size: tuple[int, int]) -> tuple[ResidualTap, ...]:
    """Every tap of a UNet of ``shape`` on latents of ``latent_size``: the skip taps in input-block
    order, then the middle tap, then one encoder tap per level."""
    mc, nrb, levels = shape.model_channels, shape.num_res_blocks, len(shape.channel_mult)

    def size(level: int) -> tuple[int, int]:
        return (latent_size[0] // 2 ** level, latent_size[1] // 2 ** level)

    skips = [ResidualTap("skip.0", "skip", 0, mc, size(0))]
    for level, mult in enumerate(shape.channel_mult):
        for _ in range(nrb):
            skips.append(ResidualTap(f"skip.{len(skips)}", "skip", level, mc * mult, size(level)))
        if level != levels - 1:  # the downsampling block's output is a skip of the next level's size
            skips.append(ResidualTap(f"skip.{len(skips)}", "skip", level + 1, mc * mult, size(level + 1)))
    deepest = levels - 1
    middle = ResidualTap(MIDDLE, "skip", deepest, mc * shape.channel_mult[-1], size(deepest))
    ends = [ResidualTap(f"encoder.{level}", "encoder", level, mc * mult, size(level))
            for level, mult in enumerate(shape.channel_mult)]
    return (*skips, middle, *ends)
