"""diffusers' GLIGEN and IP-Adapter weights <-> the layers ldmcore plugins insert into the
transformer blocks.

diffusers keeps GLIGEN's gated layers inside its UNet (``<block>.fuser.*``, one per transformer
block, and ``position_net.*``) and IP-Adapter's key/value projections in the attention
processors (``<block>.attn2.processor.to_k_ip.0.weight``) with the image projection in
``encoder_hid_proj.image_projection_layers.0.*``. In ldmcore the plugin owns them: the layout
plugin's ``fusers.<i>.*`` and ``grounding.*``, the ip_adapter plugin's ``adapters.<i>.to_k``/``to_v``
and ``proj.*``, where ``<i>`` is the block's number in forward order. Names inside a layer are
the same on both sides; only the block paths are mapped.

IP-Adapter's original single file (``ip-adapter_sd15.safetensors``) numbers the key/value pairs
by the attention processor: ``ip_adapter.<n>.to_k_ip.weight`` where ``n`` is the index of the
block's ``attn2`` among all of diffusers' ``unet.attn_processors`` (down blocks, up blocks, then
the middle block, ``attn1`` and ``attn2`` of each transformer block in turn: 1, 3, 5, ...), and
keeps the projection as ``image_proj.proj.*`` / ``image_proj.norm.*``.
"""

from __future__ import annotations

import torch

from ldmcore.interop.keymaps import unet_keymap
from ldmcore.nn.attention import BasicTransformerBlock
from ldmcore.nn.unet import UNetModel, UNetShape

IP_PROJECTION = "encoder_hid_proj.image_projection_layers.0."
PROCESSOR_ORDER = ("down_blocks", "up_blocks", "mid_block")  # diffusers' attn_processors order


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


def _processor_rank(path: str) -> tuple:
    """Where diffusers' ``attn_processors`` lists the block at ``path``: by part, then index."""
    part, *rest = path.split(".")
    return (PROCESSOR_ORDER.index(part), *(int(p) for p in rest if p.isdigit()))


def ip_adapter_original_keymap(shape: UNetShape) -> dict[str, str]:
    """ip_adapter plugin key -> key of IP-Adapter's original single file, for a UNet of ``shape``
    (the image projection and every block's key/value projection; not the image encoder)."""
    paths = transformer_block_paths(shape)
    order = sorted(range(len(paths)), key=lambda i: _processor_rank(paths[i]))
    out = {f"proj.{ours}.{kind}": f"image_proj.{theirs}.{kind}"
           for ours, theirs in (("image_embeds", "proj"), ("norm", "norm")) for kind in ("weight", "bias")}
    for rank, i in enumerate(order):
        for name in ("to_k", "to_v"):
            out[f"adapters.{i}.{name}.weight"] = f"ip_adapter.{2 * rank + 1}.{name}_ip.weight"
    return out


def gligen_to_diffusers(state: dict[str, torch.Tensor], shape: UNetShape) -> dict[str, torch.Tensor]:
    """The gated layout plugin's layers and tokenizer in a diffusers GLIGEN UNet's names (its
    class-embedding table has no place there: GLIGEN embeds phrases with the text encoder)."""
    paths = transformer_block_paths(shape)
    out = {}
    for k, v in state.items():
        head, _, rest = k.partition(".")
        if head == "fusers":
            i, _, inside = rest.partition(".")
            out[f"{paths[int(i)]}.fuser.{inside}"] = v
        elif head == "grounding":
            out[f"position_net.{rest}"] = v
    return out
