"""The doors a condition uses to reach the UNet, and the shapes that cross them.

An encoder declares which doors it *can* use (``ConditionEncoder.injections``) and, per
instance, which it *does* use with the per-sample shape of each (``output_specs``). The
``Conditioner`` routes outputs by these declarations; it never guesses from a tensor's rank.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch


class Injection(str, enum.Enum):
    """How a condition reaches the UNet."""

    CROSSATTN = "crossattn"  # tokens used as keys/values of cross-attention
    CONCAT = "concat"  # channels concatenated to z_t at latent resolution
    VECTOR = "vector"  # a vector projected and added to the timestep embedding


@dataclass(frozen=True)
class OutputSpec:
    """Shape of one output of an encoder, per sample (batch axis excluded).

    crossattn: ``(tokens, context_dim)``; concat: ``(channels, H, W)`` at latent resolution;
    vector: ``(dim,)``.
    """

    injection: Injection
    shape: tuple[int, ...]


@dataclass
class Tokens:
    """Cross-attention tokens with a key-padding mask (True = attend)."""

    values: torch.Tensor  # (B, N, D)
    mask: torch.Tensor  # (B, N) bool

    def __post_init__(self) -> None:
        if self.mask.dtype != torch.bool:
            self.mask = self.mask.bool()


ConditionOutput = dict[Injection, "torch.Tensor | Tokens"]


@dataclass
class Conditioning:
    """Routed conditions for one UNet call; each field is None when no plugin feeds it."""

    context: torch.Tensor | None = None  # (B, N, context_dim)
    context_mask: torch.Tensor | None = None  # (B, N) bool
    concat: torch.Tensor | None = None  # (B, C, h, w)
    vector: torch.Tensor | None = None  # (B, D)

    @staticmethod
    def cat(parts: list[Conditioning]) -> Conditioning:
        """Stack several conditionings along the batch axis (for batched guidance)."""

        def join(field: str) -> torch.Tensor | None:
            values = [getattr(p, field) for p in parts]
            return None if values[0] is None else torch.cat(values)

        return Conditioning(*(join(f) for f in ("context", "context_mask", "concat", "vector")))
