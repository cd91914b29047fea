"""Read a foreign checkpoint's architecture from its keys, shapes and configs.

Weights fix every width; a few numbers they cannot tell are Stable Diffusion's constants:
GroupNorm has 32 groups, SD 1.x's UNet has 8 heads at every width and SD 2.x's has 64-channel
heads, CLIP text heads have 64 channels. v1 and v2 are told apart by the text encoder's layout
(Hugging Face CLIP under ``cond_stage_model.transformer`` vs OpenCLIP under
``cond_stage_model.model``), the UNet's context width, and linear vs conv ``proj_in``.
A file written by ``ldm export`` records its exact shapes in metadata, which win.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from ldmcore.diffusion.schedule import make_betas
from ldmcore.errors import CheckpointError
from ldmcore.nn.autoencoder import AutoencoderShape
from ldmcore.nn.unet import UNetShape

SD_GROUPS = 32
SD1_HEADS = 8
SD2_HEAD_CHANNELS = 64
CLIP_HEAD_CHANNELS = 64


@dataclass
class Architecture:
    """Everything needed to build an ldmcore model for a foreign checkpoint."""

    unet: UNetShape
    autoencoder: AutoencoderShape
    family: str  # "sd1", "sd2" or "custom"
    text: dict[str, Any] | None = None  # Hugging Face CLIPTextConfig fields
    text_hidden_layer: int = -1
    prediction: str = "eps"
    schedule: dict[str, Any] = field(default_factory=lambda: {
        "schedule": "scaled_linear", "timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012})
    sampler: dict[str, Any] = field(default_factory=lambda: {
        "spacing": "leading", "offset": 1, "set_alpha_to_one": False})
    scale_factor: float = 0.18215
    image_size: int = 512
    # SD x4 upscaler: the low-res image's noise schedule (low_res_scheduler/) and level limits
    lowres: dict[str, Any] = field(default_factory=dict)

    @property
    def variant(self) -> str:
        """A human name: sd1, sd2, sd1-inpainting (9-channel input)..."""
        extra = self.unet.in_channels - self.unet.out_channels
        if self.is_upscaler:
            return self.family + "-x4-upscaler"
        return self.family + ("-inpainting" if extra == 5 else f"+{extra}ch" if extra else "")

    @property
    def is_upscaler(self) -> bool:
        """SD x4's layout: the low-res image's channels concatenated, its noise level as a table."""
        u = self.unet
        return (u.in_channels - u.out_channels == self.autoencoder.in_channels
                and u.vector_dim > 0 and u.vector_projection == "linear")


def _ints(keys: list[str], pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m[1]) for k in keys if (m := rx.match(k))})


def unet_shape_from_compvis(state: dict[str, torch.Tensor], family: str, source: str) -> UNetShape:
    """The UNet's shape from ``model.diffusion_model.*`` tensors (prefix stripped)."""
    keys = list(state)
    if "input_blocks.0.0.weight" not in state or "out.2.weight" not in state:
        raise CheckpointError(f"{source!r} has no Stable Diffusion UNet (model.diffusion_model."
                              f"input_blocks.0.0.weight and out.2.weight are missing).")
    if "label_emb.weight" in state or "label_emb.0.weight" in state:
        raise CheckpointError(f"{source!r} has a class-embedding UNet (label_emb as nn.Embedding, "
                              f"e.g. the SD x4 upscaler's noise-level classes); from single files "
                              f"ldmcore imports vector conditions as a projection (label_emb.0.0/0.2) "
                              f"only. Import the model's diffusers folder instead (it maps onto the "
                              f"lowres plugin).")
    conv_in = state["input_blocks.0.0.weight"]
    mc = conv_in.shape[0]
    blocks = _ints(keys, r"input_blocks\.(\d+)\.")
    downs = [n for n in blocks if f"input_blocks.{n}.0.op.weight" in state]
    nrb = downs[0] - 1 if downs else max(blocks)
    levels = len(downs) + 1
    mult, attn = [], []
    for level in range(levels):
        first = 1 + level * (nrb + 1)
        width = state[f"input_blocks.{first}.0.out_layers.3.weight"].shape[0]
        if width % mc:
            raise CheckpointError(f"{source!r}: UNet level {level} has {width} channels, not a "
                                  f"multiple of model_channels={mc}.")
        mult.append(width // mc)
        if f"input_blocks.{first}.1.proj_in.weight" in state:
            attn.append(level)
    to_k = [v for k, v in state.items() if k.endswith("attn2.to_k.weight")]
    proj_in = [v for k, v in state.items() if k.endswith(".proj_in.weight")]
    depth = len(_ints(keys, r"(?:input_blocks\.\d+\.1|middle_block\.1)\.transformer_blocks\.(\d+)\."))
    vector = state.get("label_emb.0.0.weight")
    return UNetShape(
        in_channels=conv_in.shape[1], out_channels=state["out.2.weight"].shape[0],
        model_channels=mc, channel_mult=tuple(mult), num_res_blocks=nrb,
        attention_levels=tuple(attn), middle_attention="middle_block.1.proj_in.weight" in state,
        num_head_channels=SD2_HEAD_CHANNELS, num_heads=SD1_HEADS if family == "sd1" else 0,
        transformer_depth=max(depth, 1), context_dim=int(to_k[0].shape[1]) if to_k else None,
        vector_dim=int(vector.shape[1]) if vector is not None else 0,
        use_linear_in_transformer=bool(proj_in) and proj_in[0].dim() == 2,
        norm_groups=SD_GROUPS)


def autoencoder_shape_from_compvis(state: dict[str, torch.Tensor], source: str) -> AutoencoderShape:
    """The autoencoder's shape from ``first_stage_model.*`` tensors (prefix stripped)."""
    if "encoder.conv_in.weight" not in state or "decoder.conv_in.weight" not in state:
        raise CheckpointError(f"{source!r} has no KL autoencoder (first_stage_model.encoder."
                              f"conv_in.weight / decoder.conv_in.weight are missing).")
    keys = list(state)
    ch = state["encoder.conv_in.weight"].shape[0]
    levels = _ints(keys, r"encoder\.down\.(\d+)\.")
    nrb = len(_ints(keys, r"encoder\.down\.0\.block\.(\d+)\."))
    mult = tuple(state[f"encoder.down.{lv}.block.0.conv2.weight"].shape[0] // ch for lv in levels)
    attn = tuple(lv for lv in levels if f"encoder.down.{lv}.attn.0.q.weight" in state)
    return AutoencoderShape(in_channels=state["encoder.conv_in.weight"].shape[1],
                            out_channels=state["decoder.conv_out.weight"].shape[0],
                            latent_channels=state["decoder.conv_in.weight"].shape[1], ch=ch,
                            ch_mult=mult, num_res_blocks=nrb, attn_levels=attn, norm_groups=SD_GROUPS)


def clip_config_from_hf(state: dict[str, torch.Tensor], act: str) -> dict[str, Any]:
    """CLIPTextConfig fields from a canonical CLIPTextModel state dict (``keymaps.clip_canonical``)."""
    tok = state["embeddings.token_embedding.weight"]
    width = tok.shape[1]
    layers = _ints(list(state), r"encoder\.layers\.(\d+)\.")
    return {"vocab_size": tok.shape[0], "hidden_size": width,
            "intermediate_size": state["encoder.layers.0.mlp.fc1.weight"].shape[0],
            "num_hidden_layers": len(layers), "num_attention_heads": max(1, width // CLIP_HEAD_CHANNELS),
            "max_position_embeddings": state["embeddings.position_embedding.weight"].shape[0],
            "hidden_act": act, "layer_norm_eps": 1e-5, "projection_dim": width}


def apply_overrides(arch: Architecture, meta: dict[str, Any]) -> Architecture:
    """Exact shapes recorded by ``ldm export`` (safetensors metadata ``ldmcore.*``) win."""
    import json

    def read(key: str) -> Any:
        raw = meta.get(key)
        return json.loads(raw) if isinstance(raw, str) else raw

    if (u := read("ldmcore.unet")) is not None:
        known = {f.name for f in fields(UNetShape)}
        arch.unet = UNetShape(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in u.items() if k in known})
    if (a := read("ldmcore.autoencoder")) is not None:
        known = {f.name for f in fields(AutoencoderShape)}
        arch.autoencoder = AutoencoderShape(**{k: (tuple(v) if isinstance(v, list) else v)
                                               for k, v in a.items() if k in known})
    for key in ("prediction", "scale_factor", "image_size", "text_hidden_layer"):
        if (v := read(f"ldmcore.{key}")) is not None:
            setattr(arch, key, v)
    if (t := read("ldmcore.text")) is not None and arch.text is not None:
        arch.text.update(t)
    for key in ("schedule", "sampler"):
        if (v := read(f"ldmcore.{key}")) is not None:
            getattr(arch, key).update(v)
    return arch


# -- diffusers configs ---------------------------------------------------------------------------
_UNSUPPORTED_UNET = {
    "class_embed_type": (None, "projection"), "addition_embed_type": (None,),
    "encoder_hid_dim": (None,), "time_cond_proj_dim": (None,), "dual_cross_attention": (False,),
    "resnet_time_scale_shift": ("default",), "time_embedding_type": ("positional",),
    "flip_sin_to_cos": (True,), "freq_shift": (0,), "act_fn": ("silu",), "center_input_sample": (False,),
    "class_embeddings_concat": (False,), "conv_in_kernel": (3,), "conv_out_kernel": (3,),
    "attention_type": ("default", "gated"),  # gated: GLIGEN's layers, the layout plugin's "mid_block_only_cross_attention": (None, False),
    "resnet_skip_time_act": (False,), "resnet_out_scale_factor": (1.0, 1), "norm_eps": (1e-5,),
    "timestep_post_act": (None,), "time_embedding_act_fn": (None,), "time_embedding_dim": (None,),
    "cross_attention_norm": (None,), "downsample_padding": (1,), "mid_block_scale_factor": (1, 1.0),
}


def unet_shape_from_diffusers(cfg: dict[str, Any], source: str) -> UNetShape:
    """The UNet's shape from a diffusers ``unet/config.json``; features ldmcore's UNet does not
    have are refused by name."""
    bad = [f"{k}={cfg[k]!r}" for k, ok in _UNSUPPORTED_UNET.items() if k in cfg and cfg[k] not in ok]
    if bad:
        raise CheckpointError(f"{source!r}: this diffusers UNet uses {', '.join(bad)}, which the "
                              f"SD-layout UNet of ldmcore does not implement.")
    boc = list(cfg["block_out_channels"])
    mc = boc[0]
    if any(c % mc for c in boc):
        raise CheckpointError(f"{source!r}: block_out_channels {boc} are not multiples of {mc}.")
    downs = list(cfg["down_block_types"])
    attn = tuple(i for i, t in enumerate(downs) if "CrossAttn" in t)
    heads = cfg.get("num_attention_heads") or cfg.get("attention_head_dim") or 8
    heads = list(heads) if isinstance(heads, (list, tuple)) else [heads] * len(boc)
    used = [(boc[i], heads[i]) for i in attn] + [(boc[-1], heads[-1])]
    num_heads, head_channels = 0, SD2_HEAD_CHANNELS
    if len({h for _, h in used}) == 1:
        num_heads = used[0][1]
    elif len({c // h for c, h in used}) == 1 and all(c % h == 0 for c, h in used):
        head_channels = used[0][0] // used[0][1]
    else:
        raise CheckpointError(f"{source!r}: attention heads {heads} for widths {boc} are neither "
                              f"a fixed count nor a fixed width per head.")
    depth = cfg.get("transformer_layers_per_block", 1)
    if isinstance(depth, (list, tuple)):
        if len(set(depth)) != 1:
            raise CheckpointError(f"{source!r}: transformer_layers_per_block={depth} varies by level.")
        depth = depth[0]
    mid = cfg.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    if mid not in ("UNetMidBlock2DCrossAttn", "UNetMidBlock2D"):
        raise CheckpointError(f"{source!r}: mid_block_type={mid!r} is not supported.")
    cross_only = _cross_only_levels(cfg, attn, source)
    vector_dim, projection = 0, "mlp"
    if cfg.get("class_embed_type") == "projection":
        vector_dim = cfg.get("projection_class_embeddings_input_dim") or 0
    elif cfg.get("num_class_embeds"):  # an nn.Embedding table: one-hot vectors through a Linear
        vector_dim, projection = int(cfg["num_class_embeds"]), "linear"
    return UNetShape(
        in_channels=cfg["in_channels"], out_channels=cfg["out_channels"], model_channels=mc,
        channel_mult=tuple(c // mc for c in boc), num_res_blocks=cfg["layers_per_block"],
        attention_levels=attn, middle_attention=mid == "UNetMidBlock2DCrossAttn",
        num_head_channels=head_channels, num_heads=num_heads, transformer_depth=depth,
        context_dim=cfg.get("cross_attention_dim") if attn else None,
        vector_dim=vector_dim, vector_projection=projection, cross_only_levels=cross_only,
        use_linear_in_transformer=bool(cfg.get("use_linear_projection")),
        norm_groups=cfg.get("norm_num_groups", 32), dropout=0.0)


def _cross_only_levels(cfg: dict[str, Any], attn: tuple[int, ...], source: str) -> tuple[int, ...]:
    """diffusers' ``only_cross_attention`` (per down block) as attention levels; the middle block
    must keep its self-attention (SD x4 upscaler: ``[true, true, true, false]``)."""
    only = cfg.get("only_cross_attention", False)
    mid = cfg.get("mid_block_only_cross_attention")
    if isinstance(only, bool):
        mid = only if mid is None else mid
        only = [only] * len(cfg["block_out_channels"])
    if mid:
        raise CheckpointError(f"{source!r}: mid_block_only_cross_attention=true (a middle block without "
                              f"self-attention) is not supported; only per-level only_cross_attention is.")
    return tuple(i for i in attn if only[i])


def autoencoder_shape_from_diffusers(cfg: dict[str, Any], source: str) -> AutoencoderShape:
    boc = list(cfg["block_out_channels"])
    ch = boc[0]
    for key, ok in (("act_fn", "silu"), ("use_post_quant_conv", True), ("use_quant_conv", True)):
        if key in cfg and cfg[key] != ok:
            raise CheckpointError(f"{source!r}: this diffusers VAE uses {key}={cfg[key]!r}; "
                                  f"ldmcore's KL autoencoder has {key}={ok!r}.")
    attn = tuple(i for i, t in enumerate(cfg.get("down_block_types", [])) if t.startswith("Attn"))
    return AutoencoderShape(in_channels=cfg.get("in_channels", 3), out_channels=cfg.get("out_channels", 3),
                            latent_channels=cfg.get("latent_channels", 4), ch=ch,
                            ch_mult=tuple(c // ch for c in boc),
                            num_res_blocks=cfg.get("layers_per_block", 1), attn_levels=attn,
                            norm_groups=cfg.get("norm_num_groups", 32))


def schedule_from_diffusers(cfg: dict[str, Any], source: str) -> tuple[dict, dict, str]:
    """(schedule, sampler, prediction) from ``scheduler/scheduler_config.json``."""
    kind = cfg.get("beta_schedule", "scaled_linear")
    if kind not in ("scaled_linear", "linear"):
        raise CheckpointError(f"{source!r}: beta_schedule={kind!r} is not supported (scaled_linear, linear).")
    pred = {"epsilon": "eps", "v_prediction": "v"}.get(cfg.get("prediction_type", "epsilon"))
    if pred is None:
        raise CheckpointError(f"{source!r}: prediction_type={cfg.get('prediction_type')!r} is not "
                              f"supported (epsilon, v_prediction).")
    schedule = {"schedule": kind, "timesteps": cfg.get("num_train_timesteps", 1000),
                "beta_start": cfg.get("beta_start", 0.00085), "beta_end": cfg.get("beta_end", 0.012)}
    spacing = cfg.get("timestep_spacing", "leading")
    sampler = {"spacing": spacing if spacing in ("leading", "linspace", "trailing") else "leading",
               "offset": cfg.get("steps_offset", 0),
               "set_alpha_to_one": bool(cfg.get("set_alpha_to_one", False))}
    return schedule, sampler, pred


def schedule_from_betas(betas: torch.Tensor, source: str) -> dict[str, Any]:
    """Recognise SD's ``betas`` buffer as scaled_linear or linear (else refuse)."""
    b = betas.double()
    n, start, end = len(b), float(b[0]), float(b[-1])
    for kind in ("scaled_linear", "linear"):
        if torch.allclose(make_betas(kind, n, start, end), b, rtol=1e-4, atol=1e-8):
            return {"schedule": kind, "timesteps": n, "beta_start": round(start, 8), "beta_end": round(end, 8)}
    raise CheckpointError(f"{source!r}: its betas ({n} steps, {start:.5g}..{end:.5g}) are neither "
                          f"a linear nor a scaled_linear schedule.")
