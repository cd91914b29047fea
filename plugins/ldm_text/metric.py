"""The text plugin's ``ldm eval`` metric on shapes scenes: does the image say its caption?"""

from __future__ import annotations

from typing import Any

import torch

from ldmcore.eval.shapes import caption_match_rate as shapes_caption_match_rate


def caption_match_rate(images: torch.Tensor, captions: list[str], batch: dict[str, Any]) -> dict[str, float]:
    """Fraction of samples whose shapes, read back from the image, say the caption."""
    return {"text_caption_match": shapes_caption_match_rate(images, captions)}
