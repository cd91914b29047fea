"""The scenes and holes ``ldm eval`` scores shapes_inpaint on, for benchmarks that read the same."""

from __future__ import annotations

from typing import Any

import torch


def eval_holes(n: int) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    """(batch, image, hole) of ``n`` held-out shapes scenes with the holes ``ldm eval`` cuts
    (experiment ``shapes_inpaint``, seed 0): image (n, 3, H, W) in [-1, 1], hole (n, 1, H, W)."""
    from ldmcore.build import build_model
    from ldmcore.config import load
    from ldmcore.eval.tasks import held_out_batch

    cfg = load(["experiment=shapes_inpaint"])
    encoder = build_model(cfg).conditioner.encoders["inpaint"]
    torch.manual_seed(0)  # then the scenes and holes ldm eval draws (its seed 0)
    batch = held_out_batch(cfg, n)
    image, hole = encoder.batch_value(batch)
    return batch, image, hole
