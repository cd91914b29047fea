"""A low-resolution image, resized to the latent grid and concatenated; its noise level as a vector.

As Stable Diffusion's x4 upscaler: at train time the low-resolution image gets Gaussian noise of
a random level (noise augmentation, so the model does not copy compression artefacts), and the
level is given to the UNet as a vector condition (sinusoidal embedding). At sampling time the
level is ``sample_noise_level``. In a batch the value is the low-resolution image; at train time
it is derived from ``batch["image"]`` by area downsampling by ``factor``.

Two choices make the plugin express Stable Diffusion's x4 upscaler exactly:

* ``noise``: ``additive`` adds Gaussian noise of std ``level`` to the image; ``ddpm`` treats the
  level as an integer step of a linear DDPM schedule (``ddpm_beta_start``..``ddpm_beta_end`` over
  ``num_levels`` steps) and noises as q(x_level | x) = sqrt(abar) x + sqrt(1 - abar) eps, which is
  SD x4's ``low_res_scheduler`` (CompVis ``ImageConcatWithNoiseAugmentation``).
* ``level_encoding``: ``sinusoidal`` embeds the level in ``level_dim`` sinusoids; ``onehot`` emits a
  ``num_levels``-wide one-hot vector, which a UNet with ``model.unet.vector_projection=linear``
  turns into a row of an embedding table: SD x4's noise-level class embedding.

A low-resolution image already at the latent grid's size (SD x4: f=4 latents of a x4 upscale) is
concatenated as it is; any other size is resized (bilinear, antialiased).

``consistent: true`` makes each decoded sample agree with its low-resolution input: every
``k x k`` block (``k`` = output size / input size) is shifted so that its mean is the input pixel,
then the result is clipped to [-1, 1]. The shift is the orthogonal projection onto the images
whose area downsampling is the input (for area pooling, nearest upsampling is the
pseudo-inverse), and the clip the projection onto the valid range. Both sets hold the true
image and projections onto convex sets never move a point away from their members, so the
sample can only come closer to the truth: the super-resolution counterpart of inpainting's
paste-back (the "consistency enforcing" step of explorable super-resolution, Bahat & Michaeli
2020). It assumes the input came from area downsampling, as this plugin makes training pairs.

``base: bicubic`` gives the model a base image (``ConditionEncoder.base``): the bicubic
upsampling of the input, encoded by the frozen first stage. The model then diffuses the scaled
residual from it (set ``model.diffusion.residual_scale`` to about 1 / its std), starts from
bicubic quality instead of from nothing, and learns only the detail bicubic misses, as SRDiff
(Li et al. 2022) and ResShift (Yue et al. 2023) do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from typing import Any, Literal

from pydantic import Field, model_validator

from ldmcore.conditioning import (BackboneSpec, ConditionEncoder, ConditionOutput, EncoderConfig,
                                  Injection, OutputSpec, Widget, WidgetKind)
from ldmcore.errors import ConfigError, PluginError
from ldmcore.images import read_image
from ldmcore.nn.embeddings import timestep_embedding


class LowresConfig(EncoderConfig):
    input_key: str = Field("image", description="the data key of the high-resolution image the "
                                                "low-resolution input is made from (training)")
    drop_prob: float = Field(0.0, ge=0.0, le=1.0)
    factor: int = Field(4, ge=1, description="downsampling factor of the low-resolution input")
    max_noise_level: float = Field(0.2, ge=0.0, description="train-time augmentation level, at most "
                                   "(additive: a std; ddpm: an integer step, levels drawn in [0, max))")
    sample_noise_level: float = Field(0.0, ge=0.0, description="the level at sampling time")
    level_dim: int = Field(64, ge=2, description="sinusoidal level embedding width")
    noise: Literal["additive", "ddpm"] = Field("additive", description="how a level noises the image")
    level_encoding: Literal["sinusoidal", "onehot"] = Field("sinusoidal", description="the level as a "
                                                            "vector: sinusoids, or one-hot over num_levels")
    num_levels: int = Field(1000, ge=2, description="ddpm: schedule steps (= one-hot width)")
    ddpm_beta_start: float = Field(1e-4, gt=0, lt=1)
    ddpm_beta_end: float = Field(0.02, gt=0, lt=1)
    consistent: bool = Field(False, description="after decoding, project each sample onto the images "
                                                "whose area downsampling is the low-res input")
    base: Literal["none", "bicubic"] = Field("none", description="bicubic: the model diffuses the "
                                             "residual from the bicubic upsampling of the input")

    @model_validator(mode="after")
    def _integer_levels_for_ddpm(self) -> LowresConfig:
        if self.level_encoding == "onehot" and self.noise != "ddpm":
            raise ValueError("level_encoding=onehot needs noise=ddpm (integer levels to index).")
        if self.noise == "ddpm":
            for key in ("max_noise_level", "sample_noise_level"):
                v = getattr(self, key)
                if v != int(v) or v >= self.num_levels:
                    raise ValueError(f"{key}={v}: with noise=ddpm a level is an integer step in "
                                     f"0..{self.num_levels - 1} (num_levels={self.num_levels}).")
        return self


class LowresEncoder(ConditionEncoder):
    name = "lowres"
    injections = (Injection.CONCAT, Injection.VECTOR)
    Config = LowresConfig
    trainable = False  # no parameters: resizing and a fixed level embedding

    def __init__(self, config: LowresConfig, backbone: BackboneSpec) -> None:
        super().__init__(config, backbone)
        self.register_buffer("_device_probe", torch.zeros(()), persistent=False)
        if config.base != "none" and backbone.encode is None:
            raise PluginError("lowres base=bicubic needs the backbone's frozen autoencoder "
                              "(BackboneSpec.encode) to encode the upsampled image; build the model "
                              "with ldmcore.build.build_model.")
        if config.noise == "ddpm":  # in float32, as diffusers' DDPMScheduler computes them
            betas = torch.linspace(config.ddpm_beta_start, config.ddpm_beta_end, config.num_levels,
                                   dtype=torch.float32)
            self.register_buffer("_alphas_cumprod", torch.cumprod(1.0 - betas, 0), persistent=False)

    @property
    def _vector_width(self) -> int:
        return self.config.num_levels if self.config.level_encoding == "onehot" else self.config.level_dim

    def output_specs(self) -> dict[Injection, OutputSpec]:
        c, (h, w) = self.backbone.image_channels, self.backbone.latent_size
        return {Injection.CONCAT: OutputSpec(Injection.CONCAT, (c, h, w)),
                Injection.VECTOR: OutputSpec(Injection.VECTOR, (self._vector_width,))}

    def batch_value(self, batch):
        if self.name in batch:
            return batch[self.name]
        f, image = self.config.factor, batch[self.config.input_key]
        return F.avg_pool2d(image, f) if f > 1 else image

    def _checked(self, value: torch.Tensor) -> torch.Tensor:
        low = torch.as_tensor(value).float().to(self._device_probe.device)
        if low.dim() == 4 and low.shape[1] == 3 and self.backbone.image_channels == 1:
            low = low.mean(1, keepdim=True)
        if low.dim() != 4 or low.shape[1] != self.backbone.image_channels:
            raise ConfigError(f"lowres: expected images with {self.backbone.image_channels} "
                              f"channels, got shape {tuple(low.shape)}.")
        return low

    def forward(self, value: torch.Tensor) -> ConditionOutput:
        low = self._checked(value)
        b, cfg = low.shape[0], self.config
        if self.training and cfg.max_noise_level > 0:
            rng = self.random()
            level = (rng.randint(int(cfg.max_noise_level), b).float() if cfg.noise == "ddpm"
                     else rng.rand(b) * cfg.max_noise_level).to(low.device)
        else:
            level = torch.full((b,), cfg.sample_noise_level, device=low.device)
        low = self.noised(low, level, self.random().randn(tuple(low.shape)).to(low))
        if tuple(low.shape[-2:]) != tuple(self.backbone.latent_size):
            low = F.interpolate(low, size=self.backbone.latent_size, mode="bilinear",
                                align_corners=False, antialias=True)
        return {Injection.CONCAT: low, Injection.VECTOR: self._level(level)}

    def finish(self, images: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """With ``consistent``: shift every block to the mean of its low-res pixel, then clip
        (the two projections of the module docstring); otherwise the samples as they are."""
        if not self.config.consistent:
            return images
        low = self._checked(value).to(images.device)
        (h, w), (lh, lw) = images.shape[-2:], low.shape[-2:]
        if h % lh or w % lw or h // lh != w // lw:
            raise ConfigError(f"lowres: consistent=true needs the output ({h}x{w}) to be a whole "
                              f"multiple of the low-resolution input ({lh}x{lw}), the same along "
                              f"both sides; give an input of {h // self.config.factor}x"
                              f"{w // self.config.factor} or set conditions.lowres.consistent=false.")
        return consistent(images, low)

    @property
    def provides_base(self) -> bool:
        return self.config.base != "none"

    def base(self, value: torch.Tensor) -> torch.Tensor:
        """The input's bicubic upsampling to the image size, in the first stage's latents."""
        low = self._checked(value)
        up = F.interpolate(low, size=self.backbone.image_size, mode="bicubic", align_corners=False)
        return self.backbone.encode(up.clamp(-1, 1))

    def noised(self, low: torch.Tensor, level: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The low-resolution image at noise ``level`` (B,), given standard normal ``noise``."""
        if self.config.noise == "additive":
            return low + level.view(-1, 1, 1, 1) * noise
        abar = self._alphas_cumprod.to(low.device)[level.long()].view(-1, 1, 1, 1)
        return abar.sqrt() * low + (1.0 - abar).sqrt() * noise

    def _level(self, level: torch.Tensor) -> torch.Tensor:
        if self.config.level_encoding == "onehot":  # level -1 (the null) is the zero vector
            hot = torch.zeros(level.shape[0], self.config.num_levels, device=level.device)
            known = level >= 0
            hot[known, level[known].long()] = 1.0
            return hot
        return timestep_embedding(level * 1000.0, self.config.level_dim)

    def null(self, batch_size: int) -> ConditionOutput:
        c, (h, w) = self.backbone.image_channels, self.backbone.latent_size
        device = self._device_probe.device
        return {Injection.CONCAT: torch.zeros(batch_size, c, h, w, device=device),
                Injection.VECTOR: self._level(torch.full((batch_size,), -1.0, device=device))}

    def widget(self) -> Widget:
        h, w = self.backbone.image_size
        f = self.config.factor
        return Widget(WidgetKind.IMAGE, label="low-resolution image",
                      help=f"a PNG of {w // f}x{h // f} pixels, upscaled {f}x",
                      size=(h // f, w // f))

    @classmethod
    def parse(cls, value: Any) -> torch.Tensor:
        """A PNG/JPEG path; read as RGB (averaged to grey for one-channel models)."""
        return read_image(str(value), 3, "cond.lowres")


def consistent(images: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    """``images`` projected onto those whose area downsampling is ``low`` (each k x k block
    shifted to its low-res pixel's mean), then clipped to [-1, 1]; sizes a whole multiple k."""
    k = images.shape[-1] // low.shape[-1]
    out = images.float()
    shift = low - F.avg_pool2d(out, k)
    return (out + F.interpolate(shift, scale_factor=k, mode="nearest")).clamp(-1, 1)
