"""The class plugin's ``ldm eval`` metric on digits: does an independent reader read the class
that was asked for?"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from ldmcore.eval.digits import read_digits
from ldmcore.images import to_uint8


def digit_fidelity(images: torch.Tensor, labels: torch.Tensor, batch: dict[str, Any]) -> dict[str, Any]:
    """Fraction of samples (and per class) an SVC trained on real digits reads as the class asked
    for, and the reader's own accuracy on held-out real digits through the same round trip."""
    pixels = to_uint8(images)
    grey = np.stack([np.asarray(Image.fromarray(p[..., 0] if p.shape[-1] == 1 else p).convert("L"),
                                dtype=np.float32) for p in pixels])
    wanted = torch.as_tensor(labels).numpy().astype(np.int64)
    got, reader_accuracy = read_digits(grey)
    per_class = {int(c): float((got[wanted == c] == c).mean()) for c in np.unique(wanted)}
    return {"accuracy": float((got == wanted).mean()), "per_class": per_class, "count": len(wanted),
            "reader_accuracy": reader_accuracy}
