"""The inpainting plugin's ``ldm eval`` metrics: PSNR inside the hole (beside a blur fill's, the
converged harmonic fill of ``ldmcore.hole_fill``), the largest error outside it, and on shapes
scenes whether the filled image still says the scene's caption (a hidden triangle's corner
filled as a smudge does not)."""

from __future__ import annotations

from typing import Any

import torch

from ldmcore.eval.shapes import caption_match_rate
from ldmcore.hole_fill import CONVERGED_SWEEPS, blur_fill


def hole_psnr(x: torch.Tensor, image: torch.Tensor, hole: torch.Tensor) -> float:
    """PSNR of ``x`` against ``image`` over the hole's pixels only (images in [-1, 1])."""
    mse = ((x - image) ** 2)[hole.expand_as(image) > 0.5].mean()
    return float(10 * torch.log10(4 / mse.clamp_min(1e-12)))


def hole_fidelity(images: torch.Tensor, value: tuple[torch.Tensor, torch.Tensor],
                  batch: dict[str, Any]) -> dict[str, float]:
    """PSNR of the samples inside the hole."""
    image, hole = value
    return {"inpaint_hole_psnr": hole_psnr(images, image, hole)}


def known_region_error(images: torch.Tensor, value: tuple[torch.Tensor, torch.Tensor],
                       batch: dict[str, Any]) -> dict[str, float]:
    """The largest change outside the hole (pasted back: float rounding only). A property of
    single samples, so not reported for their mean."""
    image, hole = value
    return {"inpaint_known_max_abs_error": float((images - image).abs()[hole.expand_as(image) <= 0.5].max())}


def blur_fill_baseline(value: tuple[torch.Tensor, torch.Tensor], batch: dict[str, Any]) -> dict[str, float]:
    """What the metric reads without a model: the hole filled by the converged blur fill."""
    image, hole = value
    return {"blur_fill_hole_psnr": hole_psnr(blur_fill(image, hole, CONVERGED_SWEEPS), image, hole)}


def caption_match(images: torch.Tensor, value: tuple[torch.Tensor, torch.Tensor],
                  batch: dict[str, Any]) -> dict[str, float]:
    """Share of filled shapes scenes whose shapes, read back from pixels, say the caption."""
    return {"inpaint_caption_match": caption_match_rate(images, batch["caption"])}


def blur_fill_caption_match(value: tuple[torch.Tensor, torch.Tensor], batch: dict[str, Any]) -> dict[str, float]:
    """The same reading of the converged blur fill."""
    image, hole = value
    return {"blur_fill_caption_match": caption_match_rate(blur_fill(image, hole, CONVERGED_SWEEPS),
                                                          batch["caption"])}
