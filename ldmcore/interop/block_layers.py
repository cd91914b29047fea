"""diffusers' GLIGEN and IP-Adapter weights <-> the layers ldmcore plugins insert into the
transformer blocks.

diffusers keeps GLIGEN's gated layers inside its UNet (``<block>.fuser.*``, one per transformer
block, and ``position_net.*``) and IP-Adapter's key/value projections in the attention
processors (``<block>.attn2.processor.to_k_ip.0.weight``) with the image projection in
``encoder_hid_proj.image_projection_layers.0.*``. In ldmcore the plugin owns them: the layout
plugin's ``fusers.<i>.*`` and ``grounding.*``, the ip_adapter plugin's ``adapters.<i>.to_k``/``to_v``
and ``proj.*``, where ``<i>`` is the block's number in forward order. Names inside a layer are
the same on both sides; only the block paths are mapped.
"""

from __future__ import annotations

import torch

from ldmcore.interop.keymaps import unet_keymap
from ldmcore.nn.attention import BasicTransformerBlock
from ldmcore.nn.unet import UNetModel, UNetShape

IP_PROJECTION = "encoder_hid_proj.image_projection_layers.0."


def transformer_block_paths(shape: UNetShape) -> list[str]:
    """diffusers' module path of each transformer block, in ldmcore's block order."""
    kmap = unet_keymap(shape)
    with torch.device("meta"):
        unet = UNetModel(shape)
    ours = [name for name, m in unet.named_modules() if isinstance(m, BasicTransformerBlock)]
    return [kmap[f"{p}.norm1.weight"][:-len(".norm1.weight")] for p in ours]


def _block_layers(state: dict[str, torch.Tensor], shape: UNetShape, inside: str, ours: str
                  ) -> dict[str, torch.Tensor]:
    """Tensors under ``<block path>.<inside>`` renamed to ``ours`` (formatted with the block's
    number ``i``) + the rest of the key."""
    out = {}
    for i, path in enumerate(transformer_block_paths(shape)):
        head = f"{path}.{inside}"
        out.update({ours.format(i=i) + k[len(head):]: v for k, v in state.items() if k.startswith(head)})
    return out


def gligen_from_diffusers(state: dict[str, torch.Tensor], shape: UNetShape) -> dict[str, torch.Tensor]:
    """The gated layout plugin's layer and tokenizer tensors from a diffusers GLIGEN UNet's
    state dict (``attention_type="gated"``); the class embedding is not in it (GLIGEN's phrases
    come from a text encoder)."""
    tensors = _block_layers(state, shape, "fuser.", "fusers.{i}.")
    tensors.update({"grounding." + k[len("position_net."):]: v for k, v in state.items()
                    if k.startswith("position_net.")})
    return tensors


def ip_adapter_from_diffusers(state: dict[str, torch.Tensor], shape: UNetShape) -> dict[str, torch.Tensor]:
    """The ip_adapter plugin's projection and key/value tensors from a diffusers UNet with one
    IP-Adapter loaded (``IPAdapterAttnProcessor2_0`` on every cross-attention, ``ImageProjection``)."""
    tensors = {}
    for name in ("to_k", "to_v"):
        tensors.update(_block_layers(state, shape, f"attn2.processor.{name}_ip.0.", f"adapters.{{i}}.{name}."))
    tensors.update({"proj." + k[len(IP_PROJECTION):]: v for k, v in state.items()
                    if k.startswith(IP_PROJECTION)})
    return tensors
