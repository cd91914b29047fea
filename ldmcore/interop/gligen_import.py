"""A diffusers GLIGEN pipeline folder (``StableDiffusionGLIGENPipeline``: a UNet with
``attention_type="gated"``) as a run with the ``layout`` plugin, ``injection: gated``.

The UNet's gated layers (``<block>.fuser.*``) and grounding tokenizer (``position_net.*``) are
the plugin's (``block_layers.gligen_from_diffusers``); the rest is an ordinary SD UNet.

GLIGEN grounds each box on a *phrase*: the pooled output of the pipeline's CLIP text encoder for
that phrase's words. The layout plugin grounds each box on a *class*, a row of its class-embedding
table. The two meet where the table's rows are the text encoder's pooled outputs of the class
names: the importer embeds each phrase given with ``phrases=`` once, exactly as the pipeline
does, and writes the rows; ``cond.layout='[[x0,y0,x1,y1,"a cat"]]'`` then gives what GLIGEN gives
for the phrase "a cat". Phrases not named at import time need another import (the plugin has no
text encoder of its own); ``phrase_table`` is also what ``ldm export`` checks a table against
before writing it as a GLIGEN pipeline (``inserted_export.py``).
"""

from __future__ import annotations

from pathlib import Path
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


def split_gligen(state: dict[str, torch.Tensor], shape: UNetShape
                 ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(the UNet's own tensors, the gated layout plugin's layers and tokenizer)."""
    return ({k: v for k, v in state.items() if not is_gated(k)},
            gligen_from_diffusers({k: v for k, v in state.items() if is_gated(k)}, shape))


def layout_section(layers: dict[str, torch.Tensor], phrases: tuple[str, ...]) -> dict[str, Any]:
    """The ``conditions.layout`` config that holds these GLIGEN layers, one class per phrase."""
    first = layers["grounding.linears.0.weight"]
    position = layers["grounding.null_position_feature"].shape[0]
    return {"injection": "gated", "embed_dim": first.shape[1] - position, "num_freqs": position // 8,
            "grounding_hidden": first.shape[0], "max_boxes": GLIGEN_MAX_OBJECTS,
            "num_classes": len(phrases), "class_names": list(phrases), "drop_prob": 0.0,
            "scheduled_sampling_beta": GLIGEN_SCHEDULED_SAMPLING}


def phrase_table(text_model, tokenizer, phrases: tuple[str, ...]) -> torch.Tensor:
    """(len(phrases), width): each phrase through the CLIP text encoder, its pooled output, as
    StableDiffusionGLIGENPipeline embeds ``gligen_phrases``."""
    device = next(text_model.parameters()).device
    with torch.no_grad():
        return torch.cat([text_model(**tokenizer([p], return_tensors="pt").to(device)).pooler_output
                          for p in phrases]).float()


def layout_phrase_table(text_folder: Path, tokenizer_folder: Path, phrases: tuple[str, ...]) -> torch.Tensor:
    """``phrase_table`` of the text encoder and tokenizer saved in these folders."""
    from transformers import AutoTokenizer, CLIPTextModel

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_folder), local_files_only=True)
    model = CLIPTextModel.from_pretrained(str(text_folder), local_files_only=True,
                                          use_safetensors=True).eval()
    return phrase_table(model, tokenizer, phrases)


def gligen_plugin(state: dict[str, torch.Tensor], shape: UNetShape, phrases: tuple[str, ...] | None,
                  text_folder: Path | None, tokenizer: Path | None, source: str
                  ) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, torch.Tensor]]:
    """(the UNet's tensors, the layout section, the layout plugin's tensors) of a GLIGEN UNet."""
    if not phrases:
        raise ConfigError(f"{source!r} is a GLIGEN pipeline: it grounds each box on a phrase, which "
                          f"the layout plugin takes as a class. Name the phrases its boxes will "
                          f"carry, e.g. phrases='a cat,a dog' (each is embedded once with the "
                          f"pipeline's text encoder, as GLIGEN embeds them; cond.layout then names "
                          f"them: '[[0.1,0.1,0.5,0.5,\"a cat\"]]').")
    if text_folder is None or tokenizer is None:
        raise ConfigError(f"{source!r} is a GLIGEN pipeline without text_encoder/ and tokenizer/, "
                          f"which embed its phrases; give the complete pipeline folder.")
    unet, layers = split_gligen(state, shape)
    table = layout_phrase_table(text_folder, tokenizer, phrases)
    section = layout_section(layers, phrases)
    if table.shape[1] != section["embed_dim"]:
        raise ConfigError(f"{source!r}: its grounding tokenizer reads {section['embed_dim']}-d "
                          f"phrases, its text encoder gives {table.shape[1]}-d ones.")
    return unet, section, {**layers, "class_embedding.weight": table}
