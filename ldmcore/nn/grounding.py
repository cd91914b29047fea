"""GLIGEN's grounding tokenizer ("position net"): one token per box from a phrase embedding and
the box's Fourier features, with learned null features for empty slots.

``box_fourier_features`` and ``GroundingTokenizer`` follow GLIGEN (Li et al. 2023) and diffusers'
``GLIGENTextBoundingboxProjection`` (text-only): frequencies ``100 ** (k / F)`` on box corners
in [0, 1], features ordered frequency, then sin/cos, then coordinate; a slot without a box takes
the learned ``null_positive_feature`` and ``null_position_feature``; a three-layer SiLU MLP maps
[phrase | position] to a token. Parameter names match diffusers', so weights map one to one.
"""

from __future__ import annotations

import torch
from torch import nn


def box_fourier_features(boxes: torch.Tensor, num_freqs: int) -> torch.Tensor:
    """(B, N, 4) boxes in [0, 1] -> (B, N, num_freqs * 2 * 4) GLIGEN Fourier features."""
    freqs = 100 ** (torch.arange(num_freqs, device=boxes.device, dtype=boxes.dtype) / num_freqs)
    args = boxes[..., None] * freqs  # (B, N, 4, F)
    feats = torch.stack([args.sin(), args.cos()], dim=-1)  # (B, N, 4, F, 2)
    return feats.permute(0, 1, 3, 4, 2).flatten(2)


class GroundingTokenizer(nn.Module):
    """Boxes with phrase embeddings -> grounding tokens of width ``token_dim``."""

    def __init__(self, phrase_dim: int, token_dim: int, num_freqs: int = 8, hidden: int = 512) -> None:
        super().__init__()
        self.num_freqs = num_freqs
        position_dim = num_freqs * 2 * 4
        self.linears = nn.Sequential(nn.Linear(phrase_dim + position_dim, hidden), nn.SiLU(),
                                     nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, token_dim))
        self.null_positive_feature = nn.Parameter(torch.zeros(phrase_dim))
        self.null_position_feature = nn.Parameter(torch.zeros(position_dim))

    def forward(self, phrases: torch.Tensor, boxes: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """``phrases`` (B, N, phrase_dim), ``boxes`` (B, N, 4) in [0, 1], ``present`` (B, N)
        bool -> (B, N, token_dim); absent slots carry the null features."""
        keep = present[..., None].to(phrases.dtype)
        position = box_fourier_features(boxes.to(phrases.dtype), self.num_freqs)
        position = position * keep + (1 - keep) * self.null_position_feature
        phrases = phrases * keep + (1 - keep) * self.null_positive_feature
        return self.linears(torch.cat([phrases, position], dim=-1))
