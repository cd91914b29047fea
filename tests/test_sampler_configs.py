"""``sampler=NAME`` means that sampler's own config (``conf/sampler/NAME.yaml``): its steps,
noise levels and knobs replace the run's or the experiment's, explicit overrides win over it,
and guidance stays the run's. The truth is the YAML file itself, read here independently."""

from __future__ import annotations

import json

import pytest
import yaml

from ldmcore.config import conf_dir, load
from ldmcore.sampling import SamplerConfig, sampling_plan
from tests.test_sampling import ldm, run  # noqa: F401 - the module's run fixture


def shipped(name: str) -> dict:
    return yaml.safe_load((conf_dir() / "sampler" / f"{name}.yaml").read_text())


RUNS_OWN = SamplerConfig(name="ddim", steps=50, eta=0.0, guidance=5.0)  # as experiment=demo says


@pytest.mark.parametrize("name", ["dpmpp_2m", "dpmpp_3m_sde", "lms", "heun"])
def test_a_named_sampler_takes_its_own_config(name):
    own = shipped(name)
    plan = sampling_plan(RUNS_OWN, name=name)
    assert plan.sampler.name == name and plan.steps == own["steps"]
    assert plan.sigmas.kind.value == own.get("sigmas", "discrete")
    assert dict(plan.knobs) == {**own.get("options", {}), **({"eta": own["eta"]} if "eta" in own else {})}
    assert plan.guidance.scale == 5.0  # the run's guidance is not the sampler's to change


def test_an_explicit_override_beats_the_samplers_config():
    plan = sampling_plan(RUNS_OWN, name="dpmpp_3m_sde", steps=7, eta=0.5)
    assert (plan.steps, plan.sigmas.kind.value, plan.knobs["eta"]) == (7, "exponential", 0.5)


def test_the_runs_own_sampler_keeps_the_runs_settings():
    plan = sampling_plan(RUNS_OWN, name="ddim")
    assert (plan.steps, dict(plan.knobs)) == (50, {"eta": 0.0})


def test_training_configs_take_the_samplers_config_over_the_experiments():
    demo = load(["experiment=demo"]).sampler
    assert (demo.name, demo.steps, demo.guidance) == ("ddim", 50, 5.0)  # the experiment's own
    switched = load(["experiment=demo", "sampler=dpmpp_2m"]).sampler
    own = shipped("dpmpp_2m")
    assert (switched.steps, switched.sigmas.value) == (own["steps"], own["sigmas"])
    assert switched.guidance == demo.guidance
    told = load(["experiment=demo", "sampler=dpmpp_2m", "sampler.steps=12"]).sampler
    assert (told.steps, told.sigmas.value) == (12, own["sigmas"])


def test_ldm_sample_prints_and_records_what_it_used(capsys, run, tmp_path):  # noqa: F811
    code, text = ldm(capsys, "sample", f"run={run}", "cond.class=3", "n=1", "sampler=euler",
                     "precision=fp32", f"out={tmp_path}")
    assert code == 0, text
    own = shipped("euler")
    assert f"sampler: euler, {own['steps']} steps ({own['steps']} evaluations), karras noise levels" in text
    meta = json.loads((tmp_path / "samples.json").read_text())
    assert (meta["steps"], meta["sigmas"]) == (own["steps"], own["sigmas"])
