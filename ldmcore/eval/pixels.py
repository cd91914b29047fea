"""Pixel fidelity: PSNR and SSIM (Wang et al. 2004, 11x11 Gaussian window, sigma 1.5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Per image, for images in [-1, 1] (range 2)."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range ** 2 / mse.clamp_min(1e-12))


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0, size: int = 11,
         sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM per image of (B, C, H, W) tensors; the window shrinks to fit small images."""
    size = min(size, a.shape[-1], a.shape[-2])
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    g = (g / g.sum())
    window = (g[:, None] * g[None, :]).expand(a.shape[1], 1, size, size)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, window, groups=a.shape[1])

    a, b = a.float(), b.float()
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)
