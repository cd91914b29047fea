"""The semantic-map plugin's ``ldm eval`` metric on shapes scenes: mIoU of map and image."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ldmcore.eval.shapes import mean_iou, segmentation
from ldmcore.images import to_uint8


def map_miou(images: torch.Tensor, maps: torch.Tensor, batch: dict[str, Any]) -> dict[str, float]:
    """mIoU of the requested class map with the segmentation read from each generated image."""
    pixels = to_uint8(images)
    return {"segmap_miou": float(np.mean([mean_iou(segmentation(p), m.numpy()) for p, m in zip(pixels, maps)]))}
