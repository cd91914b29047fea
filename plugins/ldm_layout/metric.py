"""The layout plugin's ``ldm eval`` metric on shapes scenes: are the shapes where the boxes say?"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ldmcore.eval.shapes import layout_iou
from ldmcore.images import to_uint8


def box_iou_mean(images: torch.Tensor, layouts: list[tuple[torch.Tensor, torch.Tensor]],
                 batch: dict[str, Any]) -> dict[str, float]:
    """Mean IoU of the requested boxes with the boxes of the shapes detected in each image."""
    pixels = to_uint8(images)
    return {"layout_mean_iou": float(np.mean([layout_iou(p, boxes.numpy(), labels.numpy())
                                              for p, (boxes, labels) in zip(pixels, layouts)]))}
