"""``ldm eval``'s metric of the edges condition: do the sample's edges fall where asked?"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ldm_edges.encoder import canny


def edge_agreement(images: torch.Tensor, edges: torch.Tensor, batch: dict[str, Any]) -> dict[str, float]:
    """F1 of the samples' Canny edges against the requested edge maps, an edge pixel counting as
    found when the other map has one within one pixel (a 3x3 neighbourhood)."""
    asked = torch.as_tensor(edges).float().cpu()
    if asked.shape[-2:] != images.shape[-2:]:
        asked = (F.interpolate(asked, size=images.shape[-2:], mode="area") > 0).float()
    got = canny(images)
    near = lambda m: F.max_pool2d(m, 3, stride=1, padding=1)  # noqa: E731 - a one-line helper
    precision = (got * near(asked)).sum() / got.sum().clamp_min(1)
    recall = (asked * near(got)).sum() / asked.sum().clamp_min(1)
    return {"edges_f1": float(2 * precision * recall / (precision + recall).clamp_min(1e-12))}
