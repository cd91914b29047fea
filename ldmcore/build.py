"""Build models from a validated config: plugin names resolve through the registry here.

This is "whoever builds a model" in the design: it turns config sections into an autoencoder,
the enabled condition encoders (each given the backbone's spec), and a UNet whose condition
widths are derived from those encoders.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ldmcore import checkpoint
from ldmcore.conditioning import BackboneSpec, ConditionEncoder, Conditioner, EncoderConfig
from ldmcore.config import AutoencoderConfig, ExperimentConfig, resolve_conditions
from ldmcore.diffusion.schedule import NoiseSchedule
from ldmcore.errors import ConfigError
from ldmcore.model import LatentDiffusion, derive_unet_shape
from ldmcore.nn.autoencoder import AutoencoderKL, AutoencoderShape
from ldmcore.nn.pixel_space import FirstStage, PixelSpace
from ldmcore.nn.taps import residual_taps
from ldmcore.nn.unet import UNetModel, UNetShape
from ldmcore.registry import Registry, default_registry
from ldmcore.sampling import sampling_plan


def autoencoder_shape(ae: AutoencoderConfig, image_channels: int) -> AutoencoderShape:
    if ae.kind == "pixels":  # the latent is the image: its channels, one level
        return AutoencoderShape(in_channels=image_channels, out_channels=image_channels,
                                latent_channels=image_channels, ch_mult=(1,))
    return AutoencoderShape(in_channels=image_channels, out_channels=image_channels,
                            latent_channels=ae.latent_channels, ch=ae.ch, ch_mult=ae.ch_mult,
                            num_res_blocks=ae.num_res_blocks, attn_levels=ae.attn_levels,
                            norm_groups=ae.norm_groups)


def build_autoencoder(cfg: ExperimentConfig) -> FirstStage:
    ae = cfg.autoencoder
    if ae.kind == "pixels":
        return PixelSpace(autoencoder_shape(ae, cfg.data.channels))
    _check_autoencoder_groups(ae)
    return AutoencoderKL(autoencoder_shape(ae, cfg.data.channels))


def backbone_spec(cfg: ExperimentConfig, root: Path | None = None,
                  trusted_paths: frozenset[str] = frozenset()) -> BackboneSpec:
    """What plugins learn of the backbone; ``root`` is the folder relative plugin paths resolve
    against (the run folder when a run is loaded), ``trusted_paths`` those the user gave."""
    f = cfg.autoencoder.downsample_factor
    size = cfg.data.image_size
    if size % f:
        raise ConfigError(f"data.image_size={size} is not divisible by the autoencoder's "
                          f"downsampling factor f={f} (autoencoder.ch_mult has "
                          f"{len(cfg.autoencoder.ch_mult)} levels); use a multiple of {f}.")
    latent = (size // f, size // f)
    channels = autoencoder_shape(cfg.autoencoder, cfg.data.channels).latent_channels
    return BackboneSpec(latent_channels=channels, latent_size=latent,
                        context_dim=cfg.model.unet.context_dim, image_channels=cfg.data.channels,
                        image_size=(size, size), root=root, trusted_paths=trusted_paths,
                        residual_taps=residual_taps(base_unet_shape(cfg), latent),
                        transformer_blocks=base_unet_shape(cfg).transformer_blocks())


def build_conditioner(cfg: ExperimentConfig, registry: Registry | None = None,
                      autoencoder: FirstStage | None = None, root: Path | None = None,
                      trusted_paths: frozenset[str] = frozenset()) -> Conditioner:
    spec = backbone_spec(cfg, root, trusted_paths)
    if autoencoder is not None:
        spec = replace(spec, encode=frozen_encoder(autoencoder))
    encoders = {name: instance(cls, name, config, spec)
                for name, (cls, config) in resolve_conditions(cfg, registry).items()}
    return Conditioner(encoders)


def instance(cls: type[ConditionEncoder], name: str, config: EncoderConfig, spec: BackboneSpec
             ) -> ConditionEncoder:
    """Plugin ``cls`` built as the instance ``name`` (its own name, or another when a config
    section enables a second instance): ``self.name`` is then the instance's, so it reads
    ``cond.<instance>=`` and ``batch[<instance>]``."""
    enc = cls(config, spec)
    if name != cls.name:
        enc.name = name
    return enc


def build_model(cfg: ExperimentConfig, autoencoder: FirstStage | None = None,
                registry: Registry | None = None, root: Path | None = None,
                trusted_paths: frozenset[str] = frozenset()) -> LatentDiffusion:
    """The full LatentDiffusion for ``cfg`` (a fresh autoencoder unless one is given); it samples
    with the plan of ``cfg.sampler`` unless ``sample`` is given another."""
    check_shapes(cfg)
    autoencoder = autoencoder if autoencoder is not None else build_autoencoder(cfg)
    conditioner = build_conditioner(cfg, registry, autoencoder, root, trusted_paths)
    latent = backbone_spec(cfg).latent_size
    shape = derive_unet_shape(base_unet_shape(cfg), autoencoder.shape.latent_channels, conditioner,
                              cfg.model.unet.context_dim)
    d = cfg.model.diffusion
    schedule = NoiseSchedule.build(d.schedule, d.timesteps, d.beta_start, d.beta_end,
                                   zero_terminal_snr=d.zero_terminal_snr)
    if d.residual_scale != 1.0 and conditioner.base_plugin is None:
        raise ConfigError(f"model.diffusion.residual_scale={d.residual_scale} scales the residual from "
                          f"a base image, and none of the enabled plugins ({', '.join(conditioner.encoders)}) "
                          f"gives one; enable a base (conditions.lowres.base=bicubic or "
                          f"conditions.inpaint.base=blur_fill) or leave residual_scale at 1.")
    return LatentDiffusion(autoencoder, UNetModel(shape), conditioner, schedule, latent, d.prediction,
                           d.snr_gamma, d.residual_scale, sampling_plan(cfg.sampler, registry))


def base_unet_shape(cfg: ExperimentConfig) -> UNetShape:
    """The UNet's shape as configured, before the enabled plugins fill in its condition widths
    (input channels, context and vector widths: ``derive_unet_shape``)."""
    u = cfg.model.unet
    return UNetShape(in_channels=0, out_channels=0, model_channels=u.model_channels,
                     channel_mult=u.channel_mult, num_res_blocks=u.num_res_blocks,
                     attention_levels=u.attention_levels, middle_attention=u.middle_attention,
                     num_head_channels=u.num_head_channels, num_heads=u.num_heads,
                     transformer_depth=u.transformer_depth,
                     use_linear_in_transformer=u.use_linear_in_transformer,
                     norm_groups=u.norm_groups, dropout=u.dropout,
                     vector_projection=u.vector_projection, cross_only_levels=u.cross_only_levels)


def build_dataset(name: str, limit: int | None = None, registry: Registry | None = None,
                  **options: Any) -> Dataset:
    """The dataset registered as ``name`` (``register_datasets``) for ``options`` (the ``data``
    config's keys), cut to its first ``limit`` items if given."""
    return (registry or default_registry()).dataset(name).dataset(limit, **options)


def check_shapes(cfg: ExperimentConfig) -> None:
    """Every shape rule of the backbone, checked from the config alone (no weights are made),
    so training can refuse a config before it makes a run folder or trains stage 1."""
    u = cfg.model.unet
    levels = len(u.channel_mult)
    bad = [lv for lv in u.attention_levels if not 0 <= lv < levels]
    if bad:
        raise ConfigError(f"model.unet.attention_levels={list(u.attention_levels)} names levels "
                          f"{bad}, but channel_mult has {levels} levels (0..{levels - 1}).")
    latent = backbone_spec(cfg).latent_size
    if latent[0] % 2 ** (levels - 1):
        raise ConfigError(f"latents of {latent[0]}x{latent[1]} cannot be halved {levels - 1} times "
                          f"by the UNet (model.unet.channel_mult has {levels} levels); use fewer "
                          f"levels or larger images.")
    _check_groups("model.unet", u.norm_groups, [u.model_channels * m for m in u.channel_mult])
    if cfg.autoencoder.kind != "pixels":
        _check_autoencoder_groups(cfg.autoencoder)


def _check_autoencoder_groups(ae: AutoencoderConfig) -> None:
    _check_groups("autoencoder", ae.norm_groups, [ae.ch * m for m in ae.ch_mult])


def frozen_encoder(autoencoder: FirstStage):
    """Images in [-1, 1] -> scaled posterior-mean latents, without gradients (for plugins)."""

    @torch.no_grad()
    def encode(images: torch.Tensor) -> torch.Tensor:
        where = autoencoder.scale_factor  # device (and dtype: bf16 weights cast buffers too)
        return autoencoder.encode(images.to(where)).mean * autoencoder.scale_factor

    return encode


def _check_groups(where: str, groups: int, widths: list[int]) -> None:
    bad = [w for w in widths if w % groups]
    if bad:
        raise ConfigError(f"{where}.norm_groups={groups} does not divide the channel widths "
                          f"{bad}; choose norm_groups dividing every width {widths}.")


def load_autoencoder(cfg: ExperimentConfig, path: Path, into: FirstStage | None = None) -> FirstStage:
    """An autoencoder from a stage-1 checkpoint (``autoencoder.*`` tensors): loaded ``into``
    the given one (a model's own first stage), else into a new one."""
    tensors, _ = checkpoint.load(path)
    ae = into if into is not None else build_autoencoder(cfg)
    checkpoint.load_into(ae, checkpoint.strip_prefix("autoencoder.", tensors), "autoencoder", path)
    return ae
