"""Import Stable Diffusion single files and diffusers folders as ldmcore run folders.

``read_pretrained`` turns a source into an ``Architecture`` plus tensors in ldmcore's names;
``import_pretrained`` writes a run folder (``ldm import SOURCE OUT_DIR``); ``from_pretrained``
returns a ready ``LatentDiffusion`` from a run folder, an SD single file or a diffusers folder.
The CLIP text encoder becomes the ``text`` plugin: a transformers folder ``OUT_DIR/text_encoder``
named (relative to the run) in the run's config.

Only ``.safetensors`` is read; a pickle (``.ckpt``, ``.bin``) is refused. Every key of the source
must be understood: unknown, missing or mis-shaped keys are refused with the list, before
anything is written. The run folder is written to a temporary sibling and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from ldmcore import checkpoint
from ldmcore.build import build_model
from ldmcore.config import validate
from ldmcore.errors import CheckpointError, ConfigError
from ldmcore.interop import keymaps
from ldmcore.interop.detect import (Architecture, apply_overrides, autoencoder_shape_from_compvis,
                                    autoencoder_shape_from_diffusers, clip_config_from_hf,
                                    schedule_from_betas, schedule_from_diffusers,
                                    unet_shape_from_compvis, unet_shape_from_diffusers)
from ldmcore.interop.gligen_import import gligen_plugin
from ldmcore.nn.autoencoder import AutoencoderKL
from ldmcore.nn.unet import UNetModel
from ldmcore.progress import Stages
from ldmcore.registry import default_registry
from ldmcore.runfolder import RunFolder, load_run, run_metadata

UNET, VAE, TEXT = "model.diffusion_model.", "first_stage_model.", "cond_stage_model."
EMA = "model_ema."
# Buffers that SD files carry but that are recomputed from the config (or unused at inference).
SD_IGNORED = {
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
    "posterior_mean_coef1", "posterior_mean_coef2", "logvar", "model_ema.decay",
    "model_ema.num_updates",
}
SD_IGNORED_PREFIXES = ("first_stage_model.loss.",)  # the autoencoder's training loss
PICKLES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
TEXT_DIR = "text_encoder"


@dataclass
class Pretrained:
    """A foreign model in ldmcore's names, not yet written anywhere."""

    arch: Architecture
    source: str
    unet: dict[str, torch.Tensor]
    autoencoder: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] = field(default_factory=dict)  # UNet EMA (model_ema.*)
    text_state: dict[str, torch.Tensor] | None = None  # CLIPTextModel state dict
    text_folder: Path | None = None  # a complete transformers folder (diffusers' text_encoder/)
    tokenizer: Path | None = None
    # plugins the source holds beside the backbone (GLIGEN's gated layout): name -> (config
    # section, tensors in the plugin's names)
    plugins: dict[str, tuple[dict[str, Any], dict[str, torch.Tensor]]] = field(default_factory=dict)


def _refuse_pickle(path: Path) -> None:
    if path.suffix in PICKLES:
        raise CheckpointError(f"{str(path)!r} is a pickled PyTorch file; ldmcore reads only "
                              f".safetensors (unpickling can run arbitrary code). Convert it once "
                              f"in a trusted environment, e.g. safetensors.torch.save_file("
                              f"torch.load(path, weights_only=True)['state_dict'], 'model.safetensors').")


def _load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    _refuse_pickle(path)
    from safetensors import safe_open

    tensors, _ = checkpoint.load(path)
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata() or {}
    return tensors, meta


def _split(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _check_against(module_fn, state: dict[str, torch.Tensor], what: str, source: str) -> None:
    """Compare ``state`` with a meta-device instance's keys and shapes; report all mismatches."""
    with torch.device("meta"):
        own = {k: tuple(v.shape) for k, v in module_fn().state_dict().items() if k != "scale_factor"}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad = [f"{k} {tuple(state[k].shape)} (expected {own[k]})" for k in sorted(set(own) & set(state))
           if tuple(state[k].shape) != own[k]]
    keymaps.report_mismatch(what, source, missing, unexpected, bad)


# -- Stable Diffusion single files ---------------------------------------------------------------
def read_single_file(path: Path, *, tokenizer: Path | None = None, prediction: str | None = None,
                     image_size: int | None = None) -> Pretrained:
    source = str(path)
    tensors, meta = _load_tensors(path)
    unknown = sorted(k for k in tensors if not k.startswith((UNET, VAE, TEXT, EMA))
                     and k not in SD_IGNORED and not k.startswith(SD_IGNORED_PREFIXES))
    if unknown:
        keymaps.report_mismatch("Stable Diffusion", source, [], unknown, [])
    text = _split(tensors, TEXT)
    if any(k.startswith("model.transformer.") for k in text):
        family, act, hidden_layer = "sd2", "gelu", -2  # OpenCLIP ViT-H: penultimate layer + ln_final
        text_state = keymaps.openclip_to_hf(_split(text, "model."), source)
    elif any(k.startswith("transformer.") for k in text):
        family, act, hidden_layer = "sd1", "quick_gelu", -1  # OpenAI CLIP ViT-L: last hidden state
        hf = _split(text, "transformer.")
        unexpected = sorted(k for k in hf if not k.startswith(("text_model.", "embeddings.", "encoder.",
                                                              "final_layer_norm.")))
        keymaps.report_mismatch("CLIP text encoder", source, [], [TEXT + "transformer." + k for k in unexpected], [])
        text_state = keymaps.clip_canonical(hf)
    elif text:
        raise CheckpointError(f"{source!r}: cond_stage_model.* holds neither a Hugging Face CLIP "
                              f"(transformer.*) nor an OpenCLIP (model.transformer.*) text encoder; "
                              f"unrecognised keys: {', '.join(sorted(text)[:6])}.")
    else:
        family, act, hidden_layer, text_state = "custom", "gelu", -1, None
    unet = _split(tensors, UNET)
    arch = Architecture(unet=unet_shape_from_compvis(unet, family, source),
                        autoencoder=autoencoder_shape_from_compvis(_split(tensors, VAE), source),
                        family=family, text_hidden_layer=hidden_layer)
    if text_state is not None:
        arch.text = clip_config_from_hf(text_state, act)
    if "betas" in tensors:
        arch.schedule = schedule_from_betas(tensors["betas"], source)
    arch = apply_overrides(arch, meta)
    recorded = "ldmcore.prediction" in meta
    if prediction is not None:
        arch.prediction = prediction
    elif family == "sd2" and not recorded:
        raise ConfigError(f"{source!r} is a Stable Diffusion 2.x file, and those do not record "
                          f"whether the UNet predicts noise (the 512 px base models) or v (the "
                          f"768 px models); pass prediction=eps or prediction=v.")
    if image_size is not None:
        arch.image_size = image_size
    elif "ldmcore.image_size" not in meta:
        arch.image_size = 768 if arch.prediction == "v" else 512
    autoencoder = _split(tensors, VAE)
    autoencoder = {k: v for k, v in autoencoder.items() if not k.startswith("loss.")}
    _check_against(lambda: UNetModel(arch.unet), unet, "UNet (model.diffusion_model.*)", source)
    _check_against(lambda: AutoencoderKL(arch.autoencoder), autoencoder,
                   "autoencoder (first_stage_model.*)", source)
    ema = _read_ema(tensors, unet, source)
    if text_state is not None and tokenizer is None:
        raise ConfigError(f"{source!r} holds a CLIP text encoder but single files carry no "
                          f"tokenizer; pass tokenizer=PATH, a local folder with the CLIP tokenizer "
                          f"files (e.g. the tokenizer/ folder of any diffusers Stable Diffusion "
                          f"{family[-1]}.x model).")
    return Pretrained(arch=arch, source=source, unet=unet, autoencoder=autoencoder, ema=ema,
                      text_state=text_state, tokenizer=Path(tokenizer) if tokenizer else None)


def _read_ema(tensors: dict[str, torch.Tensor], unet: dict[str, torch.Tensor], source: str
              ) -> dict[str, torch.Tensor]:
    """CompVis LitEma stores ``model_ema.diffusion_model<key without dots>``."""
    ema_keys = {k for k in tensors if k.startswith(EMA) and k not in SD_IGNORED}
    if not ema_keys:
        return {}
    flat = {EMA + "diffusion_model" + k.replace(".", ""): k for k in unet}
    keymaps.report_mismatch("UNet EMA (model_ema.*)", source, sorted(set(flat) - ema_keys),
                            sorted(ema_keys - set(flat)), [])
    return {flat[k]: tensors[k] for k in ema_keys}


# -- diffusers folders ---------------------------------------------------------------------------
def _json(path: Path, source: str) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{source!r} is not a complete diffusers folder: {path.name} is "
                              f"missing from {path.parent.name}/.")
    return json.loads(path.read_text())


def _weights(folder: Path, stem: str, source: str) -> dict[str, torch.Tensor]:
    path = folder / f"{stem}.safetensors"
    if not path.is_file():
        pickled = [p for p in folder.glob(f"{stem}*") if p.suffix in PICKLES]
        if pickled:
            _refuse_pickle(pickled[0])
        raise CheckpointError(f"{source!r}: {folder.name}/{stem}.safetensors is missing.")
    return _load_tensors(path)[0]


def read_diffusers(folder: Path, *, prediction: str | None = None, image_size: int | None = None,
                   phrases: tuple[str, ...] | None = None) -> Pretrained:
    source = str(folder)
    ucfg = _json(folder / "unet" / "config.json", source)
    vcfg = _json(folder / "vae" / "config.json", source)
    unet_shape = unet_shape_from_diffusers(ucfg, source)
    ae_shape = autoencoder_shape_from_diffusers(vcfg, source)
    arch = Architecture(unet=unet_shape, autoencoder=ae_shape, family="custom",
                        scale_factor=float(vcfg.get("scaling_factor", 0.18215)))
    sched = folder / "scheduler" / "scheduler_config.json"
    if sched.is_file():
        arch.schedule, arch.sampler, arch.prediction = schedule_from_diffusers(json.loads(sched.read_text()), source)
    if prediction is not None:
        arch.prediction = prediction
    factor = ae_shape.downsample_factor
    arch.image_size = image_size or int(ucfg.get("sample_size", 64)) * factor
    unet_state = _weights(folder / "unet", "diffusion_pytorch_model", source)
    gated = ucfg.get("attention_type") == "gated"
    if not gated and phrases:
        raise ConfigError(f"phrases= name the phrases a GLIGEN pipeline's boxes are offered with; "
                          f"{source!r} is not one (its UNet has no gated attention).")
    text_folder = tokenizer = None
    if (folder / "text_encoder").is_dir():
        if not (folder / "tokenizer").is_dir():
            raise CheckpointError(f"{source!r} has text_encoder/ but no tokenizer/.")
        text_folder, tokenizer = folder / "text_encoder", folder / "tokenizer"
    plugins = {}
    if gated:
        unet_state, section, layout = gligen_plugin(unet_state, unet_shape, phrases,
                                                    TEXT_DIR if text_folder else None, source)
        plugins["layout"] = (section, layout)
    unet = keymaps.from_diffusers_unet(unet_state, unet_shape, source)
    if arch.is_upscaler:
        arch.lowres = _upscaler_levels(folder, source)
    autoencoder = keymaps.from_diffusers_autoencoder(
        _weights(folder / "vae", "diffusion_pytorch_model", source), ae_shape, source)
    _check_against(lambda: UNetModel(unet_shape), unet, "unet", source)
    _check_against(lambda: AutoencoderKL(ae_shape), autoencoder, "vae", source)
    if text_folder is not None:
        tcfg = _json(folder / "text_encoder" / "config.json", source)
        _weights(folder / "text_encoder", "model", source)  # refuse pickles, require safetensors
        arch.text = tcfg
        arch.family = {"quick_gelu": "sd1", "gelu": "sd2"}.get(tcfg.get("hidden_act"), "custom")
    return Pretrained(arch=arch, source=source, unet=unet, autoencoder=autoencoder,
                      text_folder=text_folder, tokenizer=tokenizer, plugins=plugins)


def _upscaler_levels(folder: Path, source: str) -> dict[str, Any]:
    """The ``lowres`` plugin's level settings of an SD x4 upscaler folder: the DDPM schedule of
    ``low_res_scheduler/`` and the pipeline's ``max_noise_level`` (diffusers' defaults if absent)."""
    levels: dict[str, Any] = {"beta_start": 1e-4, "beta_end": 0.02, "max_noise_level": 350}
    sched = folder / "low_res_scheduler" / "scheduler_config.json"
    if sched.is_file():
        cfg = json.loads(sched.read_text())
        if cfg.get("beta_schedule", "linear") != "linear":
            raise CheckpointError(f"{source!r}: low_res_scheduler uses beta_schedule="
                                  f"{cfg['beta_schedule']!r}; the lowres plugin's ddpm levels are linear.")
        levels.update(beta_start=cfg.get("beta_start", 1e-4), beta_end=cfg.get("beta_end", 0.02),
                      timesteps=cfg.get("num_train_timesteps", 1000))
    index = folder / "model_index.json"
    if index.is_file():
        levels["max_noise_level"] = json.loads(index.read_text()).get("max_noise_level", 350)
    return levels


def read_pretrained(source: Path | str, **options: Any) -> Pretrained:
    """An SD single file (``.safetensors``) or a diffusers folder (``unet/``, ``vae/``...)."""
    path = Path(source)
    _refuse_pickle(path)
    if path.is_dir():
        if not (path / "unet").is_dir():
            raise CheckpointError(f"{str(path)!r} is a folder but not a diffusers model (no unet/ "
                                  f"inside); give a diffusers folder or an SD .safetensors file.")
        options.pop("tokenizer", None)
        return read_diffusers(path, **options)
    if options.pop("phrases", None):
        raise ConfigError(f"phrases= name a GLIGEN pipeline's phrases; {str(path)!r} is a single "
                          f"file (GLIGEN imports from its diffusers folder).")
    if not path.is_file():
        raise CheckpointError(f"{str(path)!r} does not exist; give an SD .safetensors file or a "
                              f"diffusers folder.")
    return read_single_file(path, **options)


# -- the ldmcore side ----------------------------------------------------------------------------
def experiment_config(p: Pretrained, name: str = "imported") -> dict[str, Any]:
    """The ldmcore config (a plain dict, validated by the caller) of a pretrained model."""
    a = p.arch
    u, ae = a.unet, a.autoencoder
    unet = {"model_channels": u.model_channels, "channel_mult": list(u.channel_mult),
            "num_res_blocks": u.num_res_blocks, "attention_levels": list(u.attention_levels),
            "middle_attention": u.middle_attention, "num_head_channels": u.num_head_channels,
            "num_heads": u.num_heads, "transformer_depth": u.transformer_depth,
            "use_linear_in_transformer": u.use_linear_in_transformer, "norm_groups": u.norm_groups,
            "vector_projection": u.vector_projection, "cross_only_levels": list(u.cross_only_levels)}
    if u.context_dim is not None:
        unet["context_dim"] = u.context_dim
    conditions: dict[str, Any] = {}
    if a.text is not None:
        conditions["text"] = {"model": TEXT_DIR, "max_length": int(a.text.get("max_position_embeddings", 77)),
                              "hidden_layer": a.text_hidden_layer, "mask_padding": False, "unconditional": "empty"}
    extra = u.in_channels - u.out_channels
    if a.is_upscaler and _has_plugin("lowres"):
        conditions["lowres"] = _lowres_plugin(p)
    elif extra == u.out_channels + 1 and _has_plugin("inpaint"):
        conditions["inpaint"] = {"drop_prob": 0.0}
    elif extra:
        raise CheckpointError(
            f"{p.source!r} is a {a.variant} model: its UNet takes {u.in_channels} input channels, "
            f"{extra} more than its {u.out_channels} latent channels"
            + (" (SD inpainting: masked-image latents + mask)" if extra == 5 else "")
            + ". Those concat channels belong to the `inpaint` plugin, which this installation "
              "does not provide yet; `ldm plugins` lists what is installed.")
    conditions.update({name: section for name, (section, _) in p.plugins.items()})
    if u.vector_dim and "lowres" not in conditions:
        raise CheckpointError(f"{p.source!r}: its UNet takes a {u.vector_dim}-d vector condition "
                              f"(label_emb); no installed plugin is known to produce it.")
    return {
        "name": name,
        "model": {"unet": unet, "diffusion": {**a.schedule, "prediction": a.prediction}},
        "autoencoder": {"latent_channels": ae.latent_channels, "ch": ae.ch, "ch_mult": list(ae.ch_mult),
                        "num_res_blocks": ae.num_res_blocks, "attn_levels": list(ae.attn_levels),
                        "norm_groups": ae.norm_groups},
        "data": {"name": "image_folder", "image_size": a.image_size, "channels": ae.in_channels},
        "sampler": {"name": "ddim", "steps": 50, "guidance": 7.5, "eta": 0.0, **a.sampler},
        "trainer": {"precision": "fp32"},
        "conditions": conditions,
    }


def _lowres_plugin(p: Pretrained) -> dict[str, Any]:
    """SD x4 upscaler -> ``lowres``: the image at latent resolution (factor = the VAE's), noised by
    integer DDPM levels, each level one row of the UNet's embedding table (one-hot vector)."""
    levels = p.arch.lowres
    num = p.arch.unet.vector_dim
    if levels.get("timesteps", num) != num:
        raise CheckpointError(f"{p.source!r}: low_res_scheduler has {levels['timesteps']} steps but "
                              f"the UNet's noise-level table has {num} rows.")
    return {"factor": p.arch.autoencoder.downsample_factor, "noise": "ddpm", "level_encoding": "onehot",
            "num_levels": num, "ddpm_beta_start": levels["beta_start"], "ddpm_beta_end": levels["beta_end"],
            "max_noise_level": min(int(levels["max_noise_level"]), num - 1),
            "sample_noise_level": min(20, num - 1),  # StableDiffusionUpscalePipeline's default
            "drop_prob": 0.0}


def _has_plugin(name: str) -> bool:
    return name in default_registry().encoders


def _sd_to_plugin_layout(p: Pretrained, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    u = p.arch.unet
    if u.in_channels == 2 * u.out_channels + 1:  # SD inpainting -> the inpaint plugin's order
        return keymaps.permute_in_conv(state, "input_blocks.0.0.weight",
                                       keymaps.inpaint_columns(u.out_channels, to_sd=False))
    return state


def model_tensors(p: Pretrained) -> dict[str, torch.Tensor]:
    """The run checkpoint's tensors: ``unet.*``, ``autoencoder.*`` (+ ``ema.unet.*``)."""
    p.unet, p.ema = _sd_to_plugin_layout(p, p.unet), _sd_to_plugin_layout(p, p.ema)
    out = checkpoint.with_prefix("unet.", p.unet)
    out.update(checkpoint.with_prefix("autoencoder.", p.autoencoder))
    out["autoencoder.scale_factor"] = torch.tensor(float(p.arch.scale_factor))
    out.update(checkpoint.with_prefix("ema.unet.", p.ema))
    for name, (_, tensors) in p.plugins.items():
        out.update(checkpoint.with_prefix(f"conditioner.encoders.{name}.", tensors))
    return out


def write_text_encoder(p: Pretrained, folder: Path) -> None:
    """A transformers folder (config, weights, tokenizer) for the ``text`` plugin."""
    from transformers import AutoTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    if p.text_folder is not None:
        for f in p.text_folder.iterdir():
            if f.is_file() and f.suffix in (".json", ".safetensors"):
                shutil.copy2(f, folder / f.name)
    else:
        from transformers import CLIPTextConfig, CLIPTextModel

        tok = AutoTokenizer.from_pretrained(str(p.tokenizer), local_files_only=True)
        cfg = CLIPTextConfig(**p.arch.text, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)
        model = CLIPTextModel(cfg)
        own = set(keymaps.clip_canonical(model.state_dict()))
        keymaps.report_mismatch("CLIP text encoder", p.source, sorted(own - set(p.text_state)),
                                sorted(set(p.text_state) - own), [])
        model.load_state_dict(keymaps.clip_for(model, p.text_state), strict=False)
        model.save_pretrained(str(folder), safe_serialization=True)
    try:
        AutoTokenizer.from_pretrained(str(p.tokenizer), local_files_only=True).save_pretrained(str(folder))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read a tokenizer from {str(p.tokenizer)!r}: {exc}") from None


def import_pretrained(source: Path | str, out_dir: Path | str, *, overwrite: bool = False,
                      progress: bool = True, **options: Any) -> Path:
    """``ldm import``: write an ldmcore run folder for an SD file or a diffusers folder."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{str(out)!r} already exists and is not empty; choose a new OUT_DIR or "
                          f"pass overwrite=true.")
    RunFolder(out).check_claim(resume=False, overwrite=True, what="OUT_DIR")  # only a run folder
    stages = Stages(4, f"import {Path(source).name}", progress)
    stages.start("reading")
    p = read_pretrained(source, **options)
    cfg = validate({**experiment_config(p, out.name), "run_dir": str(out)})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        stages.start("text encoder")
        if p.arch.text is not None:
            write_text_encoder(p, tmp / TEXT_DIR)
        stages.start("building and loading the model")
        model = _build_and_load(cfg, model_tensors(p), tmp, p.source)
        stages.start("writing the run folder")
        _write_run(tmp, cfg, model, p)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        stages.close()
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _build_and_load(cfg, tensors: dict[str, torch.Tensor], root: Path, source: str):
    """Build the model for ``cfg`` and load ``tensors`` (EMA, if any, replaces the UNet's
    weights only when asked, at sampling). Any plugin it cannot satisfy fails here."""
    model = build_model(cfg, root=root)
    state = {k: v for k, v in tensors.items() if not k.startswith("ema.")}
    checkpoint.load_into(model, state, "model", source)
    return model.eval()


def _write_run(root: Path, cfg, model, p: Pretrained) -> None:
    run = RunFolder(root)
    run.checkpoints.mkdir(parents=True, exist_ok=True)
    run.mark()
    run.config.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    tensors = dict(model.state_dict())
    tensors.update(checkpoint.with_prefix("ema.unet.", p.ema))  # already in the plugin layout
    checkpoint.save(run.last, tensors, run_metadata(
        cfg, model, 0, source={"path": p.source, "variant": p.arch.variant}))
    (root / "import.json").write_text(json.dumps({
        "source": p.source, "variant": p.arch.variant, "unet": asdict(p.arch.unet),
        "autoencoder": asdict(p.arch.autoencoder), "prediction": p.arch.prediction,
        "schedule": p.arch.schedule, "sampler": p.arch.sampler}, indent=1))


def from_pretrained(path: Path | str, *, ema: bool = True, **options: Any):
    """A ``LatentDiffusion`` from a run folder, an SD ``.safetensors`` file or a diffusers folder.

    Foreign sources are converted in memory (the text encoder passes through a temporary
    folder); ``options`` are those of ``ldm import`` (tokenizer, prediction, image_size).
    """
    path = Path(path)
    if path.is_dir() and (path / "checkpoints" / "last.safetensors").is_file():
        return load_run(path, use_ema=ema)[1]
    p = read_pretrained(path, **options)
    cfg = validate(experiment_config(p, path.stem))
    with tempfile.TemporaryDirectory(prefix="ldm-import-") as tmp:
        if p.arch.text is not None:
            write_text_encoder(p, Path(tmp) / TEXT_DIR)
        model = _build_and_load(cfg, model_tensors(p), Path(tmp), p.source)
    if ema and p.ema:
        with torch.no_grad():
            for k, v in p.ema.items():
                model.unet.state_dict()[k].copy_(v)
    return model
