"""The residual plugins of a model exported beside its diffusers pipeline: a ``controlnet``
becomes a ``ControlNetModel`` folder, a ``t2i_adapter`` a ``T2IAdapter`` folder.

One plugin of one kind takes the folder name diffusers' pipeline expects (``controlnet/``,
``adapter/``), and the pipeline becomes ``StableDiffusionControlNetPipeline`` /
``StableDiffusionAdapterPipeline``; several residual plugins are each written to a folder named
after the instance, and the pipeline stays the plain one (load them by hand).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ldmcore.interop.residual_keys import controlnet_to_diffusers, t2i_adapter_to_diffusers

PIPELINES = {"controlnet": ("controlnet", "StableDiffusionControlNetPipeline", "ControlNetModel"),
             "t2i_adapter": ("adapter", "StableDiffusionAdapterPipeline", "T2IAdapter")}
# the UNet config keys a ControlNetModel shares with UNet2DConditionModel
SHARED = ("in_channels", "block_out_channels", "layers_per_block", "down_block_types", "mid_block_type",
          "cross_attention_dim", "attention_head_dim", "use_linear_projection",
          "transformer_layers_per_block", "norm_num_groups", "flip_sin_to_cos", "freq_shift", "act_fn",
          "class_embed_type", "num_class_embeds", "projection_class_embeddings_input_dim",
          "only_cross_attention")


def residual_plugins(model) -> frozenset[str]:
    """The instance names of the model's exportable residual plugins."""
    return frozenset(n for n, enc in model.conditioner.encoders.items() if type(enc).name in PIPELINES)


def residual_parts(model, unet_cfg: dict[str, Any], version: str
                   ) -> tuple[list[tuple[str, dict[str, Any], dict[str, torch.Tensor]]], str | None]:
    """([(folder, config.json, tensors)], the pipeline class when one plugin names it)."""
    found = [(name, enc) for name, enc in model.conditioner.encoders.items()
             if name in residual_plugins(model)]
    single = len(found) == 1
    parts = []
    for name, enc in found:
        kind = type(enc).name
        folder, _, cls = PIPELINES[kind]
        state = {k: v.detach() for k, v in enc.state_dict().items()}
        if kind == "controlnet":
            convs = [m for m in enc.input_hint_block if isinstance(m, nn.Conv2d)]
            conf = {k: unet_cfg[k] for k in SHARED if k in unet_cfg}
            conf.update(conditioning_channels=convs[0].in_channels,
                        conditioning_embedding_out_channels=[convs[0].out_channels] + [
                            c.out_channels for c in convs[1:-1] if c.stride == (2, 2)])
            tensors = controlnet_to_diffusers(state, model.unet.shape)
        else:
            adapter = enc.adapter
            factor = adapter.unshuffle.downscale_factor
            conf = {"in_channels": adapter.conv_in.in_channels // factor ** 2,
                    "channels": [level.resnets[0].block1.out_channels for level in adapter.body],
                    "num_res_blocks": len(adapter.body[0].resnets), "downscale_factor": factor,
                    "adapter_type": "full_adapter"}
            tensors = t2i_adapter_to_diffusers(state)
        parts.append((folder if single else name, {"_class_name": cls, "_diffusers_version": version,
                                                   **conf}, tensors))
    return parts, PIPELINES[type(found[0][1]).name][1] if single else None
