"""Parameter-name maps: ldmcore (the CompVis/SD layout) <-> diffusers, and OpenCLIP <-> HF CLIP.

Each map is built from the model's shape, one entry per ldmcore parameter, so it is total by
construction and inverts by swapping pairs. ``rename`` applies a map and reports every key that
did not match (missing, unexpected, wrong shape) in one ``CheckpointError``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

from ldmcore.checkpoint import mismatch_problems
from ldmcore.errors import CheckpointError
from ldmcore.nn.autoencoder import AutoencoderKL, AutoencoderShape
from ldmcore.nn.unet import UNetModel, UNetShape

# CompVis ResBlock sub-modules -> diffusers ResnetBlock2D
_UNET_RES = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
             "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
# CompVis autoencoder attention -> diffusers Attention (1x1 convs become linears)
_VAE_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def _res(rest: str) -> str:
    head = ".".join(rest.split(".")[:2])
    if head in _UNET_RES:
        return rest.replace(head, _UNET_RES[head], 1)
    return rest.replace("skip_connection", "conv_shortcut", 1)


def _meta_keys(module_fn: Callable[[], torch.nn.Module]) -> list[str]:
    with torch.device("meta"):
        return list(module_fn().state_dict())


def unet_keymap(shape: UNetShape) -> dict[str, str]:
    """ldmcore UNet key -> diffusers ``UNet2DConditionModel`` key."""
    nrb, levels = shape.num_res_blocks, len(shape.channel_mult)
    out: dict[str, str] = {}
    for key in _meta_keys(lambda: UNetModel(shape)):
        part = key.split(".")
        if key.startswith("time_embed."):
            theirs = f"time_embedding.linear_{1 if part[1] == '0' else 2}.{part[2]}"
        elif key == "label_emb.weight":  # linear vector input == diffusers' class-embedding table
            theirs = "class_embedding.weight"
        elif key.startswith("label_emb."):  # vector input == diffusers' "projection" class embedding
            theirs = f"class_embedding.linear_{1 if part[2] == '0' else 2}.{part[3]}"
        elif key.startswith("input_blocks.0.0."):
            theirs = "conv_in." + part[-1]
        elif key.startswith("input_blocks."):
            n, m, rest = int(part[1]), int(part[2]), ".".join(part[3:])
            level, j = divmod(n - 1, nrb + 1)
            if j == nrb:
                theirs = f"down_blocks.{level}.downsamplers.0.conv.{part[-1]}"
            elif m == 0:
                theirs = f"down_blocks.{level}.resnets.{j}.{_res(rest)}"
            else:
                theirs = f"down_blocks.{level}.attentions.{j}.{rest}"
        elif key.startswith("middle_block."):
            m, rest = int(part[1]), ".".join(part[2:])
            last = 2 if shape.middle_attention else 1
            if m == 0 or m == last:
                theirs = f"mid_block.resnets.{0 if m == 0 else 1}.{_res(rest)}"
            else:
                theirs = f"mid_block.attentions.0.{rest}"
        elif key.startswith("output_blocks."):
            n, m, rest = int(part[1]), int(part[2]), ".".join(part[3:])
            i, j = divmod(n, nrb + 1)
            has_attn = (levels - 1 - i) in shape.attention_levels
            if m == 0:
                theirs = f"up_blocks.{i}.resnets.{j}.{_res(rest)}"
            elif m == 1 and has_attn:
                theirs = f"up_blocks.{i}.attentions.{j}.{rest}"
            else:
                theirs = f"up_blocks.{i}.upsamplers.0.conv.{part[-1]}"
        elif key.startswith("out."):
            theirs = f"{'conv_norm_out' if part[1] == '0' else 'conv_out'}.{part[2]}"
        else:
            raise AssertionError(f"unmapped UNet key {key}")
        out[key] = theirs
    return out


# A linear vector input (``label_emb.weight``, (emb, levels)) is diffusers' ``nn.Embedding`` table
# (levels, emb) transposed: one-hot vectors through the Linear pick the table's rows.
_TRANSPOSED = "label_emb.weight"


def from_diffusers_unet(state: dict[str, torch.Tensor], shape: UNetShape, source: str) -> dict[str, torch.Tensor]:
    ours = rename(state, {v: k for k, v in unet_keymap(shape).items()}, "unet", source)
    if _TRANSPOSED in ours:
        ours[_TRANSPOSED] = ours[_TRANSPOSED].t().contiguous()
    return ours


def to_diffusers_unet(state: dict[str, torch.Tensor], shape: UNetShape) -> dict[str, torch.Tensor]:
    kmap = unet_keymap(shape)
    return {kmap[k]: (v.t().contiguous() if k == _TRANSPOSED else v) for k, v in state.items()}


def autoencoder_keymap(shape: AutoencoderShape) -> dict[str, str]:
    """ldmcore autoencoder key -> diffusers ``AutoencoderKL`` key (``scale_factor`` excluded)."""
    levels = len(shape.ch_mult)
    out: dict[str, str] = {}
    for key in _meta_keys(lambda: AutoencoderKL(shape)):
        if key == "scale_factor":
            continue
        theirs = key
        theirs = re.sub(r"^(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out.", theirs)
        theirs = re.sub(r"\.mid\.block_(\d)\.", lambda m: f".mid_block.resnets.{int(m[1]) - 1}.", theirs)
        theirs = re.sub(r"\.mid\.attn_1\.(\w+)\.", lambda m: f".mid_block.attentions.0.{_VAE_ATTN[m[1]]}.", theirs)
        theirs = re.sub(r"^encoder\.down\.(\d+)\.", r"encoder.down_blocks.\1.", theirs)
        theirs = re.sub(r"^decoder\.up\.(\d+)\.", lambda m: f"decoder.up_blocks.{levels - 1 - int(m[1])}.", theirs)
        theirs = re.sub(r"\.block\.(\d+)\.", r".resnets.\1.", theirs)
        theirs = re.sub(r"\.attn\.(\d+)\.(\w+)\.", lambda m: f".attentions.{m[1]}.{_VAE_ATTN[m[2]]}.", theirs)
        theirs = theirs.replace(".downsample.conv.", ".downsamplers.0.conv.")
        theirs = theirs.replace(".upsample.conv.", ".upsamplers.0.conv.")
        theirs = theirs.replace(".nin_shortcut.", ".conv_shortcut.")
        out[key] = theirs
    return out


def is_vae_attention_weight(key: str) -> bool:
    """ldmcore keys whose 1x1-conv weights are linear weights in diffusers."""
    return bool(re.search(r"\.(mid\.attn_1|attn\.\d+)\.(q|k|v|proj_out)\.weight$", key))


def to_diffusers_autoencoder(state: dict[str, torch.Tensor], shape: AutoencoderShape) -> dict[str, torch.Tensor]:
    kmap = autoencoder_keymap(shape)
    return {kmap[k]: (v[:, :, 0, 0] if is_vae_attention_weight(k) else v)
            for k, v in state.items() if k in kmap}


def from_diffusers_autoencoder(state: dict[str, torch.Tensor], shape: AutoencoderShape,
                               source: str) -> dict[str, torch.Tensor]:
    kmap = autoencoder_keymap(shape)
    ours = rename(state, {v: k for k, v in kmap.items()}, "vae", source)
    return {k: (v[:, :, None, None] if is_vae_attention_weight(k) and v.dim() == 2 else v)
            for k, v in ours.items()}


def rename(state: dict[str, torch.Tensor], mapping: dict[str, str], what: str, source: str,
           expected_shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, torch.Tensor]:
    """Apply ``mapping`` (their key -> our key) to all of ``state``; any key that does not match
    is reported, all of them at once, in a ``CheckpointError``."""
    missing = sorted(k for k in mapping if k not in state)
    unexpected = sorted(k for k in state if k not in mapping)
    out = {mapping[k]: v for k, v in state.items() if k in mapping}
    bad_shape = []
    if expected_shapes:
        bad_shape = [f"{k} {tuple(v.shape)} (expected {expected_shapes[mapping_k]})"
                     for k, v in state.items()
                     if (mapping_k := mapping.get(k)) in expected_shapes
                     and tuple(v.shape) != tuple(expected_shapes[mapping_k])]
    report_mismatch(what, source, missing, unexpected, bad_shape)
    return out


def report_mismatch(what: str, source: str, missing: list[str], unexpected: list[str],
                    bad_shape: list[str]) -> None:
    problems = mismatch_problems(missing, unexpected, bad_shape, 6)
    if problems:
        raise CheckpointError(f"the {what} weights in {source!r} do not match the architecture "
                              f"detected from it: {'; '.join(problems)}. Nothing was written.")


# -- SD inpainting: the input convolution's extra channels -------------------------------------
# SD's 9-channel UNet reads [z_t (4) | mask (1) | masked-image latents (4)]; ldmcore's ``inpaint``
# plugin emits [masked-image latents | mask], so its columns follow z_t in that order.
def inpaint_columns(latent: int, to_sd: bool) -> list[int]:
    """Column order that turns one layout's input-conv weight into the other's."""
    sd_order = list(range(latent)) + [2 * latent] + list(range(latent, 2 * latent))  # ours -> SD
    if to_sd:
        return sd_order
    inverse = [0] * len(sd_order)
    for new, old in enumerate(sd_order):
        inverse[old] = new
    return inverse


def permute_in_conv(state: dict[str, torch.Tensor], key: str, order: list[int]) -> dict[str, torch.Tensor]:
    out = dict(state)
    if key in out:
        out[key] = out[key][:, order].contiguous()
    return out


# -- Hugging Face CLIP text models ---------------------------------------------------------------
# Keys here are "canonical": without transformers 4's ``text_model.`` prefix (transformers 5 drops
# it; SD 1.x files keep it). ``clip_canonical`` and ``clip_for`` convert at the boundaries.
def clip_canonical(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("text_model."): v for k, v in state.items() if not k.endswith("position_ids")}


def clip_for(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Canonical keys -> the layout of the installed transformers' ``model``."""
    prefixed = any(k.startswith("text_model.") for k in model.state_dict())
    return {("text_model." + k if prefixed else k): v for k, v in state.items()}


# -- OpenCLIP (SD 2.x ``cond_stage_model.model.*``) <-> Hugging Face CLIPTextModel ---------------
OPENCLIP_EXTRA = ("text_projection", "logit_scale")  # in SD 2.x files, unused by the UNet's context

_OPENCLIP_LAYER = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
                   "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}


def openclip_to_hf(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """OpenCLIP text-tower keys (prefix stripped) -> ``CLIPTextModel`` state dict."""
    out: dict[str, torch.Tensor] = {}
    unexpected = []
    for key, value in state.items():
        if key in OPENCLIP_EXTRA:
            continue
        if key == "token_embedding.weight":
            out["embeddings.token_embedding.weight"] = value
        elif key == "positional_embedding":
            out["embeddings.position_embedding.weight"] = value
        elif key.startswith("ln_final."):
            out["final_layer_norm." + key.split(".")[-1]] = value
        elif m := re.match(r"transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)$", key):
            layer, mod, kind = m[1], m[2], m[3]
            prefix = f"encoder.layers.{layer}."
            if mod in _OPENCLIP_LAYER:
                out[prefix + _OPENCLIP_LAYER[mod] + "." + kind] = value
            else:
                unexpected.append(key)
        elif m := re.match(r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$", key):
            prefix = f"encoder.layers.{m[1]}.self_attn."
            for name, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                out[f"{prefix}{name}.{m[2]}"] = chunk
        else:
            unexpected.append(key)
    report_mismatch("OpenCLIP text encoder", source, [], sorted(unexpected), [])
    return out


def hf_to_openclip(state: dict[str, torch.Tensor], pad_layers: int = 0) -> dict[str, torch.Tensor]:
    """``CLIPTextModel`` state dict -> OpenCLIP text-tower keys (the inverse of the above).

    ``pad_layers`` appends identity residual blocks (zero output projections): a diffusers SD 2.x
    text encoder stores 23 layers and reads the last, SD files store 24 and read the penultimate.
    """
    out: dict[str, torch.Tensor] = {}
    inverse = {v: k for k, v in _OPENCLIP_LAYER.items()}
    qkv: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
    for key, value in state.items():
        if key.endswith("position_ids"):
            continue
        if key == "embeddings.token_embedding.weight":
            out["token_embedding.weight"] = value
        elif key == "embeddings.position_embedding.weight":
            out["positional_embedding"] = value
        elif key.startswith("final_layer_norm."):
            out["ln_final." + key.split(".")[-1]] = value
        elif m := re.match(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$", key):
            qkv.setdefault(m[1], {}).setdefault(m[3], {})[m[2]] = value
        elif m := re.match(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", key):
            out[f"transformer.resblocks.{m[1]}.{inverse[m[2]]}.{m[3]}"] = value
    for layer, kinds in qkv.items():
        for kind, parts in kinds.items():
            out[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat(
                [parts["q"], parts["k"], parts["v"]])
    n = len(qkv)
    for extra in range(n, n + pad_layers):
        for key in [k for k in out if k.startswith("transformer.resblocks.0.")]:
            src = out[key]
            new = key.replace("resblocks.0.", f"resblocks.{extra}.", 1)
            zero = "out_proj" in key or "c_proj" in key
            out[new] = torch.zeros_like(src) if zero else src.clone()
    width = out["token_embedding.weight"].shape[1]
    out["text_projection"] = torch.eye(width)
    out["logit_scale"] = torch.tensor(4.6052)  # log(1 / 0.07), CLIP's initial temperature
    return out
