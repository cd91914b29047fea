"""One albumentations pipeline per dataset, applied to image (and mask/boxes) together.

Images enter as HWC float32 arrays in [0, 1] and leave as CHW tensors in [-1, 1]; a crop,
flip or shift moves a semantic mask and layout boxes with the image.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no version check over the network

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ldmcore.errors import DataError  # noqa: E402
from ldmcore.images import open_image  # noqa: E402


def build_pipeline(image_size: int, hflip: bool = False, shift: float = 0.0,
                   with_boxes: bool = False, crop: bool = False,
                   label_fields: tuple[str, ...] = ("labels", "colors")) -> A.Compose:
    """Resize to ``image_size`` (bicubic; masks nearest), then the optional augmentations.

    ``crop``: keep the aspect ratio instead: resize the shorter side to ``image_size`` (area
    filter; masks nearest), then take the centre ``image_size`` square.
    ``with_boxes``: also carry normalised (x0, y0, x1, y1) ``bboxes`` with their
    ``label_fields``; boxes that leave the frame (less than 10% of the box left) are dropped
    together with their fields, boxes cut by the frame are clipped to it.
    """
    steps: list[A.BasicTransform]
    if crop:
        steps = [A.SmallestMaxSize(max_size=image_size, interpolation=cv2.INTER_AREA),
                 A.CenterCrop(image_size, image_size)]
    else:
        steps = [A.Resize(image_size, image_size, interpolation=cv2.INTER_CUBIC)]
    if hflip:
        steps.append(A.HorizontalFlip(p=0.5))
    if shift > 0:
        steps.append(A.Affine(translate_percent=(-shift, shift), p=1.0, border_mode=cv2.BORDER_CONSTANT,
                              fill=0))
    if not with_boxes:
        return A.Compose(steps)
    return A.Compose(steps, bbox_params=A.BboxParams(format="albumentations", min_visibility=0.1,
                                                     label_fields=list(label_fields)))


def is_deterministic(hflip: bool, shift: float) -> bool:
    """True when the pipeline has no random step (outputs may then be cached)."""
    return not hflip and shift <= 0


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """HWC float in [0, 1] -> CHW float32 in [-1, 1]."""
    if image.ndim == 2:
        image = image[..., None]
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().clamp(0, 1) * 2 - 1


def read_pixels(path, channels: int) -> np.ndarray:
    """An image file as an (H, W) or (H, W, 3) float32 array in [0, 1], the input of
    ``build_pipeline``; an unreadable file is a ``DataError`` naming it."""
    img = open_image(path, "image", DataError, "remove or replace the file")
    return np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 255.0
