"""The doors a condition uses to reach the UNet, and the shapes that cross them.

An encoder declares which doors it *can* use (``ConditionEncoder.injections``) and, per
instance, which it *does* use with the per-sample shape of each (``output_specs``). The
``Conditioner`` routes outputs by these declarations; it never guesses from a tensor's rank.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

from ldmcore.conditioning.residual import Residual, Residuals
from ldmcore.nn.inserted_layers import EVERY_STEP, InsertedLayers, StepWindow
from ldmcore.nn.taps import ResidualTap


class Injection(str, enum.Enum):
    """How a condition reaches the UNet."""

    CROSSATTN = "crossattn"  # tokens used as keys/values of cross-attention
    CONCAT = "concat"  # channels concatenated to z_t at latent resolution
    VECTOR = "vector"  # a vector projected and added to the timestep embedding
    RESIDUAL = "residual"  # feature maps added at the UNet's taps (ControlNet, T2I-Adapter)
    # tokens read by the plugin's own gated self-attention layer after each transformer block's
    # self-attention (GLIGEN); its layers start with the gate shut
    GATED_ATTENTION = "gated_attention"
    # tokens read by the plugin's own key/value projection beside each cross-attention (IP-Adapter)
    DECOUPLED_CROSSATTN = "decoupled_crossattn"

    @property
    def inserts_layers(self) -> bool:
        """Whether the plugin's own layers inside the transformer blocks read these tokens
        (``ConditionEncoder.block_layers``), rather than the backbone's."""
        return self in (Injection.GATED_ATTENTION, Injection.DECOUPLED_CROSSATTN)


@dataclass(frozen=True)
class OutputSpec:
    """Shape of one output of an encoder, per sample (batch axis excluded).

    crossattn: ``(tokens, context_dim)``; concat: ``(channels, H, W)`` at latent resolution;
    vector: ``(dim,)``; residual: ``()``, with the backbone taps it feeds in ``taps``
    (``BackboneSpec.residual_taps``, each map ``tap.shape``); gated_attention and
    decoupled_crossattn: ``(tokens, width)``, any width (the plugin's own layers read them).
    """

    injection: Injection
    shape: tuple[int, ...]
    taps: tuple[ResidualTap, ...] = ()


@dataclass
class Tokens:
    """Tokens with a key-padding mask (True = attend), for every token injection.

    ``region`` (decoupled_crossattn only): (B, 1, H, W) weights in [0, 1] at any resolution,
    resized to each block's; where the tokens act (regional prompts). None: everywhere.

    ``steps`` (gated_attention and decoupled_crossattn only): the fractions ``(start, end)`` of a
    sampling run in which the plugin's layers act (``ldmcore.diffusion.step_windows``; GLIGEN's
    scheduled sampling is ``(0, beta)``); the same in ``forward`` and ``null``.
    """

    values: torch.Tensor  # (B, N, D)
    mask: torch.Tensor  # (B, N) bool
    region: torch.Tensor | None = None
    steps: StepWindow = EVERY_STEP

    def __post_init__(self) -> None:
        if self.mask.dtype != torch.bool:
            self.mask = self.mask.bool()


ConditionOutput = dict[Injection, "torch.Tensor | Tokens | Residual"]


@dataclass
class Conditioning:
    """Routed conditions for one UNet call; each field is None when no plugin feeds it."""

    context: torch.Tensor | None = None  # (B, N, context_dim)
    context_mask: torch.Tensor | None = None  # (B, N) bool
    concat: torch.Tensor | None = None  # (B, C, h, w)
    vector: torch.Tensor | None = None  # (B, D)
    residuals: Residuals | None = None  # maps for the UNet's taps (``residual.py``)
    # gated_attention and decoupled_crossattn: plugins' layers in the transformer blocks, with tokens
    inserted: InsertedLayers | None = None

    @staticmethod
    def cat(parts: list[Conditioning]) -> Conditioning:
        """Stack several conditionings along the batch axis (for batched guidance)."""

        def join(field: str) -> torch.Tensor | None:
            values = [getattr(p, field) for p in parts]
            return None if values[0] is None else torch.cat(values)

        residuals = None if parts[0].residuals is None else Residuals.cat([p.residuals for p in parts])
        inserted = None if parts[0].inserted is None else InsertedLayers.cat([p.inserted for p in parts])
        return Conditioning(*(join(f) for f in ("context", "context_mask", "concat", "vector")),
                            residuals=residuals, inserted=inserted)
