"""Datasets: real digits, procedural shapes (image, mask, boxes and caption stay aligned)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ldmcore.build import build_dataset
from ldmcore.data.datasets import collate
from ldmcore.data.shapes import COLOR_NAMES, COLORS, SHAPES


def test_digits_are_the_real_sklearn_digits_upsampled() -> None:
    from sklearn.datasets import load_digits

    ds = build_dataset("digits", image_size=32, channels=1)
    digits = load_digits()
    assert len(ds) == 1797
    item = ds[10]
    assert item["class"] == digits.target[10]
    # averaging the 32x32 image back to 8x8 recovers the original digit (in [0, 16]) up to
    # bicubic blur at strokes' edges
    err = np.abs(torch.nn.functional.avg_pool2d((item["image"] + 1) / 2, 4)[0].numpy() * 16
                 - digits.images[10])
    assert err.mean() < 1.0 and err.max() < 2.5


def test_shapes_scene_is_a_function_of_seed_and_index() -> None:
    a, b = build_dataset("shapes"), build_dataset("shapes")
    for key in ("image", "mask", "bboxes", "labels"):
        assert torch.equal(a[7][key], b[7][key])
    assert a[7]["caption"] == b[7]["caption"]
    assert not torch.equal(a[7]["image"], a[8]["image"])


@pytest.mark.parametrize("hflip", [False, True])
def test_shapes_mask_boxes_and_caption_agree_with_the_image(hflip: bool) -> None:
    ds = build_dataset("shapes", image_size=32, hflip=hflip, num_items=40)
    for i in range(40):
        item = ds[i]
        image, mask = item["image"], item["mask"]
        # background pixels of the mask are background in the image (edges are anti-aliased)
        bg = mask == 0
        assert (image[:, bg] < -0.9).all(0).float().mean() > 0.9
        labels, colors = item["labels"].tolist(), item["colors"].tolist()
        words = item["caption"]
        for s, c in zip(labels, colors):
            assert f"{COLOR_NAMES[c]} {SHAPES[s]}" in words
        assert words == " and ".join(f"a {COLOR_NAMES[c]} {SHAPES[s]}" for s, c in zip(labels, colors))
        centres = ((item["bboxes"][:, 0] + item["bboxes"][:, 2]) / 2).tolist()
        assert centres == sorted(centres)  # boxes, labels and caption run left to right
        for box, s, c in zip(item["bboxes"], labels, colors):
            # every shape's kind fills part of its box (shapes never overlap), in its colour
            x0, y0, x1, y1 = (box * 32).round().long().tolist()
            inside = mask[y0:y1, x0:x1] == s + 1
            assert inside.float().mean() > 0.3
            other = (mask[y0:y1, x0:x1] != 0) & ~inside
            assert other.float().mean() < 0.05  # no other shape inside this box: no overlaps
            rgb = ((image[:, y0:y1, x0:x1][:, inside] + 1) * 127.5).median(1).values
            assert torch.allclose(rgb, torch.tensor(COLORS[COLOR_NAMES[c]], dtype=torch.float32), atol=25)


def test_collate_keeps_ragged_boxes_as_lists() -> None:
    ds = build_dataset("shapes", num_items=8)
    batch = collate([ds[i] for i in range(8)])
    assert batch["image"].shape == (8, 3, 32, 32) and batch["mask"].shape == (8, 32, 32)
    assert isinstance(batch["bboxes"], list) and len(batch["bboxes"]) == 8
    assert isinstance(batch["caption"], list)
