"""KL-regularised autoencoder for perceptual compression (LDM's first stage).

Layout and parameter names follow CompVis ``AutoencoderKL`` (``encoder.down.N.block.M``,
``encoder.mid.attn_1``, ``quant_conv``, ``post_quant_conv``, ``decoder.up.N.upsample``...) so SD's
``first_stage_model.*`` weights load by prefix. The downsampling factor is
``f = 2 ** (len(ch_mult) - 1)``. ``scale_factor`` (LDM's ``scale_by_std``: 1/std of the first
batch's latents) is a buffer, so it is saved and loaded with the weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ldmcore.nn.attention import attention, pointwise
from ldmcore.nn.norms import GroupNorm


# Initial log-variance of q(z|x). At log-variance 0 the sampled latent is mostly unit noise over
# means that start near 0.1, so the decoder first learns to ignore it and colour arrives late
# (on the shapes data: 2 of 64 scenes reconstructed with the right colours after 500 steps,
# against 24 of 64 from -6). The tiny KL weight drives the variance down anyway; this starts
# there. Loaded weights (Stable Diffusion's) overwrite it.
INITIAL_LOGVAR = -6.0


@dataclass(frozen=True)
class AutoencoderShape:
    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    ch: int = 64
    ch_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attn_levels: tuple[int, ...] = ()  # levels (0 = full resolution) with self-attention
    norm_groups: int = 32

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


def _norm(groups: int, ch: int) -> GroupNorm:
    return GroupNorm(groups, ch, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, groups: int) -> None:
        super().__init__()
        self.norm1 = _norm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = _norm(groups, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        if in_ch != out_ch:
            self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        skip = pointwise(self.nin_shortcut, x) if hasattr(self, "nin_shortcut") else x
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over pixels with 1x1-conv projections."""

    def __init__(self, ch: int, groups: int) -> None:
        super().__init__()
        self.norm = _norm(groups, ch)
        self.q = nn.Conv2d(ch, ch, 1)
        self.k = nn.Conv2d(ch, ch, 1)
        self.v = nn.Conv2d(ch, ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (pointwise(m, y).flatten(2).transpose(1, 2)[:, None] for m in (self.q, self.k, self.v))
        out = attention(q, k, v)[:, 0]
        return x + pointwise(self.proj_out, out.transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Stride-2 conv with CompVis's asymmetric (0, 1, 0, 1) padding."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Encoder(nn.Module):
    def __init__(self, s: AutoencoderShape) -> None:
        super().__init__()
        g = s.norm_groups
        self.conv_in = nn.Conv2d(s.in_channels, s.ch, 3, padding=1)
        self.down = nn.ModuleList()
        ch = s.ch
        for level, mult in enumerate(s.ch_mult):
            stage = nn.Module()
            stage.block = nn.ModuleList()
            stage.attn = nn.ModuleList()
            for _ in range(s.num_res_blocks):
                stage.block.append(ResnetBlock(ch, s.ch * mult, g))
                ch = s.ch * mult
                if level in s.attn_levels:
                    stage.attn.append(AttnBlock(ch, g))
            if level != len(s.ch_mult) - 1:
                stage.downsample = Downsample(ch)
            self.down.append(stage)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(ch, ch, g)
        self.mid.attn_1 = AttnBlock(ch, g)
        self.mid.block_2 = ResnetBlock(ch, ch, g)
        self.norm_out = _norm(g, ch)
        self.conv_out = nn.Conv2d(ch, 2 * s.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for stage in self.down:
            for i, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn):
                    h = stage.attn[i](h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, s: AutoencoderShape) -> None:
        super().__init__()
        g = s.norm_groups
        ch = s.ch * s.ch_mult[-1]
        self.conv_in = nn.Conv2d(s.latent_channels, ch, 3, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(ch, ch, g)
        self.mid.attn_1 = AttnBlock(ch, g)
        self.mid.block_2 = ResnetBlock(ch, ch, g)
        stages: list[nn.Module] = []
        for level, mult in reversed(list(enumerate(s.ch_mult))):
            stage = nn.Module()
            stage.block = nn.ModuleList()
            stage.attn = nn.ModuleList()
            for _ in range(s.num_res_blocks + 1):
                stage.block.append(ResnetBlock(ch, s.ch * mult, g))
                ch = s.ch * mult
                if level in s.attn_levels:
                    stage.attn.append(AttnBlock(ch, g))
            if level != 0:
                stage.upsample = Upsample(ch)
            stages.insert(0, stage)  # up[i] is level i, as in CompVis
        self.up = nn.ModuleList(stages)
        self.norm_out = _norm(g, ch)
        self.conv_out = nn.Conv2d(ch, s.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for stage in reversed(self.up):
            for i, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn):
                    h = stage.attn[i](h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


@dataclass
class DiagonalGaussian:
    """The encoder's posterior q(z|x) = N(mean, diag(exp(logvar)))."""

    mean: torch.Tensor
    logvar: torch.Tensor

    @classmethod
    def from_moments(cls, moments: torch.Tensor) -> DiagonalGaussian:
        mean, logvar = moments.chunk(2, dim=1)
        return cls(mean, logvar.clamp(-30.0, 20.0))

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        # drawn where the generator lives (a CPU generator drives a CUDA run), then moved
        where = self.mean.device if generator is None else generator.device
        noise = torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype,
                            device=where).to(self.mean.device)
        return self.mean + torch.exp(0.5 * self.logvar) * noise

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) summed over latent dims, per sample."""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar).flatten(1).sum(1)


class AutoencoderKL(nn.Module):
    def __init__(self, shape: AutoencoderShape) -> None:
        super().__init__()
        self.shape = shape
        self.encoder = Encoder(shape)
        self.decoder = Decoder(shape)
        zc = shape.latent_channels
        self.quant_conv = nn.Conv2d(2 * zc, 2 * zc, 1)
        with torch.no_grad():  # the posterior starts nearly deterministic (std e^-3 ~ 0.05)
            self.quant_conv.bias[zc:].fill_(INITIAL_LOGVAR)
        self.post_quant_conv = nn.Conv2d(zc, zc, 1)
        self.register_buffer("scale_factor", torch.tensor(1.0))

    def _in(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs in the weights' dtype (bf16 weights for inference) unless autocast decides."""
        if torch.is_autocast_enabled(x.device.type):
            return x
        return x.to(self.post_quant_conv.weight.dtype)

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        return DiagonalGaussian.from_moments(self.quant_conv(self.encoder(self._in(x))))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(self._in(z)))

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, DiagonalGaussian]:
        posterior = self.encode(x)
        return self.decode(posterior.sample(generator)), posterior

    @torch.no_grad()
    def fit_scale_factor(self, x: torch.Tensor) -> float:
        """Set ``scale_factor`` to 1/std of the latents of ``x`` (LDM's ``scale_by_std``)."""
        z = self.encode(x).sample()
        self.scale_factor.fill_(1.0 / z.float().std().clamp_min(1e-8).item())
        return float(self.scale_factor)

    def latents(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Scaled latents for diffusion: ``scale_factor * z`` with z ~ q(z|x)."""
        return self.encode(x).sample(generator) * self.scale_factor

    def images(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode scaled latents back to images."""
        return self.decode(latents / self.scale_factor).float()
