"""Train-time randomness of plugins comes from the training step's generator (ConditionEncoder.random)."""

from __future__ import annotations

import torch

from ldmcore.randomness import BatchRandom
from ldm_inpaint.encoder import InpaintConfig, random_holes


def test_holes_depend_only_on_the_generator_and_shard_like_the_global_batch():
    cfg = InpaintConfig(min_hole=0.25, max_hole=0.5)
    a = random_holes(4, (16, 16), cfg, BatchRandom(torch.Generator().manual_seed(3)))
    b = random_holes(4, (16, 16), cfg, BatchRandom(torch.Generator().manual_seed(3)))
    assert torch.equal(a, b)
    halves = [random_holes(2, (16, 16), cfg, BatchRandom(torch.Generator().manual_seed(3), rank, 2))
              for rank in (0, 1)]
    assert torch.equal(torch.cat(halves), a)  # two processes draw the rows one process would


def test_each_hole_is_one_rectangle_within_the_configured_sides():
    cfg = InpaintConfig(min_hole=0.25, max_hole=0.5)
    holes = random_holes(64, (32, 32), cfg, BatchRandom(torch.Generator().manual_seed(0)))
    for hole in holes[:, 0]:
        ys, xs = torch.nonzero(hole, as_tuple=True)
        height, width = int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)
        assert hole.sum() == height * width  # filled rectangle
        assert 8 <= height <= 16 and 8 <= width <= 16


def test_lowres_noise_augmentation_follows_the_conditioner_generator_not_the_global_one():
    from ldmcore.conditioning import BackboneSpec, Conditioner
    from ldm_lowres.encoder import LowresConfig, LowresEncoder

    spec = BackboneSpec(latent_channels=4, latent_size=(8, 8), context_dim=32, image_channels=3,
                        image_size=(32, 32))
    cond = Conditioner({"lowres": LowresEncoder(LowresConfig(max_noise_level=0.5), spec)}).train()
    batch = {"image": torch.rand(4, 3, 32, 32) * 2 - 1}

    def encode(seed: int, global_seed: int):
        torch.manual_seed(global_seed)
        return cond(batch, 4, drop=True, generator=torch.Generator().manual_seed(seed))

    a, b, c = encode(0, 1), encode(0, 2), encode(1, 1)
    assert torch.equal(a.concat, b.concat) and torch.equal(a.vector, b.vector)
    assert not torch.equal(a.concat, c.concat)


def test_free_form_holes_are_one_thick_stroke_each_and_depend_only_on_the_generator():
    from scipy import ndimage

    cfg = InpaintConfig(free_form=1.0, stroke_width=(0.1, 0.2))
    holes = random_holes(32, (32, 32), cfg, BatchRandom(torch.Generator().manual_seed(0)))
    assert torch.equal(holes, random_holes(32, (32, 32), cfg, BatchRandom(torch.Generator().manual_seed(0))))
    halves = [random_holes(16, (32, 32), cfg, BatchRandom(torch.Generator().manual_seed(0), rank, 2))
              for rank in (0, 1)]
    assert torch.equal(torch.cat(halves), holes)
    for hole in holes[:, 0].numpy().astype(bool):
        assert ndimage.label(hole)[1] == 1  # one connected stroke
        # the brush is at least 0.1 * 32 = 3.2 pixels wide: an erosion by one pixel leaves it
        assert ndimage.binary_erosion(hole).any()
        assert not hole.all()
    mixed = random_holes(64, (32, 32), InpaintConfig(free_form=0.5), BatchRandom(torch.Generator().manual_seed(1)))
    rectangles = [bool(h.sum() == (h.any(1).sum() * h.any(0).sum())) for h in mixed[:, 0]]
    assert 16 < sum(rectangles) < 56  # about half of each kind


def test_stroke_width_must_be_an_ordered_share():
    import pytest

    with pytest.raises(ValueError, match="stroke_width"):
        InpaintConfig(stroke_width=(0.3, 0.1))
