"""Sampling through the model and ``ldm sample``: samplers, noise levels, knobs, guidance,
image-to-image and masked sampling, v-prediction at zero terminal SNR.

The run folders here are written directly from freshly built smoke-size models (no training):
what is checked is exact behaviour - errors with exit status 2 that list the valid choices,
seeds that fix pixels, a masked region that stays the init image's latent, strength 0 that
returns the input - and for blending, an exact Gaussian denoiser gives the truth.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ldmcore import checkpoint, cli
from ldmcore.build import build_model
from ldmcore.config import load
from ldmcore.diffusion.img2img import LatentBlend, noised, start_index
from ldmcore.diffusion.samplers import SAMPLERS
from ldmcore.diffusion.sigmas import SigmaKind, karras_sigmas
from ldmcore.errors import ConfigError
from ldmcore.runfolder import load_run
from ldmcore.sampling import SamplerConfig, sampling_plan


@pytest.fixture(autouse=True, scope="module")
def _few_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_run(folder: Path, *overrides: str) -> Path:
    """A run folder holding a freshly initialised smoke-size model (what sampling reads)."""
    cfg = load(["experiment=smoke", f"run_dir={folder}", *overrides])
    torch.manual_seed(0)
    model = build_model(cfg)
    model.autoencoder.scale_factor.fill_(0.5)
    (folder / "checkpoints").mkdir(parents=True)
    checkpoint.save(folder / "checkpoints" / "last.safetensors", dict(model.state_dict()),
                    {"kind": "latent_diffusion", "step": 0, "config": cfg.model_dump(mode="json")})
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return write_run(tmp_path_factory.mktemp("runs") / "eps")


@pytest.fixture(scope="module")
def v_run(tmp_path_factory) -> Path:
    return write_run(tmp_path_factory.mktemp("runs") / "v", "model.diffusion.prediction=v",
                     "model.diffusion.zero_terminal_snr=true", "sampler.spacing=trailing")


def ldm(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, " ".join((out.out + out.err).split())


# -- the command line ---------------------------------------------------------------------------

@pytest.mark.parametrize("args, words", [
    (["sampler=dpm"], ["'dpm'", "'dpm_2'", "Samplers: " + ", ".join(sorted(SAMPLERS))]),
    (["steps=-3"], ["'steps'", "-3"]),
    (["steps=0"], ["'steps'", "greater than or equal to 1"]),
    (["eta=1.5"], ["'eta'", "less than or equal to 1"]),
    (["eta=-0.1"], ["'eta'", "greater than or equal to 0"]),
    (["sampler=euler", "eta=0.5"], ["'euler' has no knob 'eta'", "it takes no knobs"]),
    (["sampler=dpmpp_2m_sde", "option.s_nois=2"], ["'s_nois'", "'s_noise'", "eta (default 1.0"]),
    (["sampler=dpmpp_3m_sde", "option.s_noise=-1"], ["s_noise=-1.0 is out of range (>= 0)"]),
    (["sigmas=karas"], ["'sigmas'", "'karras'", "'exponential'"]),
    (["steps=5000"], ["steps=5000", "1..1000"]),
    (["guidance.klass=2"], ["guidance.klass", "'class'", "This model's conditions: class"]),
    (["guidance_interval=[5,1]"], ["[5.0, 1.0]", "lo <= hi"]),
    (["guidance_interval=soon"], ["guidance_interval='soon'", "[0.3,5]"]),
    (["guidance_rescale=2"], ["'guidance_rescale'", "less than or equal to 1"]),
    (["mask=m.png"], ["mask= needs init="]),
    (["init=/no/such.png"], ["init='/no/such.png' is not a readable image"]),
    (["strength=1.5"], ["'strength'"]),
])
def test_bad_sampling_requests_exit_2_naming_the_valid_choices(capsys, run, args, words):
    code, text = ldm(capsys, "sample", f"run={run}", "cond.class=3", "n=1", *args)
    assert code == 2, text
    for w in words:
        assert w in text, text


def pngs(folder: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(p)) for p in sorted(folder.glob("0*.png"))]


def test_sampler_knobs_and_per_plugin_guidance_from_the_command_line(capsys, run, tmp_path):
    args = ["sample", f"run={run}", "cond.class=[1,2]", "n=2", "sampler=dpmpp_2m_sde",
            "sigmas=karras", "steps=3", "option.s_noise=0.9", "guidance.class=2",
            "guidance_rescale=0.5", "guidance_interval=[0.1,20]", "precision=fp32"]
    code, text = ldm(capsys, *args, f"out={tmp_path / 'a'}")
    assert code == 0, text
    meta = json.loads((tmp_path / "a" / "samples.json").read_text())
    assert meta["sampler"] == "dpmpp_2m_sde" and meta["sigmas"] == "karras"
    # the sampler's own config (sampler/dpmpp_2m_sde.yaml) gives eta=1; the run's ddim eta=0 stays its own
    assert meta["knobs"] == {"s_noise": 0.9, "eta": 1.0}
    assert meta["plugin_guidance"] == {"class": 2.0} and meta["guidance_rescale"] == 0.5
    assert meta["guidance_interval"] == [0.1, 20.0] and meta["evaluations"] == 3
    # a stochastic sampler, yet the same request gives the same pixels
    assert ldm(capsys, *args, f"out={tmp_path / 'b'}")[0] == 0
    first, second = pngs(tmp_path / "a"), pngs(tmp_path / "b")
    assert len(first) == 4 and all(np.array_equal(x, y) for x, y in zip(first, second))


def test_the_runs_knobs_apply_only_to_the_runs_sampler(capsys, run, tmp_path):
    """The smoke run's config says ddim with eta=0.0; heun takes no eta, yet runs."""
    code, text = ldm(capsys, "sample", f"run={run}", "cond.class=4", "n=1", "sampler=heun",
                     "steps=2", f"out={tmp_path}", "precision=fp32")
    assert code == 0, text
    assert json.loads((tmp_path / "samples.json").read_text())["evaluations"] == 3


def test_image_to_image_and_masked_sampling_from_the_command_line(capsys, run, tmp_path):
    init = tmp_path / "init.png"
    Image.fromarray((np.add.outer(np.arange(16), np.arange(16)) * 8).astype(np.uint8)).save(init)
    mask = tmp_path / "mask.png"
    m = np.zeros((16, 16), dtype=np.uint8)
    m[:, 8:] = 255
    Image.fromarray(m).save(mask)
    common = ["sample", f"run={run}", "cond.class=5", "n=2", "steps=4", "precision=fp32",
              f"init={init}"]
    assert ldm(capsys, *common, "strength=0.5", f"out={tmp_path / 'i2i'}")[0] == 0
    assert ldm(capsys, *common, f"mask={mask}", f"out={tmp_path / 'inpaint'}")[0] == 0
    meta = json.loads((tmp_path / "inpaint" / "samples.json").read_text())
    assert meta["strength"] == 1.0 and meta["mask"] == str(mask)
    assert len(pngs(tmp_path / "inpaint")) == 2


# -- the model --------------------------------------------------------------------------------

def smoke_model(run_dir: Path):
    _, model, _ = load_run(run_dir)
    return model


def test_strength_zero_returns_the_init_image_through_the_autoencoder(run):
    model = smoke_model(run)
    init = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    values = {"class": torch.tensor([1, 2])}
    out = model.sample(values, 2, model.sampling.but(steps=10, strength=0.0), init=init,
                       noise=torch.zeros(2, *model.latent_shape()), generator=torch.Generator().manual_seed(1))
    latents = model.encode_images(init, torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, model.autoencoder.images(latents).clamp(-1, 1))


def test_a_mask_keeping_everything_returns_the_init_latent_for_any_sampler(run):
    model = smoke_model(run)
    init = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    values = {"class": torch.tensor([7])}
    latents = model.encode_images(init, torch.Generator().manual_seed(3))
    expected = model.autoencoder.images(latents).clamp(-1, 1)
    for name in ("ddim", "dpmpp_2m_sde", "heun"):
        plan = sampling_plan(SamplerConfig(), name=name, steps=3, guidance=3.0, sigmas=SigmaKind.KARRAS)
        out = model.sample(values, 1, plan, init=init, mask=torch.zeros(1, 16, 16),
                           noise=torch.randn(1, *model.latent_shape()),
                           generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(out, expected)


def test_v_prediction_at_zero_terminal_snr_trains_and_samples(v_run, capsys, tmp_path):
    model = smoke_model(v_run)
    assert model.schedule.alphas_cumprod[-1].item() == 0.0
    batch = {"image": torch.rand(4, 1, 16, 16) * 2 - 1, "class": torch.tensor([0, 1, 2, 3])}
    loss = model.loss(batch, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    # at t = T the training target is v = -z0: the model must say where the data is
    z0 = torch.randn(2, 2, 4, 4)
    t = torch.full((2,), 999)
    torch.testing.assert_close(model.schedule.target("v", z0, torch.randn(2, 2, 4, 4), t), -z0)
    code, text = ldm(capsys, "sample", f"run={v_run}", "cond.class=3", "n=2", "steps=3",
                     "sampler=dpmpp_2m", f"out={tmp_path}", "precision=fp32")
    assert code == 0, text


def test_mask_without_init_and_unknown_sampler_names_are_config_errors(run):
    model = smoke_model(run)
    values = {"class": torch.tensor([1])}
    with pytest.raises(ConfigError, match="mask needs an init image"):
        model.sample(values, 1, model.sampling.but(steps=2), mask=torch.ones(1, 16, 16))
    with pytest.raises(ConfigError, match="unknown sampler 'eulr'.*'euler'"):
        sampling_plan(SamplerConfig(), name="eulr")


# -- blending and image-to-image against an exact denoiser ----------------------------------------

MU, S = 1.5, 0.5


def pixel_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """E[x0 | x] for independent N(MU, S^2) pixels."""
    s2 = sigma.double().view(-1, *([1] * (x.dim() - 1))) ** 2
    return (MU + S ** 2 / (S ** 2 + s2) * (x - MU)).to(x.dtype)


def test_start_index_follows_diffusers_strength_rule():
    assert [start_index(50, s) for s in (1.0, 0.8, 0.3, 0.0)] == [0, 10, 35, 50]
    with pytest.raises(ConfigError, match=r"strength must be in \[0, 1\]"):
        start_index(50, 1.2)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_latent_blending_keeps_the_known_region_exactly_for_every_sampler(name: str) -> None:
    g = torch.Generator().manual_seed(0)
    known = torch.randn(4, 1, 6, 6, generator=g, dtype=torch.float64)
    mask = torch.zeros(1, 1, 6, 6, dtype=torch.float64)
    mask[..., 3:] = 1
    sigmas = karras_sigmas(8, 0.01, 20.0)
    model = LatentBlend(pixel_denoiser, known, mask)
    x = noised(known, sigmas[0].item(), torch.randn(4, 1, 6, 6, generator=g, dtype=torch.float64))
    out = model.paste(SAMPLERS[name](model, x, sigmas, generator=g))
    torch.testing.assert_close(out[..., :3], known[..., :3], rtol=0, atol=1e-12)
    assert not torch.allclose(out[..., 3:], known[..., 3:])


def test_image_to_image_from_the_data_stays_in_the_data_distribution() -> None:
    """Noise data samples to sigma, run the exact reverse ODE: the result is again N(MU, S^2),
    and the lower the strength, the closer each output stays to its input."""
    g = torch.Generator().manual_seed(1)
    data = MU + S * torch.randn(40, 1000, generator=g, dtype=torch.float64)
    sigmas = karras_sigmas(60, 0.002, 80.0)
    correlations = []
    for strength in (0.2, 0.5, 0.8):
        levels = sigmas[start_index(60, strength):]
        x = noised(data, levels[0].item(), torch.randn(data.shape, generator=g, dtype=torch.float64))
        out = SAMPLERS["dpmpp_2m"](pixel_denoiser, x, levels)
        assert out.mean().item() == pytest.approx(MU, abs=4 * S / math.sqrt(data.numel()) + 1e-3)
        assert out.std().item() == pytest.approx(S, abs=0.01)
        correlations.append(torch.corrcoef(torch.stack([out.flatten(), data.flatten()]))[0, 1].item())
    assert correlations[0] > correlations[1] > correlations[2]
