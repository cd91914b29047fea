"""A throwaway plugin package registers a sampler, a dataset and a metric; all three work through
``ldm train``, ``ldm sample`` and ``ldm eval``. And one sampling recipe: a run's sampler settings
are the default of every way to sample it (training grids, ``ldm sample``, ``ldm eval``, the
Python API)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

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


class Bars(Dataset):
    """A bright horizontal bar on black at row ``2 + label``; labels cycle through 0..9."""

    def __init__(self, image_size: int = 16, channels: int = 1, num_items: int = 64, seed: int = 0,
                 **_: object) -> None:
        self.size, self.channels, self.count, self.seed = image_size, channels, num_items, seed
        BUILT.append({"image_size": image_size, "seed": seed})

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> dict:
        label = (i + self.seed) % 10
        image = -torch.ones(self.channels, self.size, self.size)
        image[:, 2 + label] = 1.0
        return {"image": image, "class": label}


def bar_row_match(images: torch.Tensor, labels: torch.Tensor, batch: dict) -> dict:
    """Fraction of images whose brightest row is the bar their class asks for."""
    SCORED.append((torch.as_tensor(labels).clone(), sorted(batch)))
    rows = images.mean(dim=(1, 3)).argmax(dim=1) - 2
    return {"bar_row_match": float((rows == torch.as_tensor(labels)).float().mean())}


BUILT: list[dict] = []  # every Bars built, with its options
SCORED: list[tuple[torch.Tensor, list[str]]] = []  # (labels, batch keys) of every metric call


class ThirdPartyPackage:
    @hookimpl
    def register_samplers(self, register):
        register(sample_logged_euler)

    @hookimpl
    def register_datasets(self, register):
        register("bars", Bars, held_out=lambda **options: Bars(**{**options, "seed": 7}))

    @hookimpl
    def register_metrics(self, register):
        register("class", bar_row_match, datasets=("bars",))


RUN_SAMPLER = ["sampler.name=logged_euler", "sampler.eta=null", "sampler.steps=3", "sampler.sigmas=exponential",
               "sampler.guidance=2.0"]


@pytest.fixture(scope="module")
def plugin_registry():
    reg = isolated_registry(ThirdPartyPackage(), builtins=True)
    saved, registry._default = registry._default, reg  # what every command looks plugins up in
    yield reg
    registry._default = saved


@pytest.fixture(scope="module")
def run(tmp_path_factory, plugin_registry) -> Path:
    root = tmp_path_factory.mktemp("runs") / "plan"
    cfg = load(["experiment=smoke", f"run_dir={root}", "trainer.max_steps=2", "data=bars",
                "autoencoder.train.steps=1", "trainer.precision=fp32", *RUN_SAMPLER], plugin_registry)
    SEEN.clear()
    BUILT.clear()
    train(cfg, plugin_registry)
    return root


def test_the_metric_reads_its_own_dataset_perfectly():
    data = Bars(num_items=10)
    images = torch.stack([data[i]["image"] for i in range(10)])
    labels = torch.tensor([data[i]["class"] for i in range(10)])
    assert bar_row_match(images, labels, {}) == {"bar_row_match": 1.0}
    assert bar_row_match(images, (labels + 1) % 10, {}) == {"bar_row_match": 0.0}


def test_ldm_train_trains_on_the_plugins_dataset(run):
    assert BUILT == [{"image_size": 16, "seed": 0}]  # data=bars with the smoke config's size
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 2


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
    # euler's own config has 30 Karras steps: ask for the run's 3 exponential ones to compare
    for words, out in (([], tmp_path / "own"), (["sampler=euler", "steps=3", "sigmas=exponential"],
                                                tmp_path / "builtin")):
        args = ["sample", f"run={run}", "cond.class=[2,8]", "n=2", "precision=fp32", f"out={out}"]
        assert cli.main([*args, *words]) == 0, capsys.readouterr().err
    own = json.loads((tmp_path / "own" / "samples.json").read_text())
    assert {k: own[k] for k in ("sampler", "steps", "sigmas", "guidance")} == {
        "sampler": "logged_euler", "steps": 3, "sigmas": "exponential", "guidance": 2.0}
    assert len(SEEN) == 1  # once: sampler=euler replaced the run's sampler
    builtin = json.loads((tmp_path / "builtin" / "samples.json").read_text())
    assert (builtin["sampler"], builtin["sigmas"], builtin["guidance"]) == ("euler", "exponential", 2.0)
    for record in own["samples"]:  # the same method on the same levels: the same 8-bit pixels
        a, b = (np.asarray(Image.open(tmp_path / d / record["file"]), dtype=np.int16) for d in ("own", "builtin"))
        assert np.abs(a - b).max() <= 1  # float32 rounding may move a pixel by one level


def test_ldm_eval_scores_a_folder_of_samples_with_the_plugins_metric(run, tmp_path, capsys):
    out = tmp_path / "samples"
    assert cli.main(["sample", f"run={run}", "cond.class=[2,8]", "n=2", f"out={out}"]) == 0
    SCORED.clear()
    assert cli.main(["eval", f"run={run}", f"samples={out}"]) == 0, capsys.readouterr().err
    (labels, keys), = SCORED
    assert labels.tolist() == [2, 2, 8, 8] and keys == []
    assert set(json.loads((run / "eval.json").read_text())) == {"bar_row_match"}


def test_an_unknown_sampler_on_the_command_line_names_the_nearest(run, capsys):
    assert cli.main(["sample", f"run={run}", "cond.class=1", "sampler=dpm"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "unknown sampler 'dpm'" in err and "'ddpm'" in err and "logged_euler" in err


def test_ldm_eval_samples_held_out_conditions_with_the_runs_plan_and_the_plugins_metric(run, capsys):
    SEEN.clear()
    SCORED.clear()
    model = from_pretrained(run)
    assert cli.main(["eval", f"run={run}", "n=4"]) == 0, capsys.readouterr().err
    report = json.loads((run / "eval.json").read_text())
    assert report["samples"] == 4 and report["data"] == "bars" and 0 <= report["bar_row_match"] <= 1
    assert len(SEEN) == 1 and torch.equal(SEEN[0], run_levels(model))
    (labels, keys), = SCORED  # the held-out items (seed 7), with their data
    assert labels.tolist() == [7, 8, 9, 0] and keys == ["class", "image"]
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
