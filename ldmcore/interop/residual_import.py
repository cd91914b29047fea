"""Reading a ControlNet or T2I-Adapter for ``ldm import SOURCE OUT attach_to=RUN``
(``attach_import.py`` writes the run): a diffusers ``ControlNetModel`` / ``T2IAdapter`` folder,
or an original ControlNet file (``control_model.*`` keys, safetensors).

``condition=`` says what the hint is (``image`` by default: the picture the ControlNet was
trained on, given as it is - an edge drawing, a depth map); the hint's channels must be those
the weights read.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ldmcore.errors import CheckpointError, ConfigError
from ldmcore.interop.foreign_plugin import ForeignPlugin
from ldmcore.interop.convert import _json, _load_tensors, _weights
from ldmcore.interop.residual_keys import controlnet_from_diffusers, t2i_adapter_from_diffusers

KINDS = {"ControlNetModel": "controlnet", "T2IAdapter": "t2i_adapter"}  # diffusers class -> plugin
ORIGINAL = "control_model."  # the original ControlNet's prefix (lllyasviel/ControlNet, cldm)


def read_residual(source: Path, *, condition: str | None = None, **others) -> ForeignPlugin:
    """The ``controlnet`` or ``t2i_adapter`` plugin of a diffusers folder or original file."""
    misplaced = sorted(k for k, v in others.items() if v is not None)
    if misplaced:
        raise ConfigError(f"{', '.join(misplaced)}= belong to an IP-Adapter file; {str(source)!r} "
                          f"is read as a ControlNet or T2I-Adapter (condition= says what its hint is).")
    condition = condition or "image"
    if source.is_file():
        plugin, conf, weights = "controlnet", {}, _original_controlnet(source)
    else:
        conf = _json(source / "config.json", str(source))
        plugin = KINDS.get(conf.get("_class_name", ""))
        if plugin is None:
            raise ConfigError(f"{str(source)!r} holds a {conf.get('_class_name')!r}; attach_to= "
                              f"imports a diffusers {' or '.join(KINDS)} folder, or an original "
                              f"ControlNet or IP-Adapter file, as a plugin.")
        if plugin == "t2i_adapter" and conf.get("adapter_type", "full_adapter") != "full_adapter":
            raise ConfigError(f"{str(source)!r} is a {conf['adapter_type']!r} T2I-Adapter; the "
                              f"t2i_adapter plugin is the full adapter (adapter_type full_adapter).")
        weights = _weights(source, "diffusion_pytorch_model", str(source))

    def tensors(model, enc) -> dict[str, torch.Tensor]:
        hint = enc.input_hint_block[0].in_channels if plugin == "controlnet" else (
            enc.adapter.conv_in.in_channels // enc.adapter.unshuffle.downscale_factor ** 2)
        theirs = conf.get("conditioning_channels", conf.get("in_channels")) if conf else (
            weights["input_hint_block.0.weight"].shape[1])
        if theirs != hint:
            hint_for = " (condition=edges gives one)" if theirs == 1 else ""
            raise ConfigError(f"{str(source)!r} reads hints of {theirs} channels; condition="
                              f"{condition} gives {hint}. Choose the condition whose hint has "
                              f"{theirs}{hint_for}: image has the image's channels, edges 1, "
                              f"segmap conditions.<name>.num_classes.")
        if not conf:  # the original layout: the plugin's own names
            return weights
        if plugin == "controlnet":
            return controlnet_from_diffusers(weights, model.unet.shape, str(source))
        return t2i_adapter_from_diffusers(weights, str(source))

    return ForeignPlugin(plugin, {"condition": condition}, tensors)


def _original_controlnet(path: Path) -> dict[str, torch.Tensor]:
    """An original ControlNet file's ``control_model.*`` tensors, prefix removed (the plugin's
    names are the original's); a file of them without the prefix is taken as it is."""
    tensors, _ = _load_tensors(path)
    if any(k.startswith(ORIGINAL) for k in tensors):
        tensors = {k[len(ORIGINAL):]: v for k, v in tensors.items() if k.startswith(ORIGINAL)}
    if "input_hint_block.0.weight" not in tensors:
        raise CheckpointError(f"{str(path)!r} holds no ControlNet (no control_model.input_hint_block "
                              f"tensors) and no IP-Adapter (no ip_adapter.* tensors); attach_to= "
                              f"imports an original ControlNet or IP-Adapter file, or a diffusers "
                              f"ControlNet / T2I-Adapter folder.")
    return tensors
