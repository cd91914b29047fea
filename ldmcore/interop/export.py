"""Export an ldmcore model to a Stable Diffusion single file or a diffusers folder.

The single file uses the CompVis names (``model.diffusion_model.*``, ``first_stage_model.*``,
``cond_stage_model.*``: Hugging Face CLIP for quick-GELU CLIP as in SD 1.x, OpenCLIP for GELU CLIP
as in SD 2.x) plus ``betas``/``alphas_cumprod``, and records ldmcore's exact shapes in metadata
(``ldmcore.*``), so ``ldm import`` reads it back without SD's constants. The diffusers folder is
what ``StableDiffusionPipeline.from_pretrained`` loads: ``unet/``, ``vae/``, ``text_encoder/``,
``tokenizer/``, ``scheduler/`` (DDIM) and ``model_index.json`` (with a ``controlnet/`` or
``adapter/`` folder for a residual plugin: ``residual_export.py``); a model in SD x4 upscaler's
layout (the ``lowres`` plugin with DDPM levels and a one-hot table) becomes a
``StableDiffusionUpscalePipeline`` folder with ``low_res_scheduler/``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ldmcore import checkpoint
from ldmcore.arguments import parse_options, positional
from ldmcore.errors import ConfigError
from ldmcore.interop import keymaps
from ldmcore.interop.convert import TEXT, UNET, VAE
from ldmcore.interop.options import ExportOptions
from ldmcore.interop.inserted_export import gligen_unet, inserted_plugins, write_ip_adapter
from ldmcore.interop.residual_export import residual_parts, residual_plugins
from ldmcore.progress import Stages
from ldmcore.runfolder import load_run

DIFFUSERS_VERSION = "0.30.0"


def _refuse_base(model) -> None:
    """SD files and diffusers pipelines diffuse the latents themselves, never a residual."""
    name = model.conditioner.base_plugin
    if name is not None:
        raise ConfigError(f"this model diffuses the residual from the {name!r} plugin's base image "
                          f"(conditions.{name}.base), which SD checkpoints and diffusers pipelines "
                          f"have no place for; only models trained with base=none export.")


def _text_plugin(model, beside: frozenset[str] = frozenset()) -> Any | None:
    """The run's text plugin, if it can be exported (no projection); other plugins are refused,
    except those ``beside`` (exported as folders of their own: a ControlNet, an adapter)."""
    encoders = dict(model.conditioner.encoders)
    other = sorted(n for n in encoders if n not in ("text", "inpaint", *beside)
                   and not (n == "lowres" and _is_upscaler(model)))
    if other:
        raise ConfigError(f"this model has the plugin(s) {', '.join(other)}, which neither SD single "
                          f"files nor diffusers' StableDiffusionPipeline can hold; only text-to-image "
                          f"or unconditional models export. Plugin weights can be shared as "
                          f"plugins/<name>.safetensors instead.")
    text = encoders.get("text")
    if text is None:
        return None
    if text.proj is not None:
        raise ConfigError(f"the text plugin projects {text.width}-d token states to the UNet's "
                          f"context width {text.backbone.context_dim}; SD and diffusers feed the "
                          f"encoder's states to the UNet directly, so this model cannot be exported "
                          f"as SD. Use an encoder whose width equals model.unet.context_dim.")
    if text.transformer.config.model_type != "clip_text_model":
        raise ConfigError(f"the text encoder is a {text.transformer.config.model_type!r} model; SD "
                          f"layouts hold a CLIP text model only.")
    return text


def _is_upscaler(model) -> bool:
    """The SD x4 upscaler's layout: the ``lowres`` plugin as its only concat and vector condition,
    with DDPM levels indexing the UNet's linear (table) vector input."""
    encoders = model.conditioner.encoders
    enc = encoders["lowres"] if "lowres" in encoders else None
    u = model.unet.shape
    return (enc is not None and enc.config.noise == "ddpm" and enc.config.level_encoding == "onehot"
            and u.vector_projection == "linear" and u.vector_dim == enc.config.num_levels
            and model.conditioner.concat_channels == model.autoencoder.shape.in_channels)


def _unet_state(model) -> dict[str, torch.Tensor]:
    """The UNet's tensors in SD's channel order (inpainting: mask before masked latents)."""
    state = model.unet.state_dict()
    if "inpaint" in model.conditioner.encoders:
        if model.conditioner.concat_channels != model.unet.shape.out_channels + 1:
            raise ConfigError("SD inpainting layouts hold the inpaint plugin as the only concat condition.")
        state = keymaps.permute_in_conv(state, "input_blocks.0.0.weight",
                                        keymaps.inpaint_columns(model.unet.shape.out_channels, to_sd=True))
    return state


def _scale_factor(model) -> float:
    """The latent scale as the decimal it was written as: it is held in float32, and 0.08333 read
    back as 0.08332999795675278 would fail diffusers' check for SD x4's VAE."""
    import numpy as np

    return float(str(np.float32(float(model.autoencoder.scale_factor))))


def _schedule_tensors(model) -> dict[str, torch.Tensor]:
    s = model.schedule
    return {"betas": s.betas.float(), "alphas_cumprod": s.alphas_cumprod.float()}


def _meta(model, cfg) -> dict[str, Any]:
    d = cfg.model.diffusion
    return {"ldmcore.unet": asdict(model.unet.shape), "ldmcore.autoencoder": asdict(model.autoencoder.shape),
            "ldmcore.prediction": model.prediction.value,
            "ldmcore.scale_factor": _scale_factor(model),
            "ldmcore.image_size": cfg.data.image_size,
            "ldmcore.schedule": {"schedule": d.schedule.value, "timesteps": d.timesteps,
                                 "beta_start": d.beta_start, "beta_end": d.beta_end},
            "ldmcore.sampler": {"spacing": cfg.sampler.spacing.value, "offset": cfg.sampler.offset,
                                "set_alpha_to_one": cfg.sampler.set_alpha_to_one}}


EXPORT_MARKER = ".ldmcore-export"  # in a diffusers folder ldm export wrote: overwrite may replace it


def _atomic_dir(out: Path, overwrite: bool, write) -> Path:
    if out.exists() and (out.is_file() or any(out.iterdir())) and not overwrite:
        raise ConfigError(f"{str(out)!r} already exists; choose a new path or pass overwrite=true.")
    if out.is_dir() and any(out.iterdir()) and not (out / EXPORT_MARKER).is_file():
        raise ConfigError(f"{str(out)!r} is a folder that ldm export did not write (it has no "
                          f"{EXPORT_MARKER} marker); overwrite=true replaces only an earlier "
                          f"export. Choose a new path.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write(tmp)
        (tmp / EXPORT_MARKER).touch()
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def export_single_file(model, cfg, out: Path | str, *, overwrite: bool = False) -> Path:
    """Write an SD single ``.safetensors`` file (CompVis layout)."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ConfigError(f"{str(out)!r}: an SD single file is written as .safetensors.")
    if out.exists() and not overwrite:
        raise ConfigError(f"{str(out)!r} already exists; choose a new path or pass overwrite=true.")
    _refuse_base(model)
    text = _text_plugin(model)
    if _is_upscaler(model):
        raise ConfigError("SD x4 upscaler models export as diffusers folders only (layout=diffusers): "
                          "their noise-level table and low-res noise schedule have no single-file "
                          "form that ldmcore or diffusers reads back.")
    tensors = checkpoint.with_prefix(UNET, _unet_state(model))
    tensors.update({VAE + k: v for k, v in model.autoencoder.state_dict().items() if k != "scale_factor"})
    tensors.update(_schedule_tensors(model))
    meta = _meta(model, cfg)
    if text is not None:
        hf = keymaps.clip_canonical(text.transformer.state_dict())
        tconf = text.transformer.config
        layer = text.config.hidden_layer
        if tconf.hidden_act == "quick_gelu":  # OpenAI CLIP, SD 1.x: last hidden state
            if layer != -1:
                raise ConfigError(f"SD 1.x reads the last layer of its CLIP; this model reads "
                                  f"hidden_layer={layer}.")
            # transformers 4's names (``text_model.*``), which SD 1.x files and tools use
            tensors.update(checkpoint.with_prefix(TEXT + "transformer.text_model.", hf))
        else:  # OpenCLIP, SD 2.x: penultimate layer through ln_final
            if layer not in (-1, -2):
                raise ConfigError(f"SD 2.x reads the penultimate CLIP layer; hidden_layer={layer} "
                                  f"has no SD 2.x equivalent.")
            tensors.update(checkpoint.with_prefix(TEXT + "model.", keymaps.hf_to_openclip(hf, pad_layers=1 if layer == -1 else 0)))
        meta["ldmcore.text"] = {"num_attention_heads": tconf.num_attention_heads,
                                "layer_norm_eps": tconf.layer_norm_eps}
    out.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.save(out, tensors, {k: v for k, v in meta.items()})
    return out


def export_diffusers(model, cfg, out: Path | str, *, overwrite: bool = False) -> Path:
    """Write a diffusers folder (StableDiffusionPipeline when there is a text plugin)."""
    _refuse_base(model)
    text = _text_plugin(model, residual_plugins(model) | inserted_plugins(model))
    u, ae = model.unet.shape, model.autoencoder.shape
    if u.context_dim is None and u.attention_levels:
        raise ConfigError("this UNet has attention without cross-attention tokens, which diffusers' "
                          "UNet2DConditionModel cannot express.")

    def heads(ch: int) -> int:
        return u.num_heads or max(1, ch // u.num_head_channels)

    widths = [u.model_channels * m for m in u.channel_mult]
    levels = len(widths)
    attn = set(u.attention_levels)
    unet_cfg: dict[str, Any] = {
        "_class_name": "UNet2DConditionModel", "_diffusers_version": DIFFUSERS_VERSION,
        "sample_size": model.latent_size[0], "in_channels": u.in_channels, "out_channels": u.out_channels,
        "block_out_channels": widths, "layers_per_block": u.num_res_blocks,
        "down_block_types": ["CrossAttnDownBlock2D" if i in attn else "DownBlock2D" for i in range(levels)],
        "up_block_types": ["CrossAttnUpBlock2D" if i in attn else "UpBlock2D" for i in reversed(range(levels))],
        "mid_block_type": "UNetMidBlock2DCrossAttn" if u.middle_attention else "UNetMidBlock2D",
        "cross_attention_dim": u.context_dim or widths[-1], "attention_head_dim": [heads(w) for w in widths],
        "use_linear_projection": u.use_linear_in_transformer, "transformer_layers_per_block": u.transformer_depth,
        "norm_num_groups": u.norm_groups, "flip_sin_to_cos": True, "freq_shift": 0, "act_fn": "silu",
    }
    if u.vector_dim and u.vector_projection == "linear":
        unet_cfg.update(class_embed_type=None, num_class_embeds=u.vector_dim)
    elif u.vector_dim:
        unet_cfg.update(class_embed_type="projection", projection_class_embeddings_input_dim=u.vector_dim)
    if u.cross_only_levels:
        unet_cfg.update(only_cross_attention=[i in u.cross_only_levels for i in range(levels)],
                        mid_block_only_cross_attention=False)
    ae_levels = len(ae.ch_mult)
    vae_cfg = {
        "_class_name": "AutoencoderKL", "_diffusers_version": DIFFUSERS_VERSION,
        "in_channels": ae.in_channels, "out_channels": ae.out_channels, "latent_channels": ae.latent_channels,
        "block_out_channels": [ae.ch * m for m in ae.ch_mult], "layers_per_block": ae.num_res_blocks,
        "down_block_types": ["AttnDownEncoderBlock2D" if i in ae.attn_levels else "DownEncoderBlock2D"
                             for i in range(ae_levels)],
        "up_block_types": ["AttnUpDecoderBlock2D" if i in ae.attn_levels else "UpDecoderBlock2D"
                           for i in reversed(range(ae_levels))],
        "norm_num_groups": ae.norm_groups, "act_fn": "silu", "sample_size": cfg.data.image_size,
        "scaling_factor": _scale_factor(model),
    }
    d = cfg.model.diffusion
    sched_cfg = {"_class_name": "DDIMScheduler", "_diffusers_version": DIFFUSERS_VERSION,
                 "beta_schedule": d.schedule.value, "beta_start": d.beta_start, "beta_end": d.beta_end,
                 "num_train_timesteps": d.timesteps,
                 "prediction_type": {"eps": "epsilon", "v": "v_prediction"}[model.prediction.value],
                 "steps_offset": cfg.sampler.offset, "set_alpha_to_one": cfg.sampler.set_alpha_to_one,
                 "timestep_spacing": cfg.sampler.spacing.value, "clip_sample": False}
    if d.schedule.value not in ("linear", "scaled_linear"):
        raise ConfigError(f"the {d.schedule.value} beta schedule has no DDIMScheduler equivalent "
                          f"in diffusers' SD pipelines; export a linear or scaled_linear model.")
    residual, residual_pipeline = residual_parts(model, unet_cfg, DIFFUSERS_VERSION)
    gated = gligen_unet(model, text)
    if gated:
        unet_cfg["attention_type"] = "gated"

    def write(root: Path) -> None:
        for sub, conf, tensors in (
                ("unet", unet_cfg, {**keymaps.to_diffusers_unet(_unet_state(model), u), **gated}),
                ("vae", vae_cfg, keymaps.to_diffusers_autoencoder(model.autoencoder.state_dict(), ae)),
                *residual):
            (root / sub).mkdir()
            (root / sub / "config.json").write_text(json.dumps(conf, indent=1))
            checkpoint.save(root / sub / "diffusion_pytorch_model.safetensors", tensors, {"format": "pt"})
        (root / "scheduler").mkdir()
        (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched_cfg, indent=1))
        pipeline = "StableDiffusionInpaintPipeline" if "inpaint" in model.conditioner.encoders else "StableDiffusionPipeline"
        if residual_pipeline is not None:  # a ControlNet or adapter pipeline
            pipeline = residual_pipeline
        index = {"_class_name": pipeline, "_diffusers_version": DIFFUSERS_VERSION,
                 "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
                 "scheduler": ["diffusers", "DDIMScheduler"], "safety_checker": [None, None],
                 "feature_extractor": [None, None], "image_encoder": [None, None],
                 "requires_safety_checker": False}
        if gated:  # GLIGEN: no image encoder argument
            index["_class_name"] = "StableDiffusionGLIGENPipeline"
            index.pop("image_encoder")
        index.update(write_ip_adapter(model, root))
        if residual_pipeline is not None:  # its ControlNet or adapter, under the name it expects
            folder, conf, _ = residual[0]
            index[folder] = ["diffusers", conf["_class_name"]]
            if folder == "adapter":  # not an argument of the adapter pipeline
                index.pop("image_encoder")
        if _is_upscaler(model):
            for key in ("image_encoder", "requires_safety_checker"):  # not arguments of this pipeline
                index.pop(key)
            index.update(_upscaler_parts(model, root))
        if text is not None:
            _save_text(text, root / "text_encoder")
            text.tokenizer.save_pretrained(str(root / "tokenizer"))
            index["text_encoder"] = ["transformers", type(text.transformer).__name__]
            index["tokenizer"] = ["transformers", type(text.tokenizer).__name__]
            (root / "model_index.json").write_text(json.dumps(index, indent=1))

    return _atomic_dir(Path(out), overwrite, write)


def _upscaler_parts(model, root: Path) -> dict[str, Any]:
    """``low_res_scheduler/`` (the lowres plugin's DDPM levels) and StableDiffusionUpscalePipeline's
    model_index entries."""
    c = model.conditioner.encoders["lowres"].config
    (root / "low_res_scheduler").mkdir()
    (root / "low_res_scheduler" / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "DDPMScheduler", "_diffusers_version": DIFFUSERS_VERSION, "beta_schedule": "linear",
        "beta_start": c.ddpm_beta_start, "beta_end": c.ddpm_beta_end, "num_train_timesteps": c.num_levels},
        indent=1))
    return {"_class_name": "StableDiffusionUpscalePipeline", "max_noise_level": int(c.max_noise_level),
            "low_res_scheduler": ["diffusers", "DDPMScheduler"], "safety_checker": [None, None],
            "watermarker": [None, None]}


def _save_text(text, folder: Path) -> None:
    """diffusers reads the last hidden state: a penultimate-layer encoder drops its last layer."""
    import copy

    model = text.transformer
    layer = text.config.hidden_layer
    if layer != -1:
        model = copy.deepcopy(model)
        keep = model.config.num_hidden_layers + 1 + layer
        inner = getattr(model, "text_model", model)
        inner.encoder.layers = inner.encoder.layers[:keep]
        model.config.num_hidden_layers = keep
    model.save_pretrained(str(folder), safe_serialization=True)


def export_run(run_dir: Path | str, out: Path | str, layout: str, *, ema: bool = True,
               overwrite: bool = False, progress: bool = True) -> Path:
    """``ldm export``: a run folder to ``layout`` = ``sd`` (single file) or ``diffusers``."""
    stages = Stages(2, f"export {Path(run_dir).name}", progress)
    stages.start("loading the run")
    cfg, model, _ = load_run(Path(run_dir), use_ema=ema)
    stages.start(f"converting and writing ({layout})")
    if cfg.autoencoder.kind == "pixels":
        raise ConfigError(f"{str(run_dir)!r} is a pixel-space model (autoencoder.kind=pixels): it "
                          f"has no VAE, and both export layouts are latent diffusion pipelines "
                          f"with one. Export runs with autoencoder.kind=kl.")
    writers = {"sd": export_single_file, "diffusers": export_diffusers}
    if layout in writers:
        written = writers[layout](model, cfg, out, overwrite=overwrite)
        stages.close()
        return written
    raise ConfigError(f"unknown export layout {layout!r}: choose layout=sd (one .safetensors file) "
                      f"or layout=diffusers (a folder).")


def export_command(args: list[str]) -> tuple[Path, str]:
    """``ldm export RUN_DIR OUT [layout=sd|diffusers ema=true overwrite=true]``: (what was
    written, its layout). The layout defaults to ``sd`` for an OUT ending in .safetensors."""
    usage = "ldm export RUN_DIR OUT [layout=sd|diffusers ema=true overwrite=true]"
    (run, out), rest = positional(args, ("RUN_DIR", "OUT"), usage)
    opts = parse_options(rest, ExportOptions)
    layout = opts.layout or ("sd" if out.endswith(".safetensors") else "diffusers")
    return export_run(run, out, layout, ema=opts.ema, overwrite=opts.overwrite,
                      progress=opts.progress), layout
