"""The super-resolution plugin's ``ldm eval`` metric: PSNR/SSIM against the high-resolution
image, beside bicubic upsampling of the same low-resolution input."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ldmcore.eval.pixels import psnr, ssim


def fidelity(images: torch.Tensor, low: torch.Tensor, batch: dict[str, Any]) -> dict[str, float]:
    """PSNR and SSIM of the samples against the held-out high-resolution images."""
    target = batch["image"]
    return {"lowres_psnr": float(psnr(images, target).mean()), "lowres_ssim": float(ssim(images, target).mean())}


def bicubic(low: torch.Tensor, batch: dict[str, Any]) -> dict[str, float]:
    """What the metric reads without a model: bicubic upsampling of the low-resolution input."""
    target = batch["image"]
    up = F.interpolate(low, size=target.shape[-2:], mode="bicubic", align_corners=False).clamp(-1, 1)
    return {"bicubic_psnr": float(psnr(up, target).mean()), "bicubic_ssim": float(ssim(up, target).mean())}
