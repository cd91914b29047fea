"""A seeded procedural scene generator that every condition plugin can train on.

Scene ``i`` is a function of ``(seed, i)`` alone: one to ``max_shapes`` non-overlapping filled
shapes (circle, square, triangle) on a black background, in one of seven pure colours. Each
item carries, aligned with its image:

* ``image``   (3, H, W) float in [-1, 1]
* ``mask``    (H, W) long: 0 background, 1 circle, 2 square, 3 triangle (semantic map)
* ``bboxes``  (N, 4) float: normalised (x0, y0, x1, y1) per shape, left to right
* ``labels``  (N,) long: shape kind per box (0 circle, 1 square, 2 triangle)
* ``colors``  (N,) long: colour index per box
* ``caption`` str: the shapes from left to right, "a {colour} {shape}" joined by " and "

An albumentations pipeline transforms image, mask and boxes together, so a flip keeps the
semantic map and the layout aligned with the picture (the caption is re-read left to right).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from ldmcore.data.transforms import build_pipeline, to_tensor

SHAPES = ("circle", "square", "triangle")
COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
          "magenta": (255, 0, 255), "cyan": (0, 255, 255), "white": (255, 255, 255)}
COLOR_NAMES = tuple(COLORS)
BACKGROUND = (0, 0, 0)


def render_scene(rng: np.random.Generator, size: int, max_shapes: int) -> dict[str, Any]:
    """Draw one scene at ``size`` pixels; returns uint8 image, mask, boxes, labels, colours."""
    image = Image.new("RGB", (size, size), BACKGROUND)
    mask = Image.new("L", (size, size), 0)
    draw, draw_mask = ImageDraw.Draw(image), ImageDraw.Draw(mask)
    boxes, labels, colors = [], [], []
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        shape = int(rng.integers(len(SHAPES)))
        color = int(rng.integers(len(COLORS)))
        for _attempt in range(20):  # rejection sampling: shapes never overlap
            side = float(rng.uniform(0.25, 0.45)) * size
            x0, y0 = (float(v) for v in rng.uniform(0, size - side, size=2))
            box = (x0, y0, x0 + side, y0 + side)
            if not any(_overlap(box, [v * size for v in b]) for b in boxes):
                break
        else:
            continue
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


def _overlap(a: tuple[float, ...], b: list[float], gap: float = 1.0) -> bool:
    return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


def caption(labels: list[int], colors: list[int], boxes: np.ndarray | None = None) -> str:
    """"a {colour} {shape}" per shape, left to right (by box centre), joined by " and "."""
    order = range(len(labels)) if boxes is None else np.argsort((boxes[:, 0] + boxes[:, 2]) / 2, kind="stable")
    return " and ".join(f"a {COLOR_NAMES[colors[i]]} {SHAPES[labels[i]]}" for i in order)


class ShapesDataset(Dataset):
    """``num_items`` procedural scenes, drawn at 2x and resized (bicubic) for smooth edges."""

    def __init__(self, image_size: int = 32, channels: int = 3, hflip: bool = False,
                 shift: float = 0.0, path: Any = None, num_items: int = 2000, max_shapes: int = 3,
                 seed: int = 0, **_: Any) -> None:
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
        boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
        order = np.argsort((boxes[:, 0] + boxes[:, 2]) / 2, kind="stable")  # left to right
        labels = [int(out["labels"][i]) for i in order]
        colors = [int(out["colors"][i]) for i in order]
        return {"image": image, "mask": torch.from_numpy(np.asarray(out["mask"], dtype=np.int64)),
                "bboxes": torch.from_numpy(boxes[order].copy()),
                "labels": torch.tensor(labels, dtype=torch.long),
                "colors": torch.tensor(colors, dtype=torch.long),
                "caption": caption(labels, colors) if labels else "an empty scene"}
