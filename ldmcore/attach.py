"""Attach new condition plugins to a pretrained backbone, and train only what is new.

``model.init_from=RUN_DIR`` starts a model from a trained (or imported) run whose plugins are a
prefix of this config's plugins. Weights that exist in both are copied; what the new plugins add
to the backbone starts at zero, so the pretrained model's output is bit-for-bit unchanged at
step 0 with the new conditions present:

* concat plugins widen the UNet's input convolution: the new input channels get zero weights;
* vector plugins widen ``label_emb``'s first layer with zero columns, or, when the backbone had no
  vector input, get a fresh ``label_emb`` whose last layer is zero;
* residual plugins (ControlNet, T2I-Adapter) add feature maps at the UNet's taps through
  zero-initialised last layers, and own every parameter they add (a ControlNet's copy of the
  encoder half is made from the pretrained UNet by ``init_from_backbone``, called here once the
  pretrained weights are in); the backbone's tensors are not touched at all;
* cross-attention plugins append their tokens to the context. This is *not* output-preserving:
  softmax attention renormalises over the added keys, so the pretrained output moves at step 0.
  Plugins that must leave it unchanged use ``gated_attention`` (GLIGEN: a gated self-attention
  per transformer block, gates shut) or ``decoupled_crossattn`` (IP-Adapter: a key/value path
  beside each cross-attention, value projection zero); their layers are the plugin's own
  parameters, so the encoder's state (and its plugin file) carries them and nothing here
  widens the backbone for them.

``trainer.train_only=[plugins]`` trains the plugins' encoders and the new backbone slices only;
a gradient mask keeps the pretrained input-conv channels fixed (AdamW without weight decay then
leaves them byte-identical). Plugin weights are also saved one file per plugin,
``RUN/plugins/<name>.safetensors``: the encoder's own tensors plus its backbone slices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ldmcore import checkpoint
from ldmcore.conditioning import Injection
from ldmcore.errors import CheckpointError, ConfigError, LdmError
from ldmcore.model import LatentDiffusion
from ldmcore.runfolder import load_run

IN_CONV = "unet.input_blocks.0.0.weight"
VEC_IN, VEC_OUT = "unet.label_emb.0.0.weight", "unet.label_emb.0.2"


@dataclass
class Attachment:
    """What the new plugins added to a pretrained backbone."""

    source: Path
    new_plugins: list[str] = field(default_factory=list)
    concat_slices: dict[str, tuple[int, int]] = field(default_factory=dict)  # plugin -> in-conv channels
    vector_slices: dict[str, tuple[int, int]] = field(default_factory=dict)  # plugin -> label_emb columns
    new_label_emb: bool = False
    old_in_channels: int = 0
    loaded: int = 0  # tensors copied (whole or into a widened slice) from the pretrained run


def _slices(model: LatentDiffusion, inj: Injection, start: int) -> dict[str, tuple[int, int]]:
    out, pos = {}, start
    for name, specs in model.conditioner.specs.items():
        if inj in specs:
            width = specs[inj].shape[0]
            out[name] = (pos, pos + width)
            pos += width
    return out


@torch.no_grad()
def attach_pretrained(model: LatentDiffusion, run_dir: Path) -> Attachment:
    """Load a pretrained run into ``model`` (which may enable more plugins), zero-initialising
    what the new plugins add. Refuses when the pretrained plugins are not a prefix of ``model``'s."""
    run_dir = Path(run_dir)
    try:
        old_cfg, old, _ = load_run(run_dir, use_ema=True)
    except LdmError as err:  # say which setting named the run
        raise type(err)(f"model.init_from={str(run_dir)!r}: {err}") from None
    old_names = list(old.conditioner.encoders)
    names = list(model.conditioner.encoders)
    if names[:len(old_names)] != old_names:
        raise ConfigError(f"model.init_from={str(run_dir)!r} was trained with the plugins "
                          f"{old_names}; this config must enable them first, in that order, then "
                          f"the new ones (it enables {names}).")
    att = Attachment(source=run_dir, new_plugins=names[len(old_names):],
                     old_in_channels=old.unet.shape.in_channels)
    latent = model.autoencoder.shape.latent_channels
    att.concat_slices = {n: (latent + a, latent + b) for n, (a, b) in _slices(model, Injection.CONCAT, 0).items()
                         if n in att.new_plugins}
    att.vector_slices = {n: s for n, s in _slices(model, Injection.VECTOR, 0).items() if n in att.new_plugins}
    own, theirs = model.state_dict(), old.state_dict()
    att.new_label_emb = any(k.startswith("unet.label_emb.") for k in own) and not any(
        k.startswith("unet.label_emb.") for k in theirs)
    problems = []
    for key, value in theirs.items():
        if key not in own:
            problems.append(f"{key} is not in the new model")
            continue
        target = own[key]
        att.loaded += 1
        if target.shape == value.shape:
            target.copy_(value)
        elif key == IN_CONV and target.shape[1] > value.shape[1]:
            target.zero_()
            target[:, :value.shape[1]] = value
        elif key == VEC_IN and target.shape[1] > value.shape[1]:
            target.zero_()
            target[:, :value.shape[1]] = value
        else:
            problems.append(f"{key} {tuple(value.shape)} vs {tuple(target.shape)}")
    if problems:
        raise CheckpointError(f"model.init_from={str(run_dir)!r} does not fit this config: "
                              f"{'; '.join(problems[:6])}. Only the plugins may differ; keep the "
                              f"backbone settings of the pretrained run ({old_cfg.name}).")
    if att.new_label_emb:
        own[f"{VEC_OUT}.weight"].zero_()
        own[f"{VEC_OUT}.bias"].zero_()
    for name in att.new_plugins:  # e.g. a ControlNet copies the pretrained encoder half
        model.conditioner.encoders[name].init_from_backbone(model.unet)
    return att


def train_only_params(model: LatentDiffusion, att: Attachment | None, only: list[str]
                      ) -> dict[str, torch.nn.Parameter]:
    """The parameters to train for ``trainer.train_only``: ``plugins`` (every encoder), plugin
    names, or parameter-name prefixes (``unet.out``). Everything else is frozen."""
    encoders = model.conditioner.encoders
    chosen: dict[str, torch.nn.Parameter] = {}
    for item in only:
        names = list(encoders) if item == "plugins" else [item] if item in encoders else []
        for name in names:
            chosen.update({f"conditioner.encoders.{name}.{k}": p
                           for k, p in encoders[name].named_parameters() if p.requires_grad})
            if att is not None and name in att.new_plugins:
                chosen.update(_adapter_params(model, att, name))
        if not names:
            matched = {k: p for k, p in model.named_parameters() if k.startswith(item)}
            if not matched:
                raise ConfigError(f"trainer.train_only: {item!r} names no plugin of this model "
                                  f"({', '.join(encoders) or 'none'}), is not 'plugins', and prefixes "
                                  f"no parameter.")
            chosen.update(matched)
    for k, p in model.named_parameters():
        p.requires_grad_(k in chosen)
    return chosen


def _adapter_params(model: LatentDiffusion, att: Attachment, name: str) -> dict[str, torch.nn.Parameter]:
    """The backbone tensors a new plugin owns a slice of, with gradients masked to that slice."""
    params = dict(model.named_parameters())
    out = {}
    if name in att.concat_slices:
        out[IN_CONV] = _masked(params[IN_CONV], att.concat_slices, "in_conv")
    if name in att.vector_slices:
        if att.new_label_emb:
            out.update({k: p for k, p in params.items() if k.startswith("unet.label_emb.")})
        else:
            out[VEC_IN] = _masked(params[VEC_IN], att.vector_slices, "vector")
    return out


def _masked(param: torch.nn.Parameter, slices: dict[str, tuple[int, int]], tag: str) -> torch.nn.Parameter:
    """Let gradients reach only the new plugins' input columns (dim 1) of ``param``."""
    if getattr(param, "_ldm_mask", None) != tag:
        mask = torch.zeros(param.shape[1], dtype=torch.bool)
        for a, b in slices.values():
            mask[a:b] = True
        view = (1, -1) + (1,) * (param.dim() - 2)
        param.register_hook(lambda g: g * mask.to(g.device).view(view).to(g.dtype))
        param._ldm_mask = tag
    return param


def plugin_tensors(model: LatentDiffusion, name: str, att: Attachment | None,
                   state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """One plugin's shareable weights: its encoder state and, when attached, its backbone slices
    (read from ``state``, the model's full state dict, when given: under FSDP the model's own
    UNet tensors are shards)."""
    enc = model.conditioner.encoders[name]
    tensors = checkpoint.with_prefix("encoder.", enc.state_dict())
    if att is not None and name in att.new_plugins:
        own = dict(state if state is not None else model.state_dict())
        if name in att.concat_slices:
            a, b = att.concat_slices[name]
            tensors["backbone.in_conv"] = own[IN_CONV][:, a:b]
        if name in att.vector_slices:
            if att.new_label_emb:
                tensors.update({"backbone." + k[len("unet."):]: v for k, v in own.items()
                                if k.startswith("unet.label_emb.")})
            else:
                a, b = att.vector_slices[name]
                tensors["backbone.label_emb_in"] = own[VEC_IN][:, a:b]
    return tensors


def save_plugin_weights(folder: Path, model: LatentDiffusion, att: Attachment | None, meta: dict,
                        state: dict[str, torch.Tensor] | None = None) -> None:
    """``folder/<name>.safetensors`` for every plugin that has weights (``state``: as in
    ``plugin_tensors``)."""
    for name in model.conditioner.encoders:
        tensors = plugin_tensors(model, name, att, state)
        if tensors:
            checkpoint.save(folder / f"{name}.safetensors", tensors, {**meta, "plugin": name})


@torch.no_grad()
def load_plugin_weights(model: LatentDiffusion, name: str, path: Path, att: Attachment | None = None) -> None:
    """Load a plugin file into ``model`` (its encoder and, when attached, its backbone slices)."""
    tensors, _ = checkpoint.load(path)
    enc = model.conditioner.encoders[name]
    checkpoint.load_into(enc, checkpoint.strip_prefix("encoder.", tensors), f"plugin {name!r}", path)
    own = dict(model.state_dict())
    if att is not None and name in att.concat_slices and "backbone.in_conv" in tensors:
        a, b = att.concat_slices[name]
        own[IN_CONV][:, a:b] = tensors["backbone.in_conv"]
    if att is not None and name in att.vector_slices:
        if "backbone.label_emb_in" in tensors:
            a, b = att.vector_slices[name]
            own[VEC_IN][:, a:b] = tensors["backbone.label_emb_in"]
        for k, v in tensors.items():
            if k.startswith("backbone.label_emb."):
                own["unet." + k[len("backbone."):]].copy_(v)
