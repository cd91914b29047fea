"""The fidelity readers, checked on real scenes and closed forms before they judge samples."""

from __future__ import annotations

import numpy as np
import torch

from ldmcore.build import build_dataset
from ldmcore.eval.pixels import psnr, ssim
from ldmcore.eval.shapes import caption_match, detect, layout_iou, mean_iou, segmentation
from ldmcore.images import to_uint8


def test_shape_reader_reads_real_scenes() -> None:
    """On the generator's own scenes the reader recovers captions, boxes and maps."""
    ds = build_dataset("shapes", image_size=32, num_items=100)
    captions, ious, mious = [], [], []
    for i in range(100):
        item = ds[i]
        image = to_uint8(item["image"][None])[0]
        captions.append(caption_match(image, item["caption"]))
        ious.append(layout_iou(image, item["bboxes"].numpy(), item["labels"].numpy()))
        mious.append(mean_iou(segmentation(image), item["mask"].numpy()))
    assert np.mean(captions) > 0.95
    assert np.mean(ious) > 0.8
    assert np.mean(mious) > 0.85


def test_shape_reader_survives_softened_edges() -> None:
    """A 3x3 binomial blur (what a decoder does to edges) must not turn squares into circles."""
    import torch
    import torch.nn.functional as F

    ds = build_dataset("shapes", image_size=32, num_items=100)
    kernel = torch.tensor([1.0, 2.0, 1.0])
    kernel = (kernel[:, None] * kernel[None]).expand(3, 1, 3, 3) / 16
    captions = []
    for i in range(100):
        item = ds[i]
        soft = F.conv2d(F.pad(item["image"][None], (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
        captions.append(caption_match(to_uint8(soft)[0], item["caption"]))
    assert np.mean(captions) > 0.9


def _scene(*squares: tuple[str, int, int]) -> np.ndarray:
    """A 32x32 image of 8-pixel squares: (colour, left, top) each."""
    from ldmcore.data.shapes import COLORS

    image = np.zeros((32, 32, 3), dtype=np.uint8)
    for colour, x, y in squares:
        image[y:y + 8, x:x + 8] = COLORS[colour]
    return image


def test_caption_order_is_left_to_right_except_for_stacked_shapes() -> None:
    apart = _scene(("red", 2, 12), ("blue", 20, 12))
    assert caption_match(apart, "a red square and a blue square")
    assert not caption_match(apart, "a blue square and a red square")
    stacked = _scene(("red", 10, 2), ("blue", 11, 20))  # centres one pixel apart: no readable order
    assert caption_match(stacked, "a red square and a blue square")
    assert caption_match(stacked, "a blue square and a red square")
    assert not caption_match(stacked, "a blue square and a green square")
    assert not caption_match(stacked, "a blue square")  # a shape too many is still wrong


def test_shape_reader_on_a_blank_image_finds_nothing() -> None:
    blank = np.zeros((32, 32, 3), dtype=np.uint8)
    assert detect(blank) == []
    assert layout_iou(blank, np.array([[0.1, 0.1, 0.5, 0.5]]), np.array([0])) == 0.0


def test_psnr_and_ssim_closed_forms() -> None:
    a = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.isinf(psnr(a, a)).all() or (psnr(a, a) > 100).all()
    b = a + 0.1  # mse 0.01 on range 2: psnr = 10 log10(4 / 0.01) = 26.02
    assert torch.allclose(psnr(a, b), torch.tensor(26.0206), atol=1e-3)
    assert torch.allclose(ssim(a, a), torch.ones(2))
    assert (ssim(a, torch.rand_like(a) * 2 - 1) < 0.2).all()
