"""Image tensors to PNG files and grids."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ldmcore.errors import ConfigError


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> (B, H, W, C) uint8."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def to_pil(array: np.ndarray) -> Image.Image:
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def save_png(image: torch.Tensor, path: Path) -> None:
    """One (C, H, W) image in [-1, 1] to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    to_pil(to_uint8(image[None])[0]).save(path)


def grid(images: torch.Tensor, nrow: int, pad: int = 2) -> np.ndarray:
    """Tile (B, C, H, W) images ``nrow`` per row with ``pad`` pixels of black between."""
    arr = to_uint8(images)
    b, h, w, c = arr.shape
    rows = math.ceil(b / nrow)
    out = np.zeros((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), dtype=np.uint8)
    for i in range(b):
        r, col = divmod(i, nrow)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = arr[i]
    return out


def save_grid(images: torch.Tensor, path: Path, nrow: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    to_pil(grid(images, nrow)).save(path)


def read_image(path: str | Path, channels: int, what: str) -> torch.Tensor:
    """A PNG/JPEG file as (C, H, W) in [-1, 1]; unreadable files are ConfigErrors naming ``what``."""
    file = Path(str(path).strip()).expanduser()
    try:
        with Image.open(file) as img:
            array = np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.float32)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{what}: cannot read image {str(file)!r} ({exc}); give the path of a "
                          f"PNG or JPEG file.") from None
    if array.ndim == 2:
        array = array[..., None]
    return torch.from_numpy(array.transpose(2, 0, 1).copy()) / 127.5 - 1.0


def read_label_map(path: str | Path, what: str) -> torch.Tensor:
    """A single-channel PNG of integer class indices as an (H, W) long tensor."""
    file = Path(str(path).strip()).expanduser()
    try:
        with Image.open(file) as img:
            array = np.asarray(img.convert("L") if img.mode not in ("L", "P", "I") else img)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{what}: cannot read label map {str(file)!r} ({exc}); give a "
                          f"single-channel PNG whose pixel values are class indices.") from None
    return torch.from_numpy(array.astype(np.int64))
