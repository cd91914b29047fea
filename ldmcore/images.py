"""Image files in and out: reading user images safely, writing PNG files and grids.

Every image a user names (``init=``, ``mask=``, ``cond.segmap=``, ``cond.lowres=``, an image
folder's items) is read through ``open_image``: the header is checked before any pixel is
decoded, so a decompression bomb (a small file that decodes to gigabytes) is refused by its
declared size, and every way a file can be unreadable is one error that names the argument.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ldmcore.errors import ConfigError, LdmError

MAX_PIXELS = 2**26  # 67 megapixels (8192 x 8192): far above any image these models use


def open_image(path: str | Path, what: str, error: type[LdmError] = ConfigError,
               hint: str = "give the path of a PNG or JPEG file", decode: bool = True) -> Image.Image | None:
    """The decoded image at ``path``; an unreadable, truncated or oversized file raises
    ``error`` naming ``what`` (the argument or data key it came from). ``decode=False`` only
    checks the header (cheap: a folder's every file can be checked before training starts)."""
    file = Path(str(path).strip()).expanduser()
    try:
        with Image.open(file) as img:
            check_size(img, file, what, error)
            if not decode:
                return None
            img.load()
            return img.copy()  # closing the file releases the decoded pixels
    except LdmError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, MemoryError) as exc:
        raise error(f"{what}={str(file)!r} is not a readable image ({exc}); {hint}.") from None


def check_size(img: Image.Image, file: Path, what: str, error: type[LdmError] = ConfigError) -> None:
    """Refuse an image whose header declares more than ``MAX_PIXELS`` pixels (before decoding)."""
    width, height = img.size
    if width * height > MAX_PIXELS:
        raise error(f"{what}={str(file)!r} declares {width} x {height} pixels, more than the "
                    f"{MAX_PIXELS // 2**20} megapixels ldmcore decodes (a file that small "
                    f"decoding that large is a decompression bomb); resize it first.")


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
    img = open_image(path, what)
    array = np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.float32)
    if array.ndim == 2:
        array = array[..., None]
    return torch.from_numpy(array.transpose(2, 0, 1).copy()) / 127.5 - 1.0


def read_label_map(path: str | Path, what: str) -> torch.Tensor:
    """A single-channel PNG of integer class indices as an (H, W) long tensor."""
    img = open_image(path, what, hint="give a single-channel PNG whose pixel values are class "
                                      "indices")
    array = np.asarray(img.convert("L") if img.mode not in ("L", "P", "I") else img)
    return torch.from_numpy(array.astype(np.int64))
