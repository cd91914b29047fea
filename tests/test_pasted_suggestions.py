"""Every suggestion a config error makes works when pasted: the words it shows in backticks
replace the override that failed, and the command then composes and validates."""

from __future__ import annotations

import re

import pytest

from ldmcore.config import load
from ldmcore.errors import ConfigError, override_text
from ldmcore.sample import parse_request


def suggestions(message: str) -> list[str]:
    found = re.findall(r"`([^`]+)`", message)
    assert found, f"no suggestion to paste in: {message}"
    return found


@pytest.mark.parametrize("args, bad", [
    (["experiment=smoke", "conditions.class.embd=3"], "conditions.class.embd=3"),      # plugin key
    (["experiment=smoke", "conditions.clas.drop_prob=0.1"], "conditions.clas.drop_prob=0.1"),
    (["conditions.class.drop_prob=0.3"], "conditions.class.drop_prob=0.3"),            # not enabled
    (["experiment=smoke", "sampler=dpmpp2m"], "sampler=dpmpp2m"),                      # group option
    (["experiment=smoke", "data=shape"], "data=shape"),
    (["experiment=smoke", "trainer.max_step=3"], "trainer.max_step=3"),                # backbone key
    (["experiment=smoke", "trainer.stop_signal=[SIGTERM]"], "trainer.stop_signal=[SIGTERM]"),
])
def test_a_config_error_suggestion_works_when_pasted(args, bad):
    with pytest.raises(ConfigError) as caught:
        load(args)
    for words in suggestions(str(caught.value)):
        pasted = [a for a in args if a != bad] + words.split()
        cfg = load(pasted)  # raises (naming the problem) if the suggestion does not work
        key, _, value = words.split()[-1].partition("=")
        assert key.split(".")[-1] in cfg.model_dump_json() or key in ("sampler", "data", "condition")


def test_a_sample_option_suggestion_works_when_pasted(tmp_path):
    args = [f"run={tmp_path}", "cond.class=3", "stepz=4"]
    with pytest.raises(ConfigError) as caught:
        parse_request(args)
    (words,) = suggestions(str(caught.value))
    assert words == "steps=4"
    assert parse_request([*args[:2], words]).steps == 4


@pytest.mark.parametrize("value, text", [
    (3, "3"), (0.5, "0.5"), (True, "true"), (None, "null"), ("karras", "karras"),
    ("a red circle", "'a red circle'"), ("true", "'true'"), ([1, "x"], "[1,x]"),
])
def test_override_text_reads_back_as_the_same_value(value, text):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    assert override_text(value) == text
    parsed = OverridesParser.create().parse_overrides([f"k={text}"])[0].value()
    assert parsed == value


def test_a_run_folder_suggestion_works_when_pasted(tmp_path, trained_run):
    from tests.reliability import run_cli
    from tests.test_run_ownership import stage2
    from tests.test_run_restart import failed_start

    run = tmp_path / "run"
    assert run_cli(*stage2(run, trained_run)).code == 0
    taken = run_cli(*stage2(run, trained_run))  # a run is there: continue it or replace it
    assert taken.code == 2
    for words in suggestions(taken.paragraph):
        assert words in ("resume=true", "overwrite=true")
        pasted = run_cli(*stage2(run, trained_run, words, "trainer.max_steps=2"))
        assert pasted.code == 0, pasted.escaped or pasted.stderr
    empty = tmp_path / "empty"
    failed_start(empty)
    nothing = run_cli(*stage2(empty, trained_run, "resume=true"))
    (words,) = suggestions(nothing.paragraph)
    assert run_cli(*stage2(empty, trained_run, words)).code == 0
