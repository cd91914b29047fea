"""Residual diffusion around a plugin's base image, and the harmonic hole fill it uses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ldm_inpaint.encoder import InpaintConfig, InpaintEncoder
from ldm_lowres.encoder import LowresConfig, LowresEncoder
from ldmcore.build import build_model
from ldmcore.conditioning import BackboneSpec, Conditioner
from ldmcore.config import load
from ldmcore.diffusion.residual import ResidualSpace
from ldmcore.errors import ConfigError, PluginError
from ldmcore.hole_fill import CONVERGED_SWEEPS, blur_fill
from ldmcore.sampling import SamplerConfig, sampling_plan

PIXELS = BackboneSpec(latent_channels=3, latent_size=(16, 16), context_dim=16, image_channels=3,
                      image_size=(16, 16), encode=lambda x: x)
TINY = ["model=tiny", "data.image_size=16", "trainer.precision=fp32"]


def test_residual_space_maps_there_and_back_and_is_the_identity_without_a_base() -> None:
    z, base = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    space = ResidualSpace(base, 8.0)
    assert torch.allclose(space.into(z), (z - base) * 8)
    assert torch.allclose(space.out(space.into(z)), z, atol=1e-6)
    plain = ResidualSpace(None, 8.0)
    assert plain.into(z) is z and plain.out(z) is z


def test_blur_fill_keeps_the_known_pixels_and_reproduces_a_harmonic_image() -> None:
    # a linear ramp is its own 3x3 mean, so the harmonic fill of an inner hole is the ramp itself
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    ramp = (0.6 * xs - 0.3 * ys).expand(2, 3, 32, 32).contiguous()
    hole = torch.zeros(2, 1, 32, 32)
    hole[0, :, 6:26, 4:20] = 1
    hole[1, :, 10:14, 3:30] = 1
    filled = blur_fill(ramp, hole, CONVERGED_SWEEPS)
    known = hole.expand_as(ramp) == 0
    assert torch.equal(filled[known], ramp[known])
    assert (filled - ramp).abs().max() < 1e-3


def test_blur_fill_agrees_with_many_plain_sweeps() -> None:
    image = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    hole = torch.zeros(4, 1, 32, 32)
    hole[:, :, 5:25, 8:28] = 1
    plain = torch.where(hole > 0, torch.zeros_like(image), image)
    for _ in range(3000):  # the Jacobi iteration itself, from a zero start, run to convergence
        plain = torch.where(hole > 0, F.avg_pool2d(F.pad(plain, (1, 1, 1, 1), mode="replicate"), 3, 1), image)
    assert (blur_fill(image, hole, CONVERGED_SWEEPS) - plain).abs().max() < 0.01
    assert (blur_fill(image, hole) - plain).abs().max() < 0.15  # the default, cheap fill


def test_lowres_base_is_the_bicubic_upsampling_and_inpaint_base_the_filled_image() -> None:
    low = torch.rand(2, 3, 4, 4) * 2 - 1
    enc = LowresEncoder(LowresConfig(base="bicubic"), PIXELS)
    assert enc.provides_base and not LowresEncoder(LowresConfig(), PIXELS).provides_base
    bicubic = F.interpolate(low, size=(16, 16), mode="bicubic", align_corners=False).clamp(-1, 1)
    assert torch.equal(enc.base(low), bicubic)
    image, hole = torch.rand(2, 3, 16, 16) * 2 - 1, torch.zeros(2, 1, 16, 16)
    hole[..., 3:11, 5:13] = 1
    inpaint = InpaintEncoder(InpaintConfig(base="blur_fill"), PIXELS)
    assert torch.equal(inpaint.base((image, hole)), blur_fill(image, hole))


def test_one_base_per_model_and_a_residual_scale_needs_a_base() -> None:
    with pytest.raises(PluginError, match="each give a base image"):
        Conditioner({"lowres": LowresEncoder(LowresConfig(base="bicubic"), PIXELS),
                     "inpaint": InpaintEncoder(InpaintConfig(base="blur_fill"), PIXELS)})
    with pytest.raises(ConfigError, match="none of the enabled plugins \\(lowres\\) gives one"):
        build_model(load(["experiment=photos_sr4x", *TINY, "conditions.lowres.base=none"]))


def test_training_diffuses_the_scaled_residual_from_the_base_of_the_same_random_hole() -> None:
    model = build_model(load(["experiment=photos_inpaint", *TINY, "model.diffusion.residual_scale=5"]))
    image = torch.rand(4, 3, 16, 16) * 2 - 1
    seen: dict[str, torch.Tensor] = {}
    add_noise = model.schedule.add_noise

    def spy_noise(z0, noise, t):
        seen["z0"] = z0
        return add_noise(z0, noise, t)

    def spy_network(zt, t, cond):
        seen["mask"] = cond.concat[:, -1:]  # the inpaint plugin's mask channel
        return torch.zeros_like(zt)

    model.schedule.add_noise, model.network = spy_noise, spy_network
    model.conditioner.encoders["inpaint"].config = InpaintConfig(base="blur_fill", drop_prob=0.0)
    model.loss({"image": image}, generator=torch.Generator().manual_seed(3))
    hole = seen["mask"] > 0.5
    assert hole.any() and (~hole).any()
    assert torch.equal(seen["z0"][~hole.expand_as(image)], torch.zeros_like(image)[~hole.expand_as(image)])
    expected = (image - blur_fill(image, hole.float())) * 5
    assert torch.allclose(seen["z0"], expected, atol=1e-5)


def test_sampling_returns_the_base_when_the_denoiser_adds_nothing() -> None:
    model = build_model(load(["experiment=photos_sr4x", *TINY, "conditions.lowres.consistent=false"])).eval()
    model.denoiser = lambda: (lambda x, sigma, cond: torch.zeros_like(x))  # D(x; sigma) = 0: no residual
    low = torch.rand(2, 3, 4, 4) * 2 - 1
    bicubic = F.interpolate(low, size=(16, 16), mode="bicubic", align_corners=False).clamp(-1, 1)
    for sampler in ("ddim", "euler_ancestral", "dpmpp_2m"):
        plan = sampling_plan(SamplerConfig(), name=sampler, steps=4)
        out = model.sample({"lowres": low}, 2, plan, generator=torch.Generator().manual_seed(0))
        assert torch.allclose(out, bicubic, atol=1e-5), sampler
    # image-to-image at strength 0 runs no step: the init image comes back through the residual space
    init = torch.rand(1, 3, 16, 16) * 2 - 1
    assert torch.allclose(model.sample({"lowres": low}, 2, model.sampling.but(strength=0.0), init=init), init.expand(2, -1, -1, -1),
                          atol=1e-5)


def test_a_model_around_a_base_is_not_exported_to_formats_that_cannot_hold_the_base(tmp_path) -> None:
    from ldmcore.interop.export import export_diffusers, export_single_file

    cfg = load(["experiment=photos_inpaint", *TINY, "autoencoder=kl_f4"])
    model = build_model(cfg)
    for export, out in ((export_diffusers, tmp_path / "folder"), (export_single_file, tmp_path / "m.safetensors")):
        with pytest.raises(ConfigError, match="base image \\(conditions.inpaint.base\\)"):
            export(model, cfg, out)
        assert not out.exists()
