"""The performance anchor: one SD-like UNet and VAE, the same random weights in diffusers and ldmcore.

The anchor is a 35M-parameter SD-like UNet, 32x32x4 latents, batch 8, 16 context tokens of 384.
In diffusers terms that is Stable Diffusion 1.x's layout (four levels, attention
on the first three, two ResBlocks per level, 8 heads, 32 GroupNorm groups, 1x1-conv projections)
at a fifth of SD's widths: ``block_out_channels=(64, 128, 256, 256)``, 35.6M parameters. The
VAE is SD's KL-f8 layout at half width, ``(64, 128, 256, 256)``, decoding 32x32 latents to
256x256 images.

Both models are built by diffusers with seeded random weights and converted to ldmcore through
the same key maps ``ldm import`` uses, so both libraries run the same numbers.

The sampling anchor is 20 steps of DPM-Solver++(2M) at guidance 5, both guidance branches in one
batch, with the same noise and the same sigmas in both libraries (``sampling_inputs``,
``diffusers_sample``, ``ldmcore_sample``); the CPU and CUDA benchmarks time the same loops.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ldmcore.interop import keymaps
from ldmcore.interop.detect import autoencoder_shape_from_diffusers, unet_shape_from_diffusers
from ldmcore.nn.autoencoder import AutoencoderKL
from ldmcore.nn.unet import UNetModel

UNET_WIDTHS = (64, 128, 256, 256)
VAE_WIDTHS = (64, 128, 256, 256)
LATENT = 32
CONTEXT_TOKENS = 16
CONTEXT_DIM = 384
GUIDANCE = 5.0
STEPS = 20
SCHEDULER = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                 num_train_timesteps=1000, algorithm_type="dpmsolver++", solver_order=2)


@dataclass
class Anchor:
    """The anchor's models in both libraries (float32, eval mode) and its inputs."""

    diffusers_unet: torch.nn.Module
    diffusers_vae: torch.nn.Module
    unet: UNetModel
    vae: AutoencoderKL


def diffusers_unet(seed: int = 0, widths: tuple[int, ...] = UNET_WIDTHS):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    levels = len(widths)
    unet = UNet2DConditionModel(
        sample_size=LATENT, in_channels=4, out_channels=4, block_out_channels=widths,
        layers_per_block=2, cross_attention_dim=CONTEXT_DIM, attention_head_dim=8,
        norm_num_groups=32, down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1))
    return unet.eval()


def diffusers_vae(seed: int = 0, widths: tuple[int, ...] = VAE_WIDTHS):
    from diffusers import AutoencoderKL as DiffusersVAE

    torch.manual_seed(seed + 1)
    return DiffusersVAE(block_out_channels=widths, layers_per_block=2, latent_channels=4,
                        norm_num_groups=32, sample_size=LATENT * 8,
                        down_block_types=("DownEncoderBlock2D",) * len(widths),
                        up_block_types=("UpDecoderBlock2D",) * len(widths)).eval()


def to_ldmcore_unet(unet) -> UNetModel:
    shape = unet_shape_from_diffusers(dict(unet.config), "anchor")
    mapping = {v: k for k, v in keymaps.unet_keymap(shape).items()}
    ours = UNetModel(shape)
    ours.load_state_dict(keymaps.rename(unet.state_dict(), mapping, "unet", "anchor"))
    return ours.eval()


def to_ldmcore_vae(vae) -> AutoencoderKL:
    shape = autoencoder_shape_from_diffusers(dict(vae.config), "anchor")
    ours = AutoencoderKL(shape)
    state = keymaps.from_diffusers_autoencoder(vae.state_dict(), shape, "anchor")
    ours.load_state_dict({**state, "scale_factor": ours.scale_factor}, strict=True)
    return ours.eval()


def build(seed: int = 0, unet_widths: tuple[int, ...] = UNET_WIDTHS,
          vae_widths: tuple[int, ...] = VAE_WIDTHS) -> Anchor:
    du, dv = diffusers_unet(seed, unet_widths), diffusers_vae(seed, vae_widths)
    return Anchor(du, dv, to_ldmcore_unet(du), to_ldmcore_vae(dv))


def inputs(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(latents, timesteps, context) for a UNet call."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, LATENT, LATENT, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    ctx = torch.randn(batch, CONTEXT_TOKENS, CONTEXT_DIM, generator=g)
    return x, t, ctx


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@dataclass
class SamplingInputs:
    """What both libraries' sampling loops start from, on one device."""

    noise: torch.Tensor  # (B, 4, LATENT, LATENT)
    context: torch.Tensor  # (B, CONTEXT_TOKENS, CONTEXT_DIM)
    null: torch.Tensor  # zeros like context: the unconditional branch
    sigmas: torch.Tensor  # float64, diffusers' DPM-Solver++ levels, ending at 0


def sampling_inputs(batch: int, device: torch.device | str = "cpu") -> SamplingInputs:
    from diffusers import DPMSolverMultistepScheduler

    g = torch.Generator().manual_seed(1)
    noise = torch.randn(batch, 4, LATENT, LATENT, generator=g)
    context = torch.randn(batch, CONTEXT_TOKENS, CONTEXT_DIM, generator=g)
    sched = DPMSolverMultistepScheduler(**SCHEDULER)
    sched.set_timesteps(STEPS)
    return SamplingInputs(noise.to(device), context.to(device), torch.zeros_like(context).to(device),
                          sched.sigmas.double().to(device))


def diffusers_sample(unet, run: SamplingInputs, channels_last: bool = False) -> torch.Tensor:
    """diffusers' own loop: its scheduler, the UNet in its weights' dtype, guidance on chunks."""
    from diffusers import DPMSolverMultistepScheduler

    sched = DPMSolverMultistepScheduler(**SCHEDULER)
    sched.set_timesteps(STEPS, device=run.noise.device)
    latents = run.noise * sched.init_noise_sigma
    dtype = next(unet.parameters()).dtype  # bf16/fp16 weights take inputs of their dtype
    context = torch.cat([run.null, run.context]).to(dtype)
    for t in sched.timesteps:
        x = sched.scale_model_input(torch.cat([latents, latents]), t)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        uncond, cond = unet(x.to(dtype), t, encoder_hidden_states=context).sample.float().chunk(2)
        latents = sched.step(uncond + GUIDANCE * (cond - uncond), t, latents).prev_sample
    return latents


def ldmcore_sample(unet: UNetModel, run: SamplingInputs) -> torch.Tensor:
    """ldmcore's loop: the discrete denoiser, batched guidance and its DPM-Solver++(2M)."""
    from ldmcore.conditioning import Conditioning
    from ldmcore.diffusion.denoisers import DiscreteDenoiser
    from ldmcore.diffusion.guidance import Guidance, GuidedDenoiser
    from ldmcore.diffusion.samplers import sample_dpmpp_2m
    from ldmcore.diffusion.schedule import NoiseSchedule

    denoiser = DiscreteDenoiser(lambda z, t, cond: unet(z, t, cond.context), NoiseSchedule.build("scaled_linear"))
    branches = [Conditioning(context=run.context), Conditioning(context=run.null)]
    guided = GuidedDenoiser(denoiser, branches, [GUIDANCE, 1 - GUIDANCE], [1.0, 0.0],
                            Guidance(scale=GUIDANCE), branches[0])
    x = run.noise.double() * DiscreteDenoiser.initial_noise_scale(float(run.sigmas[0]))
    return sample_dpmpp_2m(guided, x, run.sigmas)
