"""What a training-time sample grid shows, as JSON beside its PNG (``samples/step_N.json`` next to
``samples/step_N.png``), as ``ldm sample`` writes ``samples.json``.

Cell ``i`` (row ``i // nrow``, column ``i % nrow``) is conditioned on data item ``i`` and starts
from the latent noise of seed ``seed + i``; the sampler's own random numbers come from seed
``seed``, as in ``ldm sample`` (so ``ldm sample`` with the same conditions as a list, ``n=1``
and ``seed=SEED`` draws the final grid again from the final weights). Each condition is
recorded as JSON: numbers, text and small tensors (a class label, a caption, layout boxes) as
values; large tensors (a semantic map, an image) by their shape, the data item naming them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

MAX_LISTED = 64  # tensors with more elements are recorded by shape


def cell_conditions(values: dict[str, Any], names: list[str], index: int) -> dict[str, Any]:
    """The JSON form of item ``index`` of each batched condition value in ``names``."""
    return {name: plain(item(values[name], index)) for name in names if name in values}


def item(value: Any, index: int) -> Any:
    """Item ``index`` of a batched value: a tensor's or list's row; a tuple holds batched parts
    (an image and its mask), so each part gives its row."""
    if isinstance(value, tuple):
        return tuple(item(v, index) for v in value)
    if isinstance(value, (torch.Tensor, np.ndarray, list)):
        return value[index]
    return value


def plain(value: Any) -> Any:
    """A condition value as JSON: scalars and small tensors as numbers, large ones by shape."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
        if array.size > MAX_LISTED:
            return {"shape": list(array.shape), "dtype": str(array.dtype)}
        return array.tolist()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def write_sidecar(png: Path, values: dict[str, Any], names: list[str], count: int, nrow: int,
                  seed: int, **about: Any) -> Path:
    """Write ``png``'s sidecar (``png`` with ``.json``): ``about`` (step, sampler, ...), then one
    record per cell with its data item, noise seed and conditions."""
    cells = [{"cell": i, "row": i // nrow, "col": i % nrow, "item": i, "seed": seed + i,
              "conditions": cell_conditions(values, names, i)} for i in range(count)]
    path = png.with_suffix(".json")
    path.write_text(json.dumps({"grid": png.name, "nrow": nrow, "sampler_seed": seed, **about,
                                "samples": cells}, indent=1, allow_nan=False))
    return path
