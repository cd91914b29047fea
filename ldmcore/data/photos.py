"""Random crops of the natural photographs that scikit-learn and scikit-image ship (no download).

The photos: scikit-learn's china and flower, and scikit-image's astronaut, chelsea, coffee,
rocket and motorcycle (read from the files inside the installed package, never fetched).
Training crops come from the left 75% of each photo, held-out crops (``holdout=True``) from the
right 25%, so evaluation never sees a training pixel. Crop ``i`` is a function of
``(seed, i)``; crops are taken at ``crop_scale x image_size`` pixels and resized (area) to
``image_size``, so a larger scale gives crops with more detail per pixel.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ldmcore.errors import DataError

HOLDOUT_FRACTION = 0.25


SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png")


@lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    from importlib.resources import files

    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = [np.asarray(im, dtype=np.uint8) for im in load_sample_images().images]
    folder = files("skimage.data")
    for name in SKIMAGE_PHOTOS:
        with Image.open(str(folder / name)) as im:
            photos.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
    return tuple(photos)


class PhotosDataset(Dataset):
    def __init__(self, image_size: int = 32, channels: int = 3, hflip: bool = False,
                 num_items: int = 2000, seed: int = 0, holdout: bool = False, crop_scale: int = 2,
                 **_: Any) -> None:
        self.image_size, self.channels, self.hflip = image_size, channels, hflip
        self.crop_scale = crop_scale
        crop = crop_scale * image_size
        narrowest = min(min(p.shape[0], int(p.shape[1] * HOLDOUT_FRACTION)) for p in _photos())
        if crop > narrowest:
            raise DataError(f"photos: crops of {crop} pixels (crop_scale {crop_scale} x image_size "
                            f"{image_size}) do not fit the narrowest held-out strip ({narrowest} "
                            f"pixels); use image_size * crop_scale <= {narrowest}.")
        self.num_items, self.seed, self.holdout = num_items, seed, holdout

    def __len__(self) -> int:
        return self.num_items

    def __getitem__(self, i: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, i, int(self.holdout)])
        photos = _photos()
        photo = photos[int(rng.integers(len(photos)))]
        h, w, _ = photo.shape
        crop = self.crop_scale * self.image_size
        split = int(w * (1 - HOLDOUT_FRACTION))
        x_lo, x_hi = (split, w - crop) if self.holdout else (0, split - crop)
        x = int(rng.integers(x_lo, x_hi + 1))
        y = int(rng.integers(0, h - crop + 1))
        patch = torch.from_numpy(photo[y:y + crop, x:x + crop].transpose(2, 0, 1).copy()).float() / 127.5 - 1
        image = F.interpolate(patch[None], size=self.image_size, mode="area")[0]
        if self.hflip and rng.random() < 0.5:
            image = image.flip(-1)
        if self.channels == 1:
            image = image.mean(0, keepdim=True)
        return {"image": image.clamp(-1, 1)}
