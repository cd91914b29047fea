"""``ldm COMMAND --help`` on every subcommand: exit 0, its usage, and every key it takes with
its type and default, read from the pydantic model that validates the command (and, for train,
from the composed config and every registered plugin)."""

from __future__ import annotations

import pytest

from ldmcore import cli
from ldmcore.config import ExperimentConfig, load
from ldmcore.errors import override_text
from ldmcore.eval.request import EvalRequest
from ldmcore.helptext import fields
from ldmcore.interop.options import ExportOptions, ImportOptions
from ldmcore.registry import default_registry
from ldmcore.sample import SampleRequest
from ldmcore.scaffold import NewPluginOptions
from ldmcore.serve.options import ServeOptions


def help_of(capsys, *argv: str) -> str:
    assert cli.main(list(argv)) == 0
    out = capsys.readouterr()
    assert out.err == ""
    return out.out


def row(text: str, key: str) -> list[str]:
    """The words of ``key``'s line in a help table."""
    lines = [line.split() for line in text.splitlines() if line.split()[:1] == [key]]
    assert lines, f"{key} is not in the help"
    return lines[0]


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_subcommand_takes_help(capsys, command):
    for flag in ("--help", "-h"):
        text = help_of(capsys, command, flag)
        assert text.startswith(f"usage: ldm {command}")


@pytest.mark.parametrize("command, model", [
    ("eval", EvalRequest), ("import", ImportOptions), ("export", ExportOptions),
    ("new-plugin", NewPluginOptions), ("sample", SampleRequest), ("serve", ServeOptions),
])
def test_help_lists_each_key_with_its_type_and_default(capsys, command, model):
    text = help_of(capsys, command, "--help")
    for name, field in model.model_fields.items():
        if isinstance(field.get_default(call_default_factory=True), dict):
            continue  # prefixed keys (cond.NAME=...) are listed by their spelling
        words = row(text, name)
        default = "(required)" if field.is_required() else override_text(
            getattr(field.default, "value", field.default))
        assert default in words[2:], (name, words)


def test_new_plugin_help_is_help_not_a_plugin_name(capsys):
    assert "not a lower-case identifier" not in help_of(capsys, "new-plugin", "--help")


def test_train_help_shows_the_composed_values_and_every_plugins_keys(capsys):
    text = help_of(capsys, "train", "experiment=demo", "--help")
    demo = load(["experiment=demo"])
    assert row(text, "trainer.max_steps")[1:3] == ["int", str(demo.trainer.max_steps)]
    assert row(text, "sampler.guidance")[2] == override_text(demo.sampler.guidance)
    leaves = [key for key, *_ in fields(ExperimentConfig) if not key.startswith("conditions")]
    for key in leaves:
        row(text, key)
    for name, cls in default_registry().encoders.items():
        for field in cls.Config.model_fields:
            row(text, f"conditions.{name}.{field}")
    assert "dpmpp_2m," in row(text, "sampler")  # the group and its options


def test_help_after_a_bad_override_is_the_config_error(capsys):
    assert cli.main(["train", "trainer.max_stepz=1", "--help"]) == 2
    assert "`trainer.max_steps=1`" in capsys.readouterr().err
