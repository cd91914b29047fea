"""Filling a hole from its border without a model: the inpainting baseline and base image.

``blur_fill`` solves the discrete Laplace equation inside the hole with the known pixels as the
boundary (every hole pixel the mean of its 3x3 neighbourhood): the smoothest image that agrees
with the known region, the classic "harmonic" or "diffusion" fill. Plain repeated blurring needs
about (hole width)^2 sweeps to converge; 50 sweeps leave the middle of a 16-pixel hole near its
zero start (20.6 dB against 23.18 dB converged, on 256 of photos_inpaint's held-out holes). Here
each solve starts from the solution on a 2x coarser grid (a multigrid cascade), so a fixed number
of sweeps per level comes close to the converged fill at any size. Measured on those holes:

* 20 sweeps (the default, cheap enough to run on every training batch): 23.06 dB, no pixel off
  from 3,000 plain sweeps by more than 0.11, 31 ms for 64 RGB 32x32 images on 2 cores;
* 200 sweeps (``CONVERGED_SWEEPS``, for baselines): 23.17 dB, no pixel off by more than 0.007.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SWEEPS_PER_LEVEL = 20
CONVERGED_SWEEPS = 200


def blur_fill(image: torch.Tensor, hole: torch.Tensor, sweeps: int = SWEEPS_PER_LEVEL) -> torch.Tensor:
    """(B, C, H, W) ``image`` with its pixels where ``hole`` (B, 1, H, W) > 0.5 replaced by the
    harmonic interpolation of the known pixels around them; the known pixels are returned as they
    are. An image with no known pixel fills with zeros (mid grey in [-1, 1])."""
    image = image.float()
    inside = (hole > 0.5).expand(image.shape[0], 1, *image.shape[-2:])
    h, w = image.shape[-2:]
    if min(h, w) >= 4:  # start from the fill of the half-size problem
        known = (~inside).to(image)
        weight = F.avg_pool2d(known, 2, ceil_mode=True)
        coarse = F.avg_pool2d(image * known, 2, ceil_mode=True) / weight.clamp_min(1e-6)
        coarse = blur_fill(coarse, weight == 0, sweeps)
        start = F.interpolate(coarse, scale_factor=2, mode="bilinear", align_corners=False)[..., :h, :w]
    else:
        start = torch.zeros_like(image)
    return relax(start, image, inside, sweeps)


def relax(start: torch.Tensor, image: torch.Tensor, hole: torch.Tensor, sweeps: int) -> torch.Tensor:
    """``sweeps`` Jacobi sweeps of the fill: from ``start`` inside the boolean ``hole`` (and
    ``image`` outside it), every hole pixel becomes the mean of its 3x3 neighbourhood (image
    edges replicated) while the known pixels stay ``image``."""
    inside = hole.expand_as(image)
    x = torch.where(inside, start, image)
    for _ in range(sweeps):
        x = torch.where(inside, F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1), image)
    return x
