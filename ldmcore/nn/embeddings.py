"""Timestep and Fourier embeddings, reusable by the backbone and by plugins."""

from __future__ import annotations

import math

import torch
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, ``[cos | sin]`` as in CompVis.

    Frequencies are ``max_period ** (-i / half)`` for ``i < half``; an odd ``dim`` gets a zero
    column so the width is exact.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class FourierFeatures(nn.Module):
    """``[sin(2^k pi x) | cos(2^k pi x)]`` for k < num_freqs, per input coordinate (NeRF/GLIGEN)."""

    def __init__(self, num_freqs: int = 8) -> None:
        super().__init__()
        self.register_buffer("freqs", (2.0 ** torch.arange(num_freqs)) * math.pi, persistent=False)

    def out_dim(self, in_dim: int) -> int:
        return 2 * in_dim * self.freqs.numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        args = x[..., None] * self.freqs  # (..., in, F)
        return torch.cat([args.sin(), args.cos()], dim=-1).flatten(-2)
