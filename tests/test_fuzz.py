"""Fuzzing every input a user controls (strategies and targets: tests/fuzz_targets.py): config
overrides, ``ldm sample`` words, condition values through each plugin's ``parse``, checkpoint
bytes and metadata. Whatever is generated must be accepted (with finite numbers only) or refused
with an ``LdmError``; any other exception is a traceback a user would see.

A few derandomized examples per target keep ``make test`` short and the same on every machine;
``make bench`` (python -m benchmarks.reliability) runs thousands and reports how many were clean.
"""

from __future__ import annotations

import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import fuzz_targets as fz
from ldmcore import checkpoint

FEW = settings(max_examples=25, derandomize=True, deadline=None, database=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def assert_clean(verdict: str, example) -> None:
    assert not verdict.startswith("escaped"), f"{example!r}: {verdict}"


@FEW
@given(fz.overrides)
def test_config_overrides(words):
    assert_clean(fz.train_config(words), words)


@settings(FEW, max_examples=200)
@given(fz.sample_words)
def test_sample_words(words):
    assert_clean(fz.sample_request(words), words)


@pytest.fixture(scope="module")
def encoders():
    return fz.plugin_encoders()


def test_every_first_party_plugin_is_fuzzed(encoders):
    assert {"class", "layout", "text", "segmap", "lowres", "inpaint"} <= set(encoders)


@settings(FEW, max_examples=150)
@given(st.data())
def test_condition_values_through_each_plugins_parse(encoders, data):
    name = data.draw(st.sampled_from(sorted(encoders)))
    text = data.draw(fz.condition_texts)
    assert_clean(fz.condition_value(encoders, name, text), (name, text))


@settings(FEW, max_examples=150)
@given(mutation=fz.mutations)
def test_checkpoint_bytes(tmp_path_factory, mutation):
    folder = tmp_path_factory.mktemp("ckpt")
    original = fz.small_checkpoint(folder / "original.safetensors")
    assert_clean(fz.checkpoint_bytes(folder, original, mutation), mutation)


@pytest.fixture(scope="module")
def fuzzed_run(trained_run, tmp_path_factory):
    run = tmp_path_factory.mktemp("meta") / "run"
    shutil.copytree(trained_run, run)
    return run, *checkpoint.load(trained_run / "checkpoints" / "last.safetensors")


@settings(FEW, max_examples=15)
@given(change=fz.metadata)
def test_checkpoint_metadata(fuzzed_run, change):
    assert_clean(fz.checkpoint_metadata(*fuzzed_run, change), change)
