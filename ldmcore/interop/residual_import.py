"""``ldm import SOURCE OUT_DIR attach_to=RUN``: a diffusers ControlNet or T2I-Adapter folder, or an
original ControlNet file (``control_model.*`` keys, safetensors), as a plugin attached to a run
(an imported Stable Diffusion run, or any run whose UNet it fits).

The new run is ``RUN`` with the plugin enabled (``conditions.<name>``, the folder's weights
mapped by ``residual_keys``), attached as ``model.init_from=RUN`` attaches it: the backbone is
``RUN``'s, byte for byte, and the plugin's file ``plugins/<name>.safetensors`` carries all it
adds. ``condition=`` says what the hint is (``image`` by default: the picture the ControlNet was
trained on, given as it is - an edge drawing, a depth map). The text encoder folder of ``RUN``
comes along, since a run follows paths only inside its own folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

from ldmcore import checkpoint
from ldmcore.attach import attach_pretrained, save_plugin_weights
from ldmcore.build import build_model
from ldmcore.config import INSTANCE_OF
from ldmcore.errors import CheckpointError, ConfigError
from ldmcore.interop.convert import TEXT_DIR, _json, _load_tensors, _weights
from ldmcore.interop.residual_keys import controlnet_from_diffusers, t2i_adapter_from_diffusers
from ldmcore.runfolder import RunFolder, run_config, run_metadata

KINDS = {"ControlNetModel": "controlnet", "T2IAdapter": "t2i_adapter"}  # diffusers class -> plugin
ORIGINAL = "control_model."  # the original ControlNet's prefix (lllyasviel/ControlNet, cldm)


def import_residual_plugin(source: Path | str, out_dir: Path | str, attach_to: Path | str, *,
                           condition: str = "image", name: str | None = None,
                           overwrite: bool = False) -> Path:
    """Write the run ``out_dir``: ``attach_to`` with the plugin of the diffusers folder ``source``."""
    source, out, base = Path(source), Path(out_dir), Path(attach_to)
    if source.is_file():
        plugin, conf, weights = "controlnet", {}, _original_controlnet(source)
    else:
        conf = _json(source / "config.json", str(source))
        plugin = KINDS.get(conf.get("_class_name", ""))
        if plugin is None:
            raise ConfigError(f"{str(source)!r} holds a {conf.get('_class_name')!r}; attach_to= "
                              f"imports a diffusers {' or '.join(KINDS)} folder as a plugin.")
        if plugin == "t2i_adapter" and conf.get("adapter_type", "full_adapter") != "full_adapter":
            raise ConfigError(f"{str(source)!r} is a {conf['adapter_type']!r} T2I-Adapter; the "
                              f"t2i_adapter plugin is the full adapter (adapter_type full_adapter).")
        weights = _weights(source, "diffusion_pytorch_model", str(source))
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{str(out)!r} already exists and is not empty; choose a new OUT_DIR or "
                          f"pass overwrite=true.")
    RunFolder(out).check_claim(resume=False, overwrite=True, what="OUT_DIR")
    name = name or plugin
    base_cfg = run_config(base)
    if name in base_cfg.conditions:
        raise ConfigError(f"attach_to={str(base)!r} already has a condition {name!r}; give the "
                          f"plugin another name (name=...).")
    section: dict[str, Any] = {"condition": condition, **({INSTANCE_OF: plugin} if name != plugin else {})}
    cfg = base_cfg.model_copy(update={
        "name": out.name, "run_dir": out, "conditions": {**base_cfg.conditions, name: section},
        "model": base_cfg.model.model_copy(update={"init_from": base})})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if (base / TEXT_DIR).is_dir():
            shutil.copytree(base / TEXT_DIR, tmp / TEXT_DIR)
        model = build_model(cfg, root=tmp)
        att = attach_pretrained(model, base)
        enc = model.conditioner.encoders[name]
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
            state = weights
        elif plugin == "controlnet":
            state = controlnet_from_diffusers(weights, model.unet.shape, str(source))
        else:
            state = t2i_adapter_from_diffusers(weights, str(source))
        checkpoint.load_into(enc, state, plugin, source)
        _write_run(tmp, cfg, model, att, {"source": str(source), "attached_to": str(base), "plugin": name})
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except CheckpointError as err:
        raise CheckpointError(f"attach_to={str(base)!r}: {err}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _original_controlnet(path: Path) -> dict[str, torch.Tensor]:
    """An original ControlNet file's ``control_model.*`` tensors, prefix removed (the plugin's
    names are the original's); a file of them without the prefix is taken as it is."""
    tensors, _ = _load_tensors(path)
    if any(k.startswith(ORIGINAL) for k in tensors):
        tensors = {k[len(ORIGINAL):]: v for k, v in tensors.items() if k.startswith(ORIGINAL)}
    if "input_hint_block.0.weight" not in tensors:
        raise CheckpointError(f"{str(path)!r} holds no ControlNet (no control_model.input_hint_block "
                              f"tensors); attach_to= imports an original ControlNet file or a "
                              f"diffusers ControlNet / T2I-Adapter folder.")
    return tensors


def _write_run(root: Path, cfg, model, att, record: dict[str, str]) -> None:
    run = RunFolder(root)
    run.checkpoints.mkdir(parents=True, exist_ok=True)
    run.mark()
    run.config.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    meta = run_metadata(cfg, model, 0, source=record)
    with torch.no_grad():
        checkpoint.save(run.last, dict(model.state_dict()), meta)
    save_plugin_weights(root / "plugins", model, att, {"step": 0})
    (root / "import.json").write_text(json.dumps(record, indent=1))
