"""The plugins with layers inside the transformer blocks, exported beside a diffusers pipeline.

* A ``layout`` with ``injection: gated`` makes the folder a ``StableDiffusionGLIGENPipeline``:
  its gated layers and tokenizer go into the UNet (``attention_type="gated"``). That is exact only
  where the layout embeds its labels as the pipeline does, with the run's text encoder
  (``phrase_model``, as an imported GLIGEN: ``gligen_import.py``), and has GLIGEN's 30 slots; a
  class table, another phrase model or another slot count is refused, naming why.
* An ``ip_adapter`` reading a transformers vision model is written in IP-Adapter's original
  single-file layout (``ip_adapter/ip-adapter.safetensors``, what ``pipe.load_ip_adapter`` reads),
  with its vision model as the pipeline's ``image_encoder/``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from ldmcore import checkpoint
from ldmcore.errors import ConfigError
from ldmcore.interop.block_layers import gligen_to_diffusers, ip_adapter_original_keymap
from ldmcore.interop.gligen_import import GLIGEN_MAX_OBJECTS

IP_ADAPTER_FILE = ("ip_adapter", "ip-adapter.safetensors")  # subfolder, weight_name for load_ip_adapter


def _gated_layout(model) -> str | None:
    found = [n for n, enc in model.conditioner.encoders.items()
             if type(enc).name == "layout" and enc.config.injection == "gated"]
    return found[0] if found else None


def _ip_adapter(model) -> str | None:
    found = [n for n, enc in model.conditioner.encoders.items() if type(enc).name == "ip_adapter"]
    return found[0] if found else None


def inserted_plugins(model) -> frozenset[str]:
    """The instance names of the model's plugins that export with the pipeline."""
    return frozenset(n for n in (_gated_layout(model), _ip_adapter(model)) if n is not None)


def gligen_unet(model, text) -> dict[str, torch.Tensor]:
    """The gated layout's tensors in the GLIGEN UNet's names, {} without one; a layout that
    the GLIGEN pipeline would not reproduce is refused."""
    name = _gated_layout(model)
    if name is None:
        return {}
    enc = model.conditioner.encoders[name]
    if text is None:
        raise ConfigError(f"the gated layout {name!r} exports as a GLIGEN pipeline, which embeds "
                          f"its phrases with the text encoder; this model has no text plugin.")
    if enc.config.max_boxes != GLIGEN_MAX_OBJECTS:
        raise ConfigError(f"conditions.{name}.max_boxes={enc.config.max_boxes}; the GLIGEN pipeline "
                          f"always attends {GLIGEN_MAX_OBJECTS} box slots, so this layout would "
                          f"sample differently there. Only a layout of {GLIGEN_MAX_OBJECTS} slots "
                          f"(an imported GLIGEN) exports.")
    if enc.config.position_freqs:
        raise ConfigError(f"conditions.{name}.position_freqs={enc.config.position_freqs}: its gated "
                          f"layers read where each visual token lies, which GLIGEN's layers do not; "
                          f"only a layout with position_freqs=0 exports as a GLIGEN pipeline.")
    if "phrases" not in enc.__dict__ or not _same_phrases(enc.phrases, text):
        raise ConfigError(f"the gated layout {name!r} does not embed its labels with the run's text "
                          f"encoder (conditions.{name}.phrase_model); the GLIGEN pipeline embeds "
                          f"every phrase with its text encoder and has no place for a class table "
                          f"or another model. Share the plugin as plugins/{name}.safetensors instead.")
    state = {k: v.detach() for k, v in enc.state_dict().items()}
    return gligen_to_diffusers(state, model.unet.shape)


def _same_phrases(phrases, text) -> bool:
    """Does the layout's phrase model embed as the text plugin's encoder does (pooled output)?"""
    probes = ["a", "a red circle"]
    device = next(text.transformer.parameters()).device
    with torch.no_grad():
        theirs = torch.cat([text.transformer(**text.tokenizer([p], return_tensors="pt").to(device)).pooler_output
                            for p in probes]).float().cpu()
    ours = phrases(probes)
    return ours.shape == theirs.shape and bool(torch.allclose(ours, theirs, rtol=1e-4, atol=1e-5))


def write_ip_adapter(model, root: Path) -> dict[str, Any]:
    """Write the IP-Adapter file and image encoder into the pipeline folder ``root``; the
    model_index entries they need ({} without an ip_adapter)."""
    name = _ip_adapter(model)
    if name is None:
        return {}
    enc = model.conditioner.encoders[name]
    if "vision" not in enc.__dict__:
        raise ConfigError(f"the ip_adapter {name!r} embeds images with its small trainable encoder, "
                          f"which diffusers' IP-Adapter has no place for; only an ip_adapter "
                          f"reading a transformers vision model (conditions.{name}.model=PATH) "
                          f"exports.")
    folder, weight_name = IP_ADAPTER_FILE
    (root / folder).mkdir()
    checkpoint.save(root / folder / weight_name, _original_layout(enc, model.unet.shape))
    vision = enc.vision.model
    vision.save_pretrained(str(root / "image_encoder"), safe_serialization=True)
    if (enc.vision.folder / "preprocessor_config.json").is_file():
        shutil.copy2(enc.vision.folder / "preprocessor_config.json", root / "image_encoder")
    return {"image_encoder": ["transformers", type(vision).__name__]}


def _original_layout(enc, shape) -> dict[str, torch.Tensor]:
    """The ``ip_adapter`` plugin's tensors in IP-Adapter's original single-file names."""
    kmap = ip_adapter_original_keymap(shape)
    state = enc.state_dict()
    extra = sorted(k for k in state if k not in kmap)
    if extra:
        raise ConfigError(f"this ip_adapter plugin has layers IP-Adapter's file has no place for "
                          f"({', '.join(extra[:3])}: a small trainable image encoder); only an "
                          f"ip_adapter reading a transformers vision model (model=PATH) exports.")
    return {kmap[k]: v.detach().contiguous() for k, v in state.items()}
