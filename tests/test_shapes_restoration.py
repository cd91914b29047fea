"""Super-resolution and inpainting of shapes scenes: holes placed over shapes, the caption the
restored scene still says, and one few-step train -> eval run of each experiment."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ldm_inpaint.encoder import InpaintConfig, InpaintEncoder, random_holes
from ldm_inpaint.metric import blur_fill_caption_match, caption_match as inpaint_caption_match
from ldm_lowres.metric import bicubic_caption_match, caption_match as lowres_caption_match
from ldmcore.build import build_dataset
from ldmcore.conditioning import BackboneSpec
from ldmcore.config import load
from ldmcore.data.datasets import collate
from ldmcore.errors import ConfigError
from ldmcore.randomness import BatchRandom
from ldmcore.train import train

PIXELS = BackboneSpec(latent_channels=3, latent_size=(32, 32), context_dim=16, image_channels=3,
                      image_size=(32, 32), encode=lambda x: x)


@pytest.mark.parametrize("free_form", [0.0, 1.0])  # rectangles, strokes
def test_each_hole_covers_the_one_pixel_its_map_allows(free_form: float) -> None:
    n = 64
    where = torch.zeros(n, 32, 32, dtype=torch.bool)
    ys, xs = torch.randint(0, 32, (n,)), torch.randint(0, 32, (n,))
    where[torch.arange(n), ys, xs] = True
    config = InpaintConfig(free_form=free_form, min_hole=0.1, max_hole=0.3)
    holes = random_holes(n, (32, 32), config, BatchRandom(torch.Generator().manual_seed(0)), where)
    assert holes[torch.arange(n), 0, ys, xs].eq(1).all()


def test_hole_centres_are_uniform_over_the_maps_true_pixels_and_anywhere_on_an_empty_map() -> None:
    n = 4000
    where = torch.zeros(n, 32, 32, dtype=torch.bool)
    where[:, 3, 5] = where[:, 20, 28] = True  # two allowed pixels, far apart
    where[-1] = False  # an empty map: no error, the hole goes anywhere
    config = InpaintConfig(min_hole=0.1, max_hole=0.1)  # 3x3 rectangles: each holds one allowed pixel
    holes = random_holes(n, (32, 32), config, BatchRandom(torch.Generator().manual_seed(1)), where)
    first, second = holes[:-1, 0, 3, 5].sum(), holes[:-1, 0, 20, 28].sum()
    assert first + second == n - 1  # every hole on exactly one of the two
    assert abs(float(first) / (n - 1) - 0.5) < 4 * 0.5 / np.sqrt(n - 1)  # binomial, 4 standard errors
    assert holes[-1].sum() == 9


def test_holes_centred_on_a_data_key_hide_shapes_and_a_missing_key_is_named() -> None:
    items = collate([build_dataset("shapes", image_size=32, num_items=32)[i] for i in range(32)])
    enc = InpaintEncoder(InpaintConfig(centre_on="mask", min_hole=0.25, max_hole=0.5, free_form=0.5), PIXELS)
    _, holes = enc.batch_value(items)
    hidden = (holes[:, 0] * (items["mask"] > 0)).flatten(1).sum(1)
    assert (hidden > 0).all()  # every hole hides part of a shape
    with pytest.raises(ConfigError, match="centre_on='segments' names no key.*caption"):
        InpaintEncoder(InpaintConfig(centre_on="segments"), PIXELS).batch_value(items)


def test_caption_metrics_read_the_true_scenes_and_not_their_degraded_baselines() -> None:
    """Given the true scenes as the restored images, the caption metrics read what the shape
    reader reads on real scenes (> 0.95, tests/test_eval.py); bicubic upsampling from 8x8 and a
    harmonic fill of holes over shapes lose most captions."""
    items = collate([build_dataset("shapes", image_size=32, num_items=64, seed=1_000_003)[i] for i in range(64)])
    image = items["image"]
    low = F.avg_pool2d(image, 4)
    assert lowres_caption_match(image, low, items)["lowres_caption_match"] > 0.95
    assert bicubic_caption_match(low, items)["bicubic_caption_match"] < 0.6
    config = InpaintConfig(min_hole=0.25, max_hole=0.5, free_form=0.5)
    holes = random_holes(64, (32, 32), config, BatchRandom(torch.Generator().manual_seed(0)), items["mask"] > 0)
    assert inpaint_caption_match(image, (image, holes), items)["inpaint_caption_match"] > 0.95
    assert blur_fill_caption_match((image, holes), items)["blur_fill_caption_match"] < 0.85


SMOKE = ["data.image_size=16", "data.num_items=48", "model.unet.model_channels=16",
         "trainer.max_steps=2", "trainer.batch_size=8", "trainer.threads=1", "trainer.progress=false",
         "trainer.precision=fp32", "sampler.steps=2", "trainer.checkpoint_every=2"]


@pytest.mark.parametrize("experiment, keys", [
    ("shapes_sr4x", ("lowres_psnr", "bicubic_psnr", "lowres_caption_match", "bicubic_caption_match")),
    ("shapes_inpaint", ("inpaint_hole_psnr", "blur_fill_hole_psnr", "inpaint_caption_match",
                        "blur_fill_caption_match"))])
def test_each_shapes_restoration_experiment_trains_and_is_scored(experiment: str, keys: tuple[str, ...],
                                                                 tmp_path: Path) -> None:
    from ldmcore.cli import main

    run = train(load([f"experiment={experiment}", f"run_dir={tmp_path / 'run'}", *SMOKE]))
    assert main(["eval", f"run={run.root}", "n=8", "steps=2", "precision=fp32"]) == 0
    report = json.loads((run.root / "eval.json").read_text())
    assert report["data"] == "shapes" and report["samples"] == 8
    for key in keys:
        assert np.isfinite(report[key]), key
    for key in keys[2:]:  # shares of 8 scenes
        assert report[key] * 8 == round(report[key] * 8) and 0 <= report[key] <= 1
    if experiment == "shapes_inpaint":
        assert report["inpaint_known_max_abs_error"] == 0.0  # pasted back: the known region is exact
