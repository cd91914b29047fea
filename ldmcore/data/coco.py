"""COCO-format data for layout, segmentation and text: ``data=coco``.

``data.path`` is the image root (each image's ``file_name`` is relative to it),
``data.annotations`` the instances JSON (boxes, polygon or RLE masks, categories) and
``data.captions`` an optional captions JSON. Each item carries the keys the ``layout``,
``segmap`` and ``text`` plugins read (the same as the ``shapes`` data):

* ``image``   (C, S, S) float in [-1, 1]: shorter side resized to S = ``image_size``, centre crop
* ``bboxes``  (N, 4) float: normalised (x0, y0, x1, y1) in the crop, largest box first; boxes
  that leave the crop are dropped, boxes cut by it clipped
* ``labels``  (N,) long: the category as a contiguous label 0..K-1, categories sorted by id
* ``mask``    (S, S) long: 0 background, 1 + label where an object lies (objects painted
  largest first, so a small object on a larger one stays visible)
* ``caption`` str (with ``data.captions``): the image's first caption in the file. One fixed
  caption keeps an item a function of its index, so deterministic data can be held in memory
  and a resumed run sees the batches an uninterrupted one would.

K, the number of categories, sets the plugins' class counts (``conditions.layout.num_classes=K``,
``conditions.segmap.num_classes=K+1`` for the background). ``python -m
ldmcore.data.coco_labels INSTANCES.json`` prints the label of each category and those overrides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ldmcore.data.captions import MissingCaptions, complete_captions, quoted_few
from ldmcore.data.coco_json import CocoImage, CocoInstances, load_captions, load_instances
from ldmcore.data.masks import MaskFormatError, decode_segmentation
from ldmcore.data.transforms import build_pipeline, read_pixels, to_tensor
from ldmcore.errors import DataError



class CocoDataset(Dataset):
    """The images of a COCO instances file with boxes, labels, semantic mask and caption."""

    def __init__(self, path: Path | None, annotations: Path | None = None,
                 captions: Path | None = None, missing_captions: MissingCaptions = "error",
                 image_size: int = 64, channels: int = 3, hflip: bool = False, shift: float = 0.0,
                 **_: Any) -> None:
        if path is None or annotations is None:
            raise DataError("data.name=coco needs data.path=IMAGE_FOLDER (the images' root) and "
                            "data.annotations=INSTANCES.json (COCO format); data.captions="
                            "CAPTIONS.json is optional.")
        self.root = Path(path).expanduser()
        if not self.root.is_dir():
            raise DataError(f"data.path={str(path)!r} is not a folder; give the folder that the "
                            f"images' file_name entries are relative to.")
        self.instances: CocoInstances = load_instances(Path(annotations))
        self.images = self.instances.images
        if not self.images:
            raise DataError(f"data.annotations={str(annotations)!r} lists no images.")
        absent = [im.file_name for im in self.images if not (self.root / im.file_name).is_file()]
        if absent:
            raise DataError(f"{len(absent)} images of data.annotations are not under "
                            f"data.path={str(path)!r}: {quoted_few(absent)}. data.path must be "
                            f"the folder their file_name is relative to.")
        self.captions: list[str] | None = None
        if captions is not None:
            found = load_captions(Path(captions), {im.id for im in self.images})
            self.captions = complete_captions([found.get(im.id) for im in self.images],
                                              [im.file_name for im in self.images],
                                              missing_captions, f"data.captions={str(captions)!r}")
        self.label_of = self.instances.label_of
        self.channels = channels
        self.pipeline = build_pipeline(image_size, hflip, shift, with_boxes=True, crop=True,
                                       label_fields=("labels",))

    @property
    def categories(self) -> tuple[str, ...]:
        """Category names in label order (label k is the k-th category by id)."""
        return self.instances.category_names

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        image = self.images[i]
        pixels = self._read(image)
        mask, boxes, labels = self._targets(image)
        out = self.pipeline(image=pixels, mask=mask, bboxes=boxes, labels=labels)
        item: dict[str, Any] = {
            "image": to_tensor(np.clip(out["image"], 0, 1)),
            "mask": torch.from_numpy(np.asarray(out["mask"]).astype(np.int64)),
            "bboxes": torch.from_numpy(np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)),
            "labels": torch.tensor([int(v) for v in out["labels"]], dtype=torch.long)}
        if self.captions is not None:
            item["caption"] = self.captions[i]
        return item

    def _read(self, image: CocoImage) -> np.ndarray:
        path = self.root / image.file_name
        array = read_pixels(path, self.channels)
        if array.shape[:2] != (image.height, image.width):
            raise DataError(f"image {str(path)!r} is {array.shape[1]}x{array.shape[0]} (WxH) but "
                            f"data.annotations says {image.width}x{image.height}; the masks and "
                            f"boxes would not line up with it.")
        return array

    def _targets(self, image: CocoImage) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """Semantic mask (uint16), normalised boxes and labels at the image's own size."""
        h, w = image.height, image.width
        mask = np.zeros((h, w), dtype=np.uint16)
        boxes, labels = [], []
        for ann in sorted(image.annotations, key=lambda a: -a["bbox"][2] * a["bbox"][3]):
            label = self.label_of[ann["category_id"]]
            if ann.get("segmentation"):
                try:
                    mask[decode_segmentation(ann["segmentation"], h, w)] = label + 1
                except MaskFormatError as exc:
                    raise DataError(f"data.annotations: annotation {ann.get('id', '?')} of image "
                                    f"{image.file_name!r} has a bad segmentation: {exc}.") from None
            x, y, bw, bh = ann["bbox"]
            x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + bw, w), min(y + bh, h)
            if x1 > x0 and y1 > y0:
                boxes.append([x0 / w, y0 / h, x1 / w, y1 / h])
                labels.append(label)
        return mask, np.asarray(boxes, dtype=np.float32).reshape(-1, 4), labels
