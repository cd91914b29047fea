"""Built-in datasets: scikit-learn's handwritten digits and a user image folder (shapes, photos
and COCO files have their own modules; ``ldmcore.data.builtin`` registers them all).

A dataset item is a dict: ``image`` (CHW float in [-1, 1]) plus condition values such as
``class`` (int). ``collate`` stacks tensors and ints and keeps other values as lists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ldmcore.data.captions import MissingCaptions, complete_captions, sidecar_caption
from ldmcore.data.transforms import build_pipeline, read_pixels, to_tensor
from ldmcore.errors import DataError
from ldmcore.images import open_image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


class DigitsDataset(Dataset):
    """The 1,797 real 8x8 handwritten digits that scikit-learn ships (no download), upsampled."""

    def __init__(self, image_size: int = 32, channels: int = 1, hflip: bool = False,
                 shift: float = 0.0, path: Path | None = None, **_: Any) -> None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        self.images = (digits.images / 16.0).astype(np.float32)  # (N, 8, 8) in [0, 1]
        self.labels = digits.target.astype(np.int64)
        self.channels = channels
        self.pipeline = build_pipeline(image_size, hflip, shift)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        image = self.pipeline(image=self.images[i])["image"]
        tensor = to_tensor(np.clip(image, 0, 1))
        return {"image": tensor.expand(self.channels, -1, -1).clone(), "class": int(self.labels[i])}


class ImageFolderDataset(Dataset):
    """Images under ``path``; a sub-folder per class gives ``class`` labels (sorted names).

    A sidecar ``NAME.txt`` beside ``NAME.png`` gives the item a ``caption`` (its stripped
    text). When some images have one and others not, ``missing_captions`` decides: ``error``
    names the first few without, ``empty`` gives them "". No sidecar at all: no ``caption``.
    """

    def __init__(self, path: Path | None, image_size: int = 32, channels: int = 3,
                 hflip: bool = False, shift: float = 0.0,
                 missing_captions: MissingCaptions = "error", **_: Any) -> None:
        if path is None:
            raise DataError("data.name=image_folder needs data.path=FOLDER (a folder of images, "
                            "optionally one sub-folder per class).")
        root = Path(path).expanduser()
        if not root.is_dir():
            raise DataError(f"data.path={str(path)!r} is not a folder; give a folder of images "
                            f"({', '.join(sorted(IMAGE_SUFFIXES))}), optionally one sub-folder "
                            f"per class.")
        self.files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise DataError(f"data.path={str(path)!r} holds no images "
                            f"({', '.join(sorted(IMAGE_SUFFIXES))}).")
        for file in self.files:  # every header, now: not in a loader worker, mid-run
            open_image(file, "image", DataError, "remove or replace the file", decode=False)
        found = [sidecar_caption(p) for p in self.files]
        self.captions = None if all(c is None for c in found) else complete_captions(
            found, [str(p.relative_to(root)) for p in self.files], missing_captions,
            f"sidecar .txt files under data.path={str(path)!r}")
        classes = sorted({p.parent.name for p in self.files if p.parent != root})
        self.class_index = {c: i for i, c in enumerate(classes)}
        self.root = root
        self.channels = channels
        self.pipeline = build_pipeline(image_size, hflip, shift)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, Any]:
        path = self.files[i]
        image = self.pipeline(image=read_pixels(path, self.channels))["image"]
        item: dict[str, Any] = {"image": to_tensor(np.clip(image, 0, 1))}
        if path.parent != self.root:
            item["class"] = self.class_index[path.parent.name]
        if self.captions is not None:
            item["caption"] = self.captions[i]
        return item


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors, turn ints into a LongTensor, keep anything else as a list."""
    batch: dict[str, Any] = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if isinstance(values[0], torch.Tensor):
            same = all(v.shape == values[0].shape for v in values)
            batch[key] = torch.stack(values) if same else values  # ragged (e.g. boxes): a list
        elif isinstance(values[0], (int, np.integer)):
            batch[key] = torch.tensor(values, dtype=torch.long)
        else:
            batch[key] = values
    return batch
