"""``ldm eval``'s metric for a residual plugin on shapes scenes: how well the generated images
follow the held-out scene its hint was made from (class map, edges or low-resolution image),
as the mIoU of the scene's class map with the segmentation read back from each image."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ldmcore.eval.shapes import mean_iou, segmentation
from ldmcore.images import to_uint8


def scene_miou(images: torch.Tensor, value: Any, batch: dict[str, Any]) -> dict[str, float]:
    """mIoU of each scene's class map (``batch["mask"]``) with the segmentation of its image."""
    pixels = to_uint8(images)
    maps = batch["mask"]
    return {"scene_miou": float(np.mean([mean_iou(segmentation(p), m.numpy()) for p, m in zip(pixels, maps)]))}
