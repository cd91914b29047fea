"""The super-resolution plugin's ``ldm eval`` metrics: PSNR/SSIM against the high-resolution
image, beside bicubic upsampling of the same low-resolution input; on shapes scenes also whether
the restored image still says the scene's caption (a triangle restored as a blob does not)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ldmcore.eval.pixels import psnr, ssim
from ldmcore.eval.shapes import caption_match_rate


def upsampled(low: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The model-free answer: bicubic upsampling of ``low`` to ``size``, clipped to [-1, 1]."""
    return F.interpolate(low, size=size, mode="bicubic", align_corners=False).clamp(-1, 1)


def fidelity(images: torch.Tensor, low: torch.Tensor, batch: dict[str, Any]) -> dict[str, float]:
    """PSNR and SSIM of the samples against the held-out high-resolution images."""
    target = batch["image"]
    return {"lowres_psnr": float(psnr(images, target).mean()), "lowres_ssim": float(ssim(images, target).mean())}


def bicubic(low: torch.Tensor, batch: dict[str, Any]) -> dict[str, float]:
    """What the metric reads without a model: bicubic upsampling of the low-resolution input."""
    target = batch["image"]
    up = upsampled(low, target.shape[-2:])
    return {"bicubic_psnr": float(psnr(up, target).mean()), "bicubic_ssim": float(ssim(up, target).mean())}


def caption_match(images: torch.Tensor, low: torch.Tensor, batch: dict[str, Any]) -> dict[str, float]:
    """Share of restored shapes scenes whose shapes, read back from pixels, say the caption."""
    return {"lowres_caption_match": caption_match_rate(images, batch["caption"])}


def bicubic_caption_match(low: torch.Tensor, batch: dict[str, Any]) -> dict[str, float]:
    """The same reading of the bicubic upsampling."""
    up = upsampled(low, batch["image"].shape[-2:])
    return {"bicubic_caption_match": caption_match_rate(up, batch["caption"])}
