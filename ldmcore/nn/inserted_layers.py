"""What plugins put inside the UNet's transformer blocks, for one UNet call.

Two injection kinds reach *into* the transformer blocks instead of through their inputs: a gated
self-attention over grounding tokens after each block's self-attention (GLIGEN), and a second
key/value path beside each block's cross-attention (IP-Adapter). The layers are the plugin's
(its module owns, saves and trains them); the UNet owns none of them and only calls them. A
block reaches its layer by its number: the UNet numbers its transformer blocks in forward order
(``UNetShape.transformer_blocks()``, ``BasicTransformerBlock.index``) and each plugin holds one
layer per block in that order, sized from the ``TransformerBlockShape`` the backbone gave it.
Without a plugin of these kinds nothing here runs and the blocks are the backbone's own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn


StepWindow = tuple[float, float]  # (start, end): the fractions of a sampling run a plugin acts in
EVERY_STEP: StepWindow = (0.0, 1.0)  # (ldmcore.diffusion.step_windows applies them)


@dataclass(frozen=True)
class TransformerBlockShape:
    """One transformer block as a plugin layer must fit it: its feature width and heads."""

    width: int  # features of the block's tokens, heads * head_dim
    heads: int
    head_dim: int


@dataclass
class GatedTokens:
    """One plugin's grounding tokens and its gated layers, one per transformer block, each
    called ``layer(x, tokens, mask, size) -> x`` right after the block's self-attention, ``size``
    the (h, w) of the block's feature map."""

    layers: Sequence[nn.Module]
    tokens: torch.Tensor  # (B, N, D), D the plugin's own token width
    mask: torch.Tensor  # (B, N) bool, True = attend
    steps: StepWindow = EVERY_STEP


@dataclass
class DecoupledTokens:
    """One plugin's tokens and its key/value layers, one per transformer block, each called
    ``layer(q, tokens, mask, region) -> (B, L, width)`` with the block cross-attention's queries;
    the result is added to that attention's output before its output projection."""

    layers: Sequence[nn.Module]
    tokens: torch.Tensor  # (B, N, D)
    mask: torch.Tensor  # (B, N) bool, True = attend
    region: torch.Tensor | None = None  # (B, 1, H, W) in [0, 1]: where it acts; None = everywhere
    steps: StepWindow = EVERY_STEP


@dataclass
class InsertedLayers:
    """Every plugin's inserted layers and tokens for one UNet call, in plugin order."""

    gated: tuple[GatedTokens, ...] = ()
    decoupled: tuple[DecoupledTokens, ...] = ()

    def after_self_attention(self, index: int, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Block ``index``'s features (a (h, w) = ``size`` map) after its self-attention, through
        each gated layer."""
        for g in self.gated:
            x = g.layers[index](x, g.tokens, g.mask, size)
        return x

    def beside_cross_attention(self, index: int, size: tuple[int, int]
                               ) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        """The extra attention paths of block ``index`` (features ``size`` = (h, w)): functions
        of the cross-attention's queries (B, heads, h*w, head_dim)."""
        return [partial(d.layers[index], tokens=d.tokens, mask=d.mask, region=_region_at(d.region, size))
                for d in self.decoupled]

    @staticmethod
    def cat(parts: Sequence[InsertedLayers]) -> InsertedLayers:
        """Join the tokens of several calls along the batch axis (batched guidance); every part
        comes from the same plugins in the same order, so the layers are the same."""
        gated = tuple(GatedTokens(g[0].layers, torch.cat([x.tokens for x in g]), torch.cat([x.mask for x in g]),
                                  g[0].steps)
                      for g in zip(*(p.gated for p in parts)))
        decoupled = []
        for d in zip(*(p.decoupled for p in parts)):
            regions = [x.region for x in d]
            if all(r is None for r in regions):
                region = None
            else:
                like = next(r for r in regions if r is not None)
                region = torch.cat([torch.ones(len(x.tokens), *like.shape[1:], dtype=like.dtype,
                                               device=like.device) if x.region is None else x.region
                                    for x in d])
            decoupled.append(DecoupledTokens(d[0].layers, torch.cat([x.tokens for x in d]),
                                             torch.cat([x.mask for x in d]), region, d[0].steps))
        return InsertedLayers(gated, tuple(decoupled))


def _region_at(region: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor | None:
    """A (B, 1, H, W) region as (B, h*w, 1) weights at a block's resolution (area average)."""
    if region is None:
        return None
    if tuple(region.shape[-2:]) != tuple(size):
        region = F.interpolate(region.float(), size=size, mode="area")
    return region.flatten(2).transpose(1, 2)
