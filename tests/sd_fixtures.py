"""Stable Diffusion 1.5 / 2.1 architectures built with diffusers and transformers, random weights.

``tiny`` keeps SD's layout and constants (4 UNet levels, attention on the first three, 2 ResBlocks
per level, 32 GroupNorm groups, 8 heads in SD 1.x, 64-channel heads in SD 2.x, a CLIP text
encoder with 64-channel heads) at reduced widths, so CI runs it in seconds; ``full`` is the real
size (benchmarks only). Shared by tests/test_interop.py and ``python -m benchmarks.sd_parity``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

SD_SCHEDULER = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
                "num_train_timesteps": 1000, "steps_offset": 1, "set_alpha_to_one": False,
                "clip_sample": False, "timestep_spacing": "leading"}

SIZES = {
    # family, size -> (unet widths, text width, text layers, text ffn, vae widths, sample size)
    ("sd1", "tiny"): ((32, 64, 64, 64), 64, 2, 128, (32, 32, 64, 64), 8),
    ("sd2", "tiny"): ((64, 64, 128, 128), 128, 3, 256, (32, 32, 64, 64), 8),
    ("sd1", "full"): ((320, 640, 1280, 1280), 768, 12, 3072, (128, 256, 512, 512), 64),
    ("sd2", "full"): ((320, 640, 1280, 1280), 1024, 23, 4096, (128, 256, 512, 512), 96),
}


def write_tokenizer(folder: Path, pad: str) -> Path:
    """A CLIP BPE tokenizer over single bytes (SD 1.x pads with <|endoftext|>, SD 2.x with "!")."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    merges = ["r e", "e d</w>", "c i", "r c", "l e</w>"]
    for m in merges:
        vocab[m.replace(" ", "")] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    raw = folder / "_bpe"
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "vocab.json").write_text(json.dumps(vocab))
    (raw / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(str(raw / "vocab.json"), str(raw / "merges.txt"), pad_token=pad,
                        model_max_length=77)
    tok.save_pretrained(str(folder))
    return folder


def build_pipeline(family: str, size: str = "tiny", seed: int = 0, prediction: str = "epsilon",
                   in_channels: int = 4, attention_type: str = "default"):
    """A diffusers StableDiffusionPipeline (DDIM) with random weights, in float32
    (``attention_type="gated"``: GLIGEN's UNet, with its gated layers and position net)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    widths, text_width, text_layers, ffn, vae_widths, sample = SIZES[(family, size)]
    torch.manual_seed(seed)
    sd2 = family == "sd2"
    heads = [w // 64 for w in widths] if sd2 else 8
    unet = UNet2DConditionModel(
        sample_size=sample, in_channels=in_channels, out_channels=4, block_out_channels=widths,
        layers_per_block=2, cross_attention_dim=text_width, attention_head_dim=heads,
        use_linear_projection=sd2, norm_num_groups=32, attention_type=attention_type,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    vae = AutoencoderKL(block_out_channels=vae_widths, layers_per_block=2, latent_channels=4,
                        norm_num_groups=32, sample_size=sample * 8,
                        down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4)
    import tempfile

    tok_dir = Path(tempfile.mkdtemp(prefix="sdtok-"))
    tokenizer = _load_tokenizer(write_tokenizer(tok_dir, "!" if sd2 else "<|endoftext|>"))
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=text_width, intermediate_size=ffn,
        num_hidden_layers=text_layers, num_attention_heads=text_width // 64,
        max_position_embeddings=77, hidden_act="gelu" if sd2 else "quick_gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, projection_dim=text_width))
    if size == "tiny":
        _calibrate(unet, text_width, sample)
    scheduler = DDIMScheduler(**SD_SCHEDULER, prediction_type=prediction)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(torch.float32)


def saved_pipeline(family: str, root: Path):
    """``build_pipeline`` of ``family`` (SD 2.x v-predicting) saved as a diffusers folder at
    ``root / "diffusers"``; returns the pipeline."""
    pipe = build_pipeline(family, prediction="v_prediction" if family == "sd2" else "epsilon")
    pipe.save_pretrained(str(root / "diffusers"), safe_serialization=True)
    return pipe


def _load_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder))


@torch.no_grad()
def _calibrate(unet, context_dim: int, sample: int) -> None:
    """Make a random UNet behave like a trained one in scale: unit-variance predictions, and
    prompts that change them by a small fraction (so guidance 7.5 does not amplify a random
    model's cond/uncond gap into latents of magnitude 30, where float32 rounding alone exceeds
    1e-4). Parity is about the maps, not about these numbers."""
    g = torch.Generator().manual_seed(123)
    for name, p in unet.named_parameters():
        if "attn2.to_out" in name and name.endswith("weight"):
            p.mul_(0.1)
    x = torch.randn(2, unet.config.in_channels, sample, sample, generator=g)
    ctx = torch.randn(2, 77, context_dim, generator=g)
    std = unet(x, torch.tensor([500, 500]), encoder_hidden_states=ctx).sample.std()
    unet.conv_out.weight.div_(std)
    unet.conv_out.bias.div_(std)


def build_upscaler(seed: int = 0):
    """A diffusers StableDiffusionUpscalePipeline in the SD x4 upscaler's layout, tiny, random.

    As the real model (stabilityai/stable-diffusion-x4-upscaler): a 7-channel UNet (4 latent + 3
    low-res RGB channels at latent resolution), no attention at level 0, cross-attention-only
    transformers (``only_cross_attention``) on all but the last level, the noise level through a
    1000-row class-embedding table, linear projections and OpenCLIP-style (GELU) text; an f=4 VAE
    with scaling factor 0.08333; a linear DDPM ``low_res_scheduler`` and ``max_noise_level`` 350.
    """
    from diffusers import (AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionUpscalePipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    width = 64
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=7, out_channels=4, block_out_channels=(32, 64, 64),
        layers_per_block=2, cross_attention_dim=width, attention_head_dim=8,
        use_linear_projection=True, only_cross_attention=(True, True, False), num_class_embeds=1000,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))
    with torch.no_grad():  # a trained table has rows of the time embedding's scale, not N(0, 1)
        unet.class_embedding.weight.mul_(0.1)
    vae = AutoencoderKL(block_out_channels=(32, 32, 64), layers_per_block=1, latent_channels=4,
                        norm_num_groups=32, sample_size=32, scaling_factor=0.08333,
                        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3)
    import tempfile

    tokenizer = _load_tokenizer(write_tokenizer(Path(tempfile.mkdtemp(prefix="sdtok-")), "!"))
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
        num_attention_heads=1, max_position_embeddings=77, hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, projection_dim=width))
    _calibrate_upscaler(unet, width)
    pipe = StableDiffusionUpscalePipeline(
        vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
        low_res_scheduler=DDPMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                                        num_train_timesteps=1000),
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.0001, beta_end=0.02,
                                num_train_timesteps=1000, prediction_type="v_prediction",
                                set_alpha_to_one=False, steps_offset=1, clip_sample=False),
        max_noise_level=350)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(torch.float32)


@torch.no_grad()
def _calibrate_upscaler(unet, context_dim: int) -> None:
    g = torch.Generator().manual_seed(123)
    x = torch.randn(2, 7, 8, 8, generator=g)
    ctx = torch.randn(2, 77, context_dim, generator=g)
    std = unet(x, torch.tensor([500, 500]), encoder_hidden_states=ctx,
               class_labels=torch.tensor([20, 300])).sample.std()
    unet.conv_out.weight.div_(std)
    unet.conv_out.bias.div_(std)


def final_latents(model, values: dict, noise: torch.Tensor, steps: int = 10) -> torch.Tensor:
    """An ldmcore model's sample of ``values`` from ``noise`` with its own sampler settings:
    the latents after the last step, before decoding (what a diffusers pipeline returns with
    ``output_type="latent"``)."""
    seen = {}
    plan = model.sampling.but(steps=steps)
    model.sample(values, 1, plan, noise=noise.clone(), callback=lambda info: seen.update(x=info["x"]))
    last = float(plan.sigmas.sigmas(model.schedule, steps)[-1])
    return seen["x"] / (1 + last ** 2) ** 0.5


def pipeline_like(cls, pipe, **parts):
    """A diffusers pipeline of class ``cls`` over ``pipe``'s parts plus ``parts`` (a ControlNet,
    an adapter), sampling with DDIM on ``pipe``'s schedule."""
    from diffusers import DDIMScheduler

    out = cls(**{k: v for k, v in pipe.components.items() if k != "image_encoder"}, **parts,
              requires_safety_checker=False)
    out.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    out.set_progress_bar_config(disable=True)
    return out
