"""One sampling recipe: a run's sampler settings are the default of every way to sample it, and a
sampler registered by a third-party package works in all of them (training grids, ``ldm
sample``, ``ldm eval``, the Python API)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ldmcore import cli, from_pretrained, registry
from ldmcore.config import load
from ldmcore.diffusion.sigmas import SigmaKind, SigmaPlan
from ldmcore.errors import ConfigError
from ldmcore.eval.tasks import evaluate_run
from ldmcore.hookspecs import hookimpl
from ldmcore.sampling import SamplerConfig, sampling_plan
from ldmcore.testing import isolated_registry
from ldmcore.train import train

SEEN: list[torch.Tensor] = []  # the noise levels of every call of the plugin's sampler


def sample_logged_euler(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Euler's method on the probability-flow ODE (a third party's own), logging its levels."""
    SEEN.append(sigmas.clone())
    extra_args = extra_args or {}
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * x.new_ones([x.shape[0]]), **extra_args)
        x = x + (sigmas[i + 1] - sigmas[i]) * (x - denoised) / sigmas[i]
    return x


class ThirdPartySampler:
    @hookimpl
    def register_samplers(self, register):
        register(sample_logged_euler)


RUN_SAMPLER = ["sampler.name=logged_euler", "sampler.eta=null", "sampler.steps=3", "sampler.sigmas=exponential",
               "sampler.guidance=2.0"]


@pytest.fixture(scope="module")
def plugin_registry():
    reg = isolated_registry(ThirdPartySampler(), builtins=True)
    saved, registry._default = registry._default, reg  # what every command looks plugins up in
    yield reg
    registry._default = saved


@pytest.fixture(scope="module")
def run(tmp_path_factory, plugin_registry) -> Path:
    root = tmp_path_factory.mktemp("runs") / "plan"
    cfg = load(["experiment=smoke", f"run_dir={root}", "trainer.max_steps=2",
                "autoencoder.train.steps=1", "trainer.precision=fp32", *RUN_SAMPLER], plugin_registry)
    SEEN.clear()
    train(cfg, plugin_registry)
    return root


def run_levels(model) -> torch.Tensor:
    return SigmaPlan(SigmaKind.EXPONENTIAL).sigmas(model.schedule, 3)


def test_the_training_grid_samples_with_the_runs_plan_and_a_plugins_sampler(run):
    model = from_pretrained(run)
    assert len(SEEN) == 1 and torch.equal(SEEN[0], run_levels(model))
    assert (run / "samples" / "step_2.png").is_file()


def test_the_python_api_defaults_to_the_runs_own_settings(run, plugin_registry):
    model = from_pretrained(run)
    cfg = load(["experiment=smoke", *RUN_SAMPLER], plugin_registry)
    assert model.sampling == sampling_plan(cfg.sampler, plugin_registry)
    assert (model.sampling.sampler.name, model.sampling.guidance.scale) == ("logged_euler", 2.0)
    SEEN.clear()
    values = {"class": torch.tensor([3, 5])}
    noise = torch.randn(2, *model.latent_shape(), generator=torch.Generator().manual_seed(0))
    default = model.sample(values, 2, noise=noise)
    assert len(SEEN) == 1 and torch.equal(SEEN[0], run_levels(model))
    assert torch.equal(default, model.sample(values, 2, model.sampling, noise=noise))


def test_ldm_sample_uses_the_runs_plan_and_its_sampler_is_eulers_method(run, tmp_path, capsys):
    SEEN.clear()
    for name, out in (("", tmp_path / "own"), ("sampler=euler", tmp_path / "builtin")):
        args = ["sample", f"run={run}", "cond.class=[2,8]", "n=2", "precision=fp32", f"out={out}"]
        assert cli.main([*args, *([name] if name else [])]) == 0, capsys.readouterr().err
    own = json.loads((tmp_path / "own" / "samples.json").read_text())
    assert {k: own[k] for k in ("sampler", "steps", "sigmas", "guidance")} == {
        "sampler": "logged_euler", "steps": 3, "sigmas": "exponential", "guidance": 2.0}
    assert len(SEEN) == 1  # once: sampler=euler replaced the run's sampler
    builtin = json.loads((tmp_path / "builtin" / "samples.json").read_text())
    assert (builtin["sampler"], builtin["sigmas"], builtin["guidance"]) == ("euler", "exponential", 2.0)
    for record in own["samples"]:  # the same method on the same levels: the same 8-bit pixels
        a, b = (np.asarray(Image.open(tmp_path / d / record["file"]), dtype=np.int16) for d in ("own", "builtin"))
        assert np.abs(a - b).max() <= 1  # float32 rounding may move a pixel by one level


def test_an_unknown_sampler_on_the_command_line_names_the_nearest(run, capsys):
    assert cli.main(["sample", f"run={run}", "cond.class=1", "sampler=dpm"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "unknown sampler 'dpm'" in err and "'ddpm'" in err and "logged_euler" in err


def test_ldm_eval_samples_with_the_runs_plan(run):
    SEEN.clear()
    model = from_pretrained(run)
    report = evaluate_run(run, n=4)
    assert report["samples"] == 4
    assert len(SEEN) == 1 and torch.equal(SEEN[0], run_levels(model))
    SEEN.clear()
    evaluate_run(run, n=4, steps=2)
    assert torch.equal(SEEN[0], SigmaPlan(SigmaKind.EXPONENTIAL).sigmas(model.schedule, 2))


def test_overrides_keep_the_runs_knobs_only_for_its_own_sampler():
    own = SamplerConfig(name="euler_ancestral", eta=0.5, guidance=2.0, plugin_guidance={"a": 1.0})
    assert sampling_plan(own, steps=7).knobs == {"eta": 0.5}
    other = sampling_plan(own, name="dpmpp_2m", plugin_guidance={"b": 3.0})
    assert other.knobs == {} and dict(other.guidance.per_plugin) == {"a": 1.0, "b": 3.0}
    with pytest.raises(ConfigError, match="sampler.name.*unknown sampler 'eulr'.*'euler'"):
        sampling_plan(own, name="eulr")
    with pytest.raises(ConfigError, match="sampler.s_noise=-1.*out of range"):
        sampling_plan(own, options={"s_noise": -1})
