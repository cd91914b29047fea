"""A diffusers GLIGEN pipeline folder (``StableDiffusionGLIGENPipeline``: a UNet with
``attention_type="gated"``) as a run with the ``layout`` plugin, ``injection: gated``.

The UNet's gated layers (``<block>.fuser.*``) and grounding tokenizer (``position_net.*``) are
the plugin's (``block_layers.gligen_from_diffusers``); the rest is an ordinary SD UNet.

GLIGEN grounds each box on a *phrase*: the pooled output of the pipeline's CLIP text encoder for
the phrase. The layout plugin does the same with a phrase model
(``conditions.layout.phrase_model``): the import points it at the run's own text encoder
(``text_encoder/``, which the ``text`` plugin reads too), so ``cond.layout`` takes any phrase,
``'[[x0,y0,x1,y1,"a cat"]]'``, and gives what GLIGEN gives for it. ``phrases=`` optionally names
the phrases ``ldm serve``'s box widget offers (the layout's ``class_names``). The pipeline's
scheduled sampling (its gated layers in the first 30% of the steps) is the layout's
``scheduled_sampling_beta``; it has GLIGEN's 30 box slots.
"""

from __future__ import annotations

from typing import Any

import torch

from ldmcore.errors import ConfigError
from ldmcore.interop.block_layers import gligen_from_diffusers
from ldmcore.nn.unet import UNetShape

GLIGEN_MAX_OBJECTS = 30  # StableDiffusionGLIGENPipeline pads every layout to 30 boxes
GLIGEN_SCHEDULED_SAMPLING = 0.3  # the pipeline's gligen_scheduled_sampling_beta default
GATED_PARTS = (".fuser.", "position_net.")


def is_gated(key: str) -> bool:
    return any(part in key or key.startswith(part) for part in GATED_PARTS)


def gligen_plugin(state: dict[str, torch.Tensor], shape: UNetShape, phrases: tuple[str, ...] | None,
                  text_dir: str | None, source: str
                  ) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, torch.Tensor]]:
    """(the UNet's tensors, the layout section, the layout plugin's tensors) of a GLIGEN UNet
    whose phrases the run's text encoder at ``text_dir`` (inside the run) embeds."""
    if text_dir is None:
        raise ConfigError(f"{source!r} is a GLIGEN pipeline without text_encoder/ and tokenizer/, "
                          f"which embed its phrases; give the complete pipeline folder.")
    layers = gligen_from_diffusers({k: v for k, v in state.items() if is_gated(k)}, shape)
    position = layers["grounding.null_position_feature"].shape[0]
    section: dict[str, Any] = {
        "injection": "gated", "phrase_model": text_dir, "num_freqs": position // 8,
        "grounding_hidden": layers["grounding.linears.0.weight"].shape[0],
        "max_boxes": GLIGEN_MAX_OBJECTS, "scheduled_sampling_beta": GLIGEN_SCHEDULED_SAMPLING,
        "drop_prob": 0.0}
    if phrases:
        section["class_names"] = list(phrases)
    return {k: v for k, v in state.items() if not is_gated(k)}, section, layers
