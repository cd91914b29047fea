"""The text plugin's ``ldm eval`` metric on shapes scenes: does the image say its caption?"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ldmcore.eval.shapes import caption_match
from ldmcore.images import to_uint8


def caption_match_rate(images: torch.Tensor, captions: list[str], batch: dict[str, Any]) -> dict[str, float]:
    """Fraction of samples whose shapes, read back from the image, say the caption."""
    pixels = to_uint8(images)
    return {"text_caption_match": float(np.mean([caption_match(p, c) for p, c in zip(pixels, captions)]))}
