"""Reading IP-Adapter's original single file for ``ldm import FILE OUT attach_to=RUN image_encoder=DIR``
(``attach_import.py`` writes the run): the ``ip_adapter`` plugin, its projection and key/value
layers mapped by ``block_layers.ip_adapter_original_keymap``.

The file holds the image projection (``image_proj.proj`` / ``image_proj.norm``: diffusers'
``ImageProjection``) and one key/value pair per cross-attention layer, not the image encoder
whose embeddings it was trained on (a CLIP vision model with projection). ``image_encoder=`` names
that local ``transformers`` folder; it is copied into the run (``image_encoder/``) and read, frozen,
by the plugin (``conditions.ip_adapter.model``). Only the base IP-Adapter's projection is read:
the Plus, Full-Face and FaceID variants (a Resampler, per-patch tokens, LoRA layers) are refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from ldmcore.errors import CheckpointError, ConfigError
from ldmcore.interop.block_layers import ip_adapter_original_keymap
from ldmcore.interop.convert import _load_tensors
from ldmcore.interop.foreign_plugin import ForeignPlugin
from ldmcore.interop.keymaps import rename

IMAGE_ENCODER_DIR = "image_encoder"  # where the run keeps the image encoder's folder
PARTS = ("image_proj.", "ip_adapter.")


def is_ip_adapter_file(names: Iterable[str]) -> bool:
    """Do these tensor names hold IP-Adapter's key/value layers (``ip_adapter.<n>.*``)?"""
    return any(k.startswith(PARTS[1]) for k in names)


def read_ip_adapter(source: Path, *, image_encoder: Path | None = None, condition: str | None = None
                    ) -> ForeignPlugin:
    """The ``ip_adapter`` plugin of an original IP-Adapter ``.safetensors`` file."""
    if condition is not None:
        raise ConfigError(f"condition= says what a ControlNet's hint is; {str(source)!r} is an "
                          f"IP-Adapter, whose condition is a reference image.")
    tensors, _ = _load_tensors(source)
    if "image_proj.proj.weight" not in tensors or "image_proj.norm.weight" not in tensors:
        found = sorted({k.split(".")[1] for k in tensors if k.startswith(PARTS[0])})
        raise CheckpointError(f"{str(source)!r} is an IP-Adapter whose image projection has "
                              f"{found or 'no'} layers; the ip_adapter plugin reads the base "
                              f"IP-Adapter's (image_proj.proj and image_proj.norm: a linear map to "
                              f"tokens, then LayerNorm). The Plus, Full-Face and FaceID variants "
                              f"are not supported.")
    if image_encoder is None:
        raise ConfigError(f"{str(source)!r} holds IP-Adapter's projection and key/value layers but "
                          f"not the image encoder it reads embeddings from (a CLIP vision model "
                          f"with projection, e.g. the IP-Adapter repository's models/image_encoder). "
                          f"Name its local transformers folder: image_encoder=DIR.")
    folder = Path(image_encoder)
    if not folder.is_dir():
        raise ConfigError(f"image_encoder={str(folder)!r} is not a folder; name the local "
                          f"transformers folder of the CLIP vision model this IP-Adapter reads.")
    proj = tensors["image_proj.proj.weight"]
    width = tensors["image_proj.norm.weight"].shape[0]
    if proj.shape[0] % width:
        raise CheckpointError(f"{str(source)!r}: image_proj.proj makes {proj.shape[0]} values, not "
                              f"a whole number of {width}-wide tokens.")
    section = {"model": IMAGE_ENCODER_DIR, "num_tokens": proj.shape[0] // width, "scale": 1.0}

    def plugin_tensors(model, enc) -> dict[str, torch.Tensor]:
        context = model.unet.shape.context_dim
        if width != context:
            raise ConfigError(f"{str(source)!r} makes {width}-wide tokens; the run's UNet reads "
                              f"{context}-wide context. Attach it to the Stable Diffusion it was "
                              f"trained for.")
        if enc.vision.dim != proj.shape[1]:
            raise ConfigError(f"image_encoder={str(folder)!r} gives {enc.vision.dim}-d embeddings; "
                              f"{str(source)!r} projects {proj.shape[1]}-d ones. Name the image "
                              f"encoder this IP-Adapter was trained with.")
        kmap = ip_adapter_original_keymap(model.unet.shape)
        return rename(tensors, {v: k for k, v in kmap.items()}, "IP-Adapter", str(source))

    return ForeignPlugin("ip_adapter", section, plugin_tensors, {IMAGE_ENCODER_DIR: folder})

