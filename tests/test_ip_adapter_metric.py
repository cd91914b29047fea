"""The ip_adapter plugin's ``ldm eval`` metric: agreement of a sample with its reference image,
read by the shape reader, on hand-drawn images whose agreement is known; and ``ldm eval``
reports it beside the same score of the model without the image prompt (its null)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ldm_ip_adapter
from ldm_ip_adapter.encoder import ImagePrompt
from ldm_ip_adapter.metric import reference_agreement
from ldmcore import cli
from ldmcore.config import load
from ldmcore.data.builtin import held_out_shapes
from ldmcore.data.datasets import collate
from ldmcore.data.shapes import COLORS
from ldmcore.eval.tasks import held_out_batch
from ldmcore.registry import build_registry
from ldmcore.runfolder import load_run
from ldmcore.train import train

SIZE = 32


def scene(*shapes: tuple[str, str, int, int, int]) -> torch.Tensor:
    """A black (3, SIZE, SIZE) image in [-1, 1] with each (colour, kind, x0, y0, side) drawn
    as a filled square, the disc inscribed in that square, or the apex-up triangle in it."""
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    y, x = np.mgrid[:SIZE, :SIZE] + 0.5
    for colour, kind, x0, y0, side in shapes:
        u, v = (x - x0) / side, (y - y0) / side  # 0..1 inside the square
        inside = (u >= 0) & (u < 1) & (v >= 0) & (v < 1)
        pixels = {"square": inside, "circle": inside & ((u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25),
                  "triangle": inside & (np.abs(u - 0.5) <= v / 2)}[kind]
        image[pixels] = COLORS[colour]
    return torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1


def agreement(reference: torch.Tensor, sample: torch.Tensor) -> dict[str, float]:
    return reference_agreement(sample[None], ImagePrompt(reference[None]), {})


RED_SQUARE = ("red", "square", 2, 2, 10)
BLUE_CIRCLE = ("blue", "circle", 18, 16, 12)


@pytest.mark.parametrize("sample, shape, placement", [
    ((RED_SQUARE, BLUE_CIRCLE), 1.0, 1.0),  # the reference itself
    ((("red", "square", 20, 2, 10), ("blue", "circle", 2, 18, 12)), 1.0, 0.0),  # moved apart
    ((("red", "square", 7, 2, 10), BLUE_CIRCLE), 1.0, (1 + 1 / 3) / 2),  # shifted by half: IoU 1/3
    ((RED_SQUARE,), 2 / 3, 1 / 2),  # one of the two shapes
    ((RED_SQUARE, BLUE_CIRCLE, ("green", "triangle", 2, 18, 12)), 4 / 5, 2 / 3),  # one extra
    ((("blue", "square", 2, 2, 10), ("red", "circle", 18, 16, 12)), 0.0, 0.0),  # colours swapped
    ((("red", "triangle", 2, 2, 10), ("blue", "square", 18, 16, 12)), 0.0, 0.0),  # kinds changed
    ((), 0.0, 0.0),  # nothing drawn
])
def test_agreement_with_the_reference_on_hand_drawn_scenes(sample, shape, placement):
    got = agreement(scene(RED_SQUARE, BLUE_CIRCLE), scene(*sample))
    assert got["ip_adapter_shape_agreement"] == pytest.approx(shape)
    assert got["ip_adapter_placement_agreement"] == pytest.approx(placement)


def test_two_empty_scenes_agree_and_a_batch_is_averaged():
    assert agreement(scene(), scene()) == {"ip_adapter_shape_agreement": 1.0,
                                           "ip_adapter_placement_agreement": 1.0}
    refs = torch.stack([scene(RED_SQUARE), scene(BLUE_CIRCLE)])
    samples = torch.stack([scene(RED_SQUARE), scene(RED_SQUARE)])
    assert reference_agreement(samples, ImagePrompt(refs), {}) == {
        "ip_adapter_shape_agreement": 0.5, "ip_adapter_placement_agreement": 0.5}


def test_real_scenes_agree_with_a_blurred_copy_and_hardly_with_another_scene():
    """On held-out generator scenes (not hand-drawn): a 3x3 box blur costs the reader a few
    shapes; a different scene, what a model ignoring the reference could match by chance,
    scores near 0."""
    scenes = held_out_shapes(image_size=32, channels=3, num_items=200, hflip=False, shift=0.0)
    images = collate([scenes[i] for i in range(len(scenes))])["image"]
    blurred = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    reference = ImagePrompt(images)
    assert reference_agreement(images, reference, {}) == {"ip_adapter_shape_agreement": 1.0,
                                                          "ip_adapter_placement_agreement": 1.0}
    blur = reference_agreement(blurred, reference, {})
    assert blur["ip_adapter_shape_agreement"] > 0.9 and blur["ip_adapter_placement_agreement"] > 0.8
    other = reference_agreement(images.roll(1, 0), reference, {})
    assert other["ip_adapter_shape_agreement"] < 0.15 and other["ip_adapter_placement_agreement"] < 0.05


def test_the_plugin_registers_it_for_shapes_against_its_null():
    registry = build_registry(load_entry_points=False)
    registry.add_module(ldm_ip_adapter)
    (metric,) = registry.metrics_for("ip_adapter")
    assert metric.score is reference_agreement
    assert metric.datasets == ("shapes",) and metric.against_null


SMOKE = ["experiment=smoke", "data=shapes", "data.channels=3", "condition=[text,ip_adapter]",
         "model=tiny", "data.image_size=16", "data.limit=16", "data.num_items=16",
         "autoencoder.ch=16", "autoencoder.ch_mult=[1,2]", "autoencoder.norm_groups=8",
         "autoencoder.train.steps=1", "autoencoder.train.batch_size=8", "trainer.max_steps=2",
         "trainer.batch_size=8", "trainer.threads=1", "trainer.progress=false",
         "trainer.precision=fp32", "sampler.steps=2", "sampler.guidance=3"]


def test_ldm_eval_reports_it_beside_the_model_without_the_image_prompt(tmp_path):
    """The ``*_null`` entries score samples of the same noise with the image prompt's guidance
    scale 0 (the text still guided at the run's scale), against the same references."""
    run = train(load([*SMOKE, f"run_dir={tmp_path / 'run'}"]))
    assert cli.main(["eval", f"run={run.root}", "n=4", "steps=2", "precision=fp32"]) == 0
    report = json.loads((run.root / "eval.json").read_text())
    keys = ("ip_adapter_shape_agreement", "ip_adapter_placement_agreement")
    assert all(0 <= report[k] <= 1 and 0 <= report[f"{k}_null"] <= 1 for k in keys)

    cfg, model, _ = load_run(run.root)
    batch = held_out_batch(cfg, 4)
    values = model.conditioner.resolve(batch)
    plan = model.sampling.but(steps=2)
    without = plan.but(guidance=replace(plan.guidance, per_plugin={"ip_adapter": 0.0}))
    noise = torch.randn((4, *model.latent_shape()), generator=torch.Generator().manual_seed(0))
    images = model.sample(values, 4, without, noise=noise, generator=torch.Generator().manual_seed(0))
    assert reference_agreement(images, values["ip_adapter"], batch) == {k: report[f"{k}_null"] for k in keys}


def test_ldm_eval_takes_a_scale_per_condition(tmp_path, capsys):
    """``guidance.text=0`` scores the image prompt without its caption: the samples are those
    of the plan with the text's scale 0 (it drops out of every branch), and the ``*_null``
    entries those with both scales 0 (unconditional). An unknown condition is a usage error."""
    run = train(load([*SMOKE, f"run_dir={tmp_path / 'run'}"]))
    assert cli.main(["eval", f"run={run.root}", "n=4", "steps=2", "precision=fp32", "guidance.text=0"]) == 0
    report = json.loads((run.root / "eval.json").read_text())
    assert report["plugin_guidance"] == {"text": 0.0}

    cfg, model, _ = load_run(run.root)
    batch = held_out_batch(cfg, 4)
    values = model.conditioner.resolve(batch)
    plan = model.sampling.but(steps=2)
    keys = ("ip_adapter_shape_agreement", "ip_adapter_placement_agreement")
    for suffix, scales in (("", {"text": 0.0}), ("_null", {"text": 0.0, "ip_adapter": 0.0})):
        how = plan.but(guidance=replace(plan.guidance, per_plugin=scales))
        noise = torch.randn((4, *model.latent_shape()), generator=torch.Generator().manual_seed(0))
        images = model.sample(values, 4, how, noise=noise, generator=torch.Generator().manual_seed(0))
        assert reference_agreement(images, values["ip_adapter"], batch) == {k: report[f"{k}{suffix}"] for k in keys}

    assert cli.main(["eval", f"run={run.root}", "n=4", "guidance.txt=0"]) == 2
    err = capsys.readouterr().err
    assert "guidance.txt names no condition of this model" in err and "text" in err
