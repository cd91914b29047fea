"""ldmcore's own datasets, registered through the ``register_datasets`` hook like a plugin's.

Each factory imports its dataset class when called, so loading the registry (``ldm plugins``,
``ldm sample``) does not import albumentations and OpenCV.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.utils.data import Dataset

from ldmcore.hookspecs import hookimpl

HELD_OUT_SEED = 1_000_003  # shapes scenes of this seed are never trained on (training uses data.seed)


def digits(**options: Any) -> Dataset:
    from ldmcore.data.datasets import DigitsDataset

    return DigitsDataset(**options)


def image_folder(**options: Any) -> Dataset:
    from ldmcore.data.datasets import ImageFolderDataset

    return ImageFolderDataset(**options)


def shapes(**options: Any) -> Dataset:
    from ldmcore.data.shapes import ShapesDataset

    return ShapesDataset(**options)


def held_out_shapes(**options: Any) -> Dataset:
    """Scenes of another seed."""
    return shapes(**{**options, "seed": HELD_OUT_SEED})


def photos(**options: Any) -> Dataset:
    from ldmcore.data.photos import PhotosDataset

    return PhotosDataset(**options)


def held_out_photos(**options: Any) -> Dataset:
    """Crops from the right quarter of each photo, which training never sees."""
    return photos(**{**options, "holdout": True})


def coco(**options: Any) -> Dataset:
    from ldmcore.data.coco import CocoDataset

    return CocoDataset(**options)


@hookimpl
def register_datasets(register: Callable[..., None]) -> None:
    """digits, image_folder, shapes (held out: another seed), photos (held out: the right
    quarter of each photo) and coco."""
    register("digits", digits)
    register("image_folder", image_folder)
    register("shapes", shapes, held_out=held_out_shapes)
    register("photos", photos, held_out=held_out_photos)
    register("coco", coco)
