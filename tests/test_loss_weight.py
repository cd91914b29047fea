"""Per-element loss weights (``SampleShaping.loss_weight``): the weighted loss in closed form,
ones reproducing the unweighted loss bit for bit, the inpaint plugin's hole weighting, weights of
two plugins multiplying, and a malformed weight named by its plugin."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ldm_inpaint.encoder import InpaintConfig, InpaintEncoder
from ldm_lowres.encoder import LowresConfig, LowresEncoder
from ldmcore.build import build_model
from ldmcore.conditioning import BackboneSpec, Conditioner
from ldmcore.config import load
from ldmcore.diffusion.loss import denoising_loss
from ldmcore.errors import PluginError

PIXELS = BackboneSpec(latent_channels=3, latent_size=(16, 16), context_dim=16, image_channels=3,
                      image_size=(16, 16), encode=lambda x: x)
TINY = ["model=tiny", "data.image_size=16", "trainer.precision=fp32"]


def test_the_weighted_loss_in_closed_form() -> None:
    out, target = torch.zeros(2, 4, 4, 4), torch.full((2, 4, 4, 4), 2.0)  # squared error 4 everywhere
    weight = torch.full((2, 1, 4, 4), 0.25)
    weight[:, :, 1:3, 1:3] = 1.0  # 4 of 16 pixels weigh 1, 12 weigh 0.25: (4 + 3) / 16 of the error
    assert float(denoising_loss(out, target, weight)) == 4 * 7 / 16
    per_channel = torch.ones(2, 4, 4, 4)
    per_channel[:, 0] = 0.0  # one channel of four left out
    assert float(denoising_loss(out, target, per_channel)) == 4 * 3 / 4
    # Min-SNR's per-sample weights scale each sample's weighted mean: (1.75 * 1 + 1.75 * 0.5) / 2
    assert float(denoising_loss(out, target, weight, torch.tensor([1.0, 0.5]))) == 1.75 * 1.5 / 2


def test_weights_of_one_reproduce_the_unweighted_loss_bit_for_bit() -> None:
    g = torch.Generator().manual_seed(0)
    out, target = torch.randn(8, 4, 16, 16, generator=g), torch.randn(8, 4, 16, 16, generator=g)
    ones = torch.ones(8, 1, 16, 16)
    assert torch.equal(denoising_loss(out, target, ones), F.mse_loss(out, target))
    snr = torch.rand(8, generator=g)
    assert torch.equal(denoising_loss(out, target, ones, snr),
                       (snr * (out - target).pow(2).flatten(1).mean(1)).mean())


@pytest.mark.parametrize("snr_gamma", [None, 0.05])
def test_a_plugin_weighing_everything_one_leaves_the_models_loss_unchanged(snr_gamma) -> None:
    torch.manual_seed(0)
    model = build_model(load(["experiment=smoke"]))
    model.snr_gamma = snr_gamma
    batch = {"class": torch.tensor([1, 2, 3, 4])}
    latents = torch.randn(4, *model.latent_shape())

    @torch.no_grad()
    def loss() -> torch.Tensor:
        return model.loss(batch, latents, generator=torch.Generator().manual_seed(3))

    unweighted = loss()
    encoder = model.conditioner.encoders["class"]
    encoder.loss_weight = lambda value: torch.ones(len(value), 1, *model.latent_size)
    assert torch.equal(loss(), unweighted)
    encoder.loss_weight = lambda value: torch.full((len(value), 1, *model.latent_size), 2.0)
    assert torch.equal(loss(), 2 * unweighted)  # a power of two scales every term exactly


def test_inpainting_weighs_the_hole_one_and_the_known_region_known_weight() -> None:
    model = build_model(load(["experiment=photos_inpaint", *TINY]))
    model.conditioner.encoders["inpaint"].config = InpaintConfig(base="blur_fill", drop_prob=0.0,
                                                                 known_weight=0.1)
    seen: dict[str, torch.Tensor] = {}
    target_of = model.schedule.target

    def spy_target(*args):
        seen["target"] = target_of(*args)
        return seen["target"]

    def spy_network(zt, t, cond):
        seen["mask"] = cond.concat[:, -1:]  # the inpaint plugin's mask channel
        return torch.zeros_like(zt)  # the error is the target itself

    model.schedule.target, model.network = spy_target, spy_network
    loss = model.loss({"image": torch.rand(4, 3, 16, 16) * 2 - 1}, generator=torch.Generator().manual_seed(3))
    hole = (seen["mask"] > 0.5).expand_as(seen["target"])
    squared = seen["target"].float() ** 2
    assert hole.any() and (~hole).any()
    expected = (squared[hole].sum() + 0.1 * squared[~hole].sum()) / squared.numel()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=0)  # float32 sums in another order


def test_the_hole_weight_is_taken_at_latent_size_and_uniform_weights_are_none() -> None:
    latent = BackboneSpec(latent_channels=4, latent_size=(4, 4), context_dim=16, image_channels=3,
                          image_size=(16, 16), encode=lambda x: F.avg_pool2d(x, 4).repeat(1, 2, 1, 1)[:, :4])
    image, hole = torch.zeros(1, 3, 16, 16), torch.zeros(1, 1, 16, 16)
    hole[..., 5, 9] = 1  # one pixel: latent cell (1, 2)
    weight = InpaintEncoder(InpaintConfig(known_weight=0.25), latent).loss_weight((image, hole))
    expected = torch.full((1, 1, 4, 4), 0.25)
    expected[..., 1, 2] = 1.0  # a cell with any hole is a hole, as the mask channel says
    assert torch.equal(weight, expected)
    assert InpaintEncoder(InpaintConfig(), latent).loss_weight((image, hole)) is None


def test_two_plugins_weights_multiply_and_a_malformed_one_is_named() -> None:
    inpaint = InpaintEncoder(InpaintConfig(known_weight=0.5), PIXELS)
    lowres = LowresEncoder(LowresConfig(), PIXELS)
    conditioner = Conditioner({"inpaint": inpaint, "lowres": lowres})
    image, hole = torch.zeros(2, 3, 16, 16), torch.zeros(2, 1, 16, 16)
    hole[..., :8, :] = 1  # the top half
    other = torch.full((2, 1, 16, 16), 0.5)
    other[..., :, :8] = 2.0  # the left half
    lowres.loss_weight = lambda value: other
    values = {"inpaint": (image, hole), "lowres": torch.zeros(2, 3, 4, 4)}
    weight = conditioner.loss_weight(values, (2, 3, 16, 16))
    assert weight[0, 0, 0, 0] == 2.0 and weight[0, 0, 0, 15] == 0.5  # top: 1 x (2 | 0.5)
    assert weight[0, 0, 15, 0] == 1.0 and weight[0, 0, 15, 15] == 0.25  # bottom: 0.5 x (2 | 0.5)
    lowres.loss_weight = lambda value: torch.ones(2, 1, 4, 4)  # at the low resolution's size
    with pytest.raises(PluginError, match=r"plugin 'lowres': loss_weight\(\) returned shape \(2, 1, 4, 4\); "
                                          r"it must be .* = \(2, 1 or 3, 16, 16\)"):
        conditioner.loss_weight(values, (2, 3, 16, 16))
    lowres.loss_weight = lambda value: torch.full((2, 1, 16, 16), float("nan"))
    with pytest.raises(PluginError, match="plugin 'lowres'.*finite and >= 0"):
        conditioner.loss_weight(values, (2, 3, 16, 16))
