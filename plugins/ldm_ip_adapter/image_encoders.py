"""What turns a reference image into one embedding vector for the ``ip_adapter`` plugin: a small
trainable convolutional encoder (the default, nothing to download), or a frozen local
``transformers`` vision model named by path (a CLIP vision tower, as IP-Adapter uses)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ldmcore.errors import ConfigError
from ldmcore.nn.local_models import check_model_folder


class SmallImageEncoder(nn.Module):
    """Three stride-2 convolutions and a global average: (B, C, H, W) in [-1, 1] -> (B, dim)."""

    def __init__(self, channels: int, dim: int, width: int = 32) -> None:
        super().__init__()
        self.dim = dim
        self.net = nn.Sequential(nn.Conv2d(channels, width, 3, 2, 1), nn.SiLU(),
                                 nn.Conv2d(width, 2 * width, 3, 2, 1), nn.SiLU(),
                                 nn.Conv2d(2 * width, dim, 3, 2, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.to(self.net[0].weight.dtype)).mean(dim=(2, 3))


# CLIP's pixel statistics, used when the folder has no preprocessor_config.json
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


class FrozenVisionModel:
    """A local ``transformers`` vision model, frozen: images in [-1, 1] -> its image embedding
    (``image_embeds`` of a model with a projection, as CLIPVisionModelWithProjection, else the
    pooled output). Resized and normalised as its preprocessor config says."""

    def __init__(self, folder: Path, key: str) -> None:
        import json

        import transformers
        from transformers import AutoModel

        check_model_folder(folder, key, "the vision model's preprocessor_config.json (e.g. a CLIP vision tower)")
        # the class the folder was saved from (CLIPVisionModelWithProjection keeps its projection,
        # which AutoModel would drop), else whatever AutoModel maps its config to
        names = json.loads((folder / "config.json").read_text()).get("architectures") or []
        cls = getattr(transformers, names[0], None) if names else None
        try:
            model = (cls or AutoModel).from_pretrained(str(folder), local_files_only=True,
                                                       use_safetensors=True)
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"cannot load a vision model from {key}={str(folder)!r}: "
                              f"{' '.join(str(exc).split())[:300]}") from None
        config = getattr(model.config, "vision_config", model.config)
        if not hasattr(config, "image_size"):
            raise ConfigError(f"{key}={str(folder)!r} holds a {type(model).__name__}, not a vision "
                              f"model (its config has no image_size); name a vision model folder.")
        self.model = model.eval().requires_grad_(False)
        self.folder = folder
        self.size = int(config.image_size)
        mean, std = CLIP_MEAN, CLIP_STD
        pre = folder / "preprocessor_config.json"
        if pre.is_file():
            stats = json.loads(pre.read_text())
            mean, std = stats.get("image_mean", mean), stats.get("image_std", std)
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)
        self.dim = self(torch.zeros(1, 3, self.size, self.size)).shape[-1]  # measured, not guessed

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        weight = next(self.model.parameters())
        x = (images.float() + 1) / 2
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(self.size, self.size), mode="bicubic", align_corners=False)
        x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        out = self.model(pixel_values=x.to(weight))
        embeds = getattr(out, "image_embeds", None)
        return (embeds if embeds is not None else out.pooler_output).float()
