"""The image prompt's ``ldm eval`` metric on shapes scenes: does the sample show the reference?

Both images are read with the shape reader of ``ldmcore.eval.shapes`` (independent of the
generator and of any model): each shape's colour, kind and box. Two agreements, each 1 when the
sample shows exactly the reference's shapes and 0 when it shares none:

* ``ip_adapter_shape_agreement``: what is there - the F1 (Dice) of the two multisets of
  (colour, kind): twice the shapes both images hold over the shapes in either;
* ``ip_adapter_placement_agreement``: what is there and where - the reference's and the sample's
  shapes paired one to one, only a colour and kind with itself, to maximise the summed box IoU
  (Hungarian matching), that sum over the larger of the two counts (a missing or extra shape
  counts 0).

Two images without any shape agree (1). ``ldm eval`` reports both beside the same scores of the
model without the image prompt (``*_null``: the same noise, this plugin's guidance scale 0), so
what the image prompt adds over the text shows.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ldm_ip_adapter.encoder import ImagePrompt
from ldmcore.eval.shapes import Detection, box_iou, detect
from ldmcore.images import to_uint8


def shape_agreement(reference: list[Detection], sample: list[Detection]) -> float:
    """F1 of the (colour, kind) multisets of two readings; 1 when both are empty."""
    if not reference and not sample:
        return 1.0
    ref, got = Counter((d.color, d.kind) for d in reference), Counter((d.color, d.kind) for d in sample)
    return 2 * sum((ref & got).values()) / (len(reference) + len(sample))


def placement_agreement(reference: list[Detection], sample: list[Detection]) -> float:
    """Summed box IoU of the best one-to-one pairing of same colour and kind, over the larger
    count; 1 when both are empty."""
    if not reference and not sample:
        return 1.0
    iou = np.array([[box_iou(r.box, s.box) if (r.color, r.kind) == (s.color, s.kind) else 0.0
                     for s in sample] for r in reference]).reshape(len(reference), len(sample))
    rows, cols = linear_sum_assignment(iou, maximize=True)
    return float(iou[rows, cols].sum()) / max(len(reference), len(sample))


def reference_agreement(images: torch.Tensor, value: ImagePrompt, batch: dict[str, Any]) -> dict[str, float]:
    """Mean agreement of each sample with its reference image (``value.images``)."""
    readings = [(detect(r), detect(s)) for r, s in zip(to_uint8(value.images), to_uint8(images))]
    return {"ip_adapter_shape_agreement": float(np.mean([shape_agreement(r, s) for r, s in readings])),
            "ip_adapter_placement_agreement": float(np.mean([placement_agreement(r, s) for r, s in readings]))}
