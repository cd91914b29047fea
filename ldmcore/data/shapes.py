"""A seeded procedural scene generator that every condition plugin can train on.

Scene ``i`` is a function of ``(seed, i)`` alone: one to ``max_shapes`` coloured shapes (circle,
square, triangle) on a dark background. Each item carries, aligned with its image:

* ``image``   (3, H, W) float in [-1, 1]
* ``mask``    (H, W) long: 0 background, 1 + shape index (semantic map; later shapes on top)
* ``bboxes``  (N, 4) float: normalised (x0, y0, x1, y1) per shape
* ``labels``  (N,) long: shape index per box
* ``colors``  (N,) long: colour index per box
* ``caption`` str, e.g. "a red circle and a blue square"

An albumentations pipeline transforms image, mask and boxes together, so a flip keeps the
semantic map and the layout aligned with the picture.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from ldmcore.data.transforms import build_pipeline, to_tensor

SHAPES = ("circle", "square", "triangle")
COLORS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 240), "yellow": (240, 220, 40)}
COLOR_NAMES = tuple(COLORS)
BACKGROUND = (20, 20, 28)


def render_scene(rng: np.random.Generator, size: int, max_shapes: int) -> dict[str, Any]:
    """Draw one scene at ``size`` pixels; returns uint8 image, mask, boxes, labels, colours."""
    image = Image.new("RGB", (size, size), BACKGROUND)
    mask = Image.new("L", (size, size), 0)
    draw, draw_mask = ImageDraw.Draw(image), ImageDraw.Draw(mask)
    boxes, labels, colors = [], [], []
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        shape = int(rng.integers(len(SHAPES)))
        color = int(rng.integers(len(COLORS)))
        side = float(rng.uniform(0.25, 0.5)) * size
        x0, y0 = (float(v) for v in rng.uniform(0, size - side, size=2))
        box = (x0, y0, x0 + side, y0 + side)
        fill = COLORS[COLOR_NAMES[color]]
        if SHAPES[shape] == "circle":
            draw.ellipse(box, fill=fill)
            draw_mask.ellipse(box, fill=shape + 1)
        elif SHAPES[shape] == "square":
            draw.rectangle(box, fill=fill)
            draw_mask.rectangle(box, fill=shape + 1)
        else:
            tri = [(x0 + side / 2, y0), (x0, y0 + side), (x0 + side, y0 + side)]
            draw.polygon(tri, fill=fill)
            draw_mask.polygon(tri, fill=shape + 1)
        boxes.append([v / size for v in box])
        labels.append(shape)
        colors.append(color)
    return {"image": np.asarray(image), "mask": np.asarray(mask, dtype=np.int64),
            "bboxes": np.clip(np.array(boxes, dtype=np.float32), 0, 1), "labels": labels,
            "colors": colors}


def caption(labels: list[int], colors: list[int]) -> str:
    parts = [f"a {COLOR_NAMES[c]} {SHAPES[s]}" for s, c in zip(labels, colors)]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


class ShapesDataset(Dataset):
    """``num_items`` procedural scenes; rendered at 2x and resized for smooth edges."""

    def __init__(self, image_size: int = 32, channels: int = 3, hflip: bool = False,
                 shift: float = 0.0, path: Any = None, num_items: int = 2000, max_shapes: int = 3,
                 seed: int = 0) -> None:
        self.image_size, self.channels = image_size, channels
        self.num_items, self.max_shapes, self.seed = num_items, max_shapes, seed
        self.pipeline = build_pipeline(image_size, hflip, shift, with_boxes=True)

    def __len__(self) -> int:
        return self.num_items

    def __getitem__(self, i: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, i])
        scene = render_scene(rng, 2 * self.image_size, self.max_shapes)
        out = self.pipeline(image=scene["image"].astype(np.float32) / 255.0, mask=scene["mask"],
                            bboxes=scene["bboxes"], labels=scene["labels"], colors=scene["colors"])
        image = to_tensor(np.clip(out["image"], 0, 1))
        if self.channels == 1:
            image = image.mean(0, keepdim=True)
        labels = [int(v) for v in out["labels"]]
        colors = [int(v) for v in out["colors"]]
        return {"image": image, "mask": torch.from_numpy(np.asarray(out["mask"], dtype=np.int64)),
                "bboxes": torch.tensor(np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)),
                "labels": torch.tensor(labels, dtype=torch.long),
                "colors": torch.tensor(colors, dtype=torch.long),
                "caption": caption(labels, colors) if labels else "an empty scene"}
