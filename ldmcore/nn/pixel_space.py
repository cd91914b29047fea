"""The identity first stage: diffusion on the pixels themselves (the LDM paper's f=1 baseline).

``autoencoder.kind: pixels`` (``conf/autoencoder/pixels.yaml``) puts this in the autoencoder's
place. It has the first-stage interface the backbone uses (``shape``, ``encode``, ``decode``,
``latents``, ``images``, ``scale_factor``) and no weights: the "latent" is the image in [-1, 1]
with the image's channels, the posterior is a point mass, and there is no stage 1 to train. The
LDM paper's Figure 6 compares exactly this (LDM-1) with latent models at f = 2 ... 32;
``python -m benchmarks.latent_vs_pixel`` repeats that comparison in miniature.
"""

from __future__ import annotations

import torch
from torch import nn

from ldmcore.nn.autoencoder import AutoencoderKL, AutoencoderShape, DiagonalGaussian


class PixelSpace(nn.Module):
    def __init__(self, shape: AutoencoderShape) -> None:
        super().__init__()
        if shape.latent_channels != shape.in_channels or shape.downsample_factor != 1:
            raise ValueError("pixel space keeps the image's channels and size: latent_channels must "
                             "equal in_channels and ch_mult must have one level")
        self.shape = shape
        self.register_buffer("scale_factor", torch.tensor(1.0))

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """A point mass at ``x`` (log-variance -inf: sampling adds exactly zero)."""
        return DiagonalGaussian(x, torch.full_like(x, float("-inf")))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def latents(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return x * self.scale_factor

    def images(self, latents: torch.Tensor) -> torch.Tensor:
        return (latents / self.scale_factor).float()

    def fit_scale_factor(self, x: torch.Tensor) -> float:
        """Pixels in [-1, 1] are diffused as they are (as pixel-space DDPMs do): the factor stays 1."""
        return float(self.scale_factor)


# What fills the first stage's place in the backbone: the KL autoencoder, or the pixels.
FirstStage = AutoencoderKL | PixelSpace
