"""Parameter-name maps of the residual plugins: diffusers' ``ControlNetModel`` and
``T2IAdapter`` (full adapter) <-> the ``controlnet`` and ``t2i_adapter`` plugins.

A ControlNet's copy of the encoder half carries the UNet's own names on both sides, so its map
is the UNet's (``keymaps.unet_keymap``) restricted to the encoder half; the hint encoder and the
zero convolutions are renamed one by one (the plugin uses the original ControlNet's names:
``input_hint_block.N``, ``zero_convs.N.0``, ``middle_block_out.0``). The adapter's network has
diffusers' names in the plugin; the plugin's per-level gains (its zero-initialised last layer,
which diffusers' adapter does not have) are 1 for an imported adapter.
"""

from __future__ import annotations

import torch

from ldmcore.errors import ConfigError
from ldmcore.interop.keymaps import rename, unet_keymap
from ldmcore.nn.unet import UNetShape

ENCODER_HALF = ("time_embed.", "label_emb.", "input_blocks.", "middle_block.")


LINEAR_VECTOR = "label_emb.weight"  # a linear vector input: diffusers' class-embedding table, transposed


def controlnet_keymap(shape: UNetShape, hint_convs: int) -> dict[str, str]:
    """Plugin key -> diffusers ``ControlNetModel`` key, for a backbone of ``shape`` and a hint
    encoder of ``hint_convs`` convolutions (input, the pairs per stride-2 step, output)."""
    out = {k: v for k, v in unet_keymap(shape).items() if k.startswith(ENCODER_HALF)}
    for kind in ("weight", "bias"):
        out[f"input_hint_block.0.{kind}"] = f"controlnet_cond_embedding.conv_in.{kind}"
        for j in range(hint_convs - 2):
            out[f"input_hint_block.{2 + 2 * j}.{kind}"] = f"controlnet_cond_embedding.blocks.{j}.{kind}"
        out[f"input_hint_block.{2 * hint_convs - 2}.{kind}"] = f"controlnet_cond_embedding.conv_out.{kind}"
        for i in range(_input_blocks(shape)):
            out[f"zero_convs.{i}.0.{kind}"] = f"controlnet_down_blocks.{i}.{kind}"
        out[f"middle_block_out.0.{kind}"] = f"controlnet_mid_block.{kind}"
    return out


def _input_blocks(shape: UNetShape) -> int:
    levels = len(shape.channel_mult)
    return 1 + levels * shape.num_res_blocks + levels - 1


def controlnet_from_diffusers(state: dict[str, torch.Tensor], shape: UNetShape, source: str
                              ) -> dict[str, torch.Tensor]:
    """A diffusers ControlNet's state dict as the ``controlnet`` plugin's (every key accounted
    for, or one error listing what does not match)."""
    hint_convs = 2 + sum(1 for k in state if k.startswith("controlnet_cond_embedding.blocks.")
                         and k.endswith(".weight"))
    kmap = controlnet_keymap(shape, hint_convs)
    ours = rename(state, {v: k for k, v in kmap.items()}, "controlnet", source)
    if LINEAR_VECTOR in ours:
        ours[LINEAR_VECTOR] = ours[LINEAR_VECTOR].t().contiguous()
    return ours


def controlnet_to_diffusers(state: dict[str, torch.Tensor], shape: UNetShape) -> dict[str, torch.Tensor]:
    """The ``controlnet`` plugin's state dict in diffusers' ``ControlNetModel`` names."""
    hint_convs = sum(1 for k in state if k.startswith("input_hint_block.") and k.endswith(".weight"))
    kmap = controlnet_keymap(shape, hint_convs)
    return {kmap[k]: (v.t().contiguous() if k == LINEAR_VECTOR else v) for k, v in state.items()}


def t2i_adapter_to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``t2i_adapter`` plugin's state dict as diffusers' full adapter's. Its learned
    per-level gains have no counterpart there: they export only where they are all 1."""
    gains = {k: v for k, v in state.items() if k.startswith("gain.")}
    moved = sorted(k for k, v in gains.items() if not bool((v == 1).all()))
    if moved:
        raise ConfigError(f"this adapter's learned gains {moved[:3]} are not 1, and diffusers' "
                          f"T2IAdapter has no layer to hold them (each scales a level's output "
                          f"after its residual sum); it can be used and shared as an ldmcore "
                          f"plugin file (RUN/plugins/<name>.safetensors) only.")
    return {k: v for k, v in state.items() if k not in gains}


def t2i_adapter_from_diffusers(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """A diffusers full adapter's state dict as the ``t2i_adapter`` plugin's, gains 1."""
    ours = rename(state, {k: k for k in state if k.startswith("adapter.")}, "t2i_adapter", source)
    levels = sorted({int(k.split(".")[2]) for k in ours if k.startswith("adapter.body.")})
    for level in levels:
        width = ours[f"adapter.body.{level}.resnets.0.block2.weight"].shape[0]
        ours[f"gain.{level}"] = torch.ones(width)
    return ours
