"""Hydra configs that plugins bring along (the ``register_config_dirs`` hook), and how the
registry treats what plugin packages register: all or nothing, unknown hooks, listed hooks.

The independent truth is the YAML a plugin ships: its values must arrive unchanged in the
validated config, found through the plugin's folder alone.
"""

from __future__ import annotations

import importlib.metadata as md
from pathlib import Path

import pytest

from ldmcore.config import conf_dir, group_options, load, resolve_conditions
from ldmcore.errors import ConfigError, PluginClash, PluginError
from ldmcore.hookspecs import hookimpl
from ldmcore.registry import ALLOW_ENV, DISABLE_ENV, build_registry, hook_names
from ldmcore.testing import isolated_registry

from tests.test_registry import FakeEntryPoint, VectorEncoder, with_entry_points


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    monkeypatch.delenv(DISABLE_ENV, raising=False)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


class VecPlugin:
    """A plugin object: the ``vec`` encoder plus a folder of configs."""

    def __init__(self, folder: Path | str) -> None:
        self.folder = folder

    @hookimpl
    def register_conditions(self, register):
        register(VectorEncoder)

    @hookimpl
    def register_config_dirs(self, register):
        register(self.folder)


@pytest.fixture
def shipped(tmp_path) -> Path:
    conf = tmp_path / "ldm_vec" / "conf"
    write(conf / "condition" / "vec.yaml", "# @package conditions.vec\ndim: 6\ndrop_prob: 0.25\n")
    write(conf / "experiment" / "digits_vec.yaml",
          "# @package _global_\ndefaults:\n  - override /condition: [class, vec]\n"
          "name: digits_vec\ntrainer:\n  max_steps: 7\n")
    return conf


def registry_with(*plugins, builtins: bool = True):
    return isolated_registry(*plugins, builtins=builtins)


def test_register_config_dirs_puts_a_plugins_condition_and_experiment_on_the_search_path(shipped):
    reg = registry_with(VecPlugin(shipped))
    cfg = load(["condition=[vec]"], reg)
    assert cfg.conditions == {"vec": {"dim": 6, "drop_prob": 0.25}}
    cfg = load(["experiment=digits_vec"], reg)
    assert (cfg.name, cfg.trainer.max_steps) == ("digits_vec", 7)
    assert set(cfg.conditions) == {"class", "vec"}  # a plugin experiment may use host configs
    assert resolve_conditions(cfg, reg)["class"][1].num_classes == 10  # the plugin's default
    # without the plugin, its files are not there
    with pytest.raises(ConfigError, match="unknown experiment 'digits_vec'"):
        load(["experiment=digits_vec"], registry_with())


def test_the_folder_may_be_a_string_or_an_importlib_resource(shipped):
    from importlib.resources import files

    for folder in (str(shipped), files("ldmcore.conf")):
        reg = build_registry(load_entry_points=False)
        reg.add_module(VecPlugin(folder), package="p")
        assert reg.config_dirs[0].path.is_dir()


def test_error_messages_list_plugin_options_too(shipped):
    reg = registry_with(VecPlugin(shipped))
    assert group_options("experiment", reg) == sorted(
        [p.stem for p in (conf_dir() / "experiment").glob("*.yaml")] + ["digits_vec"])
    with pytest.raises(ConfigError) as exc:
        load(["experiment=digit_vec"], reg)
    assert "did you mean `experiment=digits_vec`?" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        load(["condition=[vek]"], reg)
    assert "`condition=vec`" in str(exc.value)


def test_a_plugin_cannot_shadow_a_host_config(tmp_path):
    conf = tmp_path / "conf"
    write(conf / "condition" / "class.yaml", "# @package conditions.class\nnum_classes: 3\n")
    reg = registry_with(VecPlugin(conf))
    with pytest.raises(PluginClash) as exc:
        load(["condition=[class]"], reg)
    assert "'condition/class.yaml'" in str(exc.value)
    assert "'ldmcore'" in str(exc.value) and f"'{__name__}'" in str(exc.value)


def test_two_plugins_shipping_one_file_clash_naming_both(shipped, tmp_path):
    other = tmp_path / "other"
    write(other / "experiment" / "digits_vec.yaml", "# @package _global_\nname: other\n")

    class Other:
        @hookimpl
        def register_config_dirs(self, register):
            register(other)

    reg = build_registry(load_entry_points=False)
    reg.add_module(VecPlugin(shipped), package="ldm-vec")
    reg.add_module(Other(), package="ldm-other")
    with pytest.raises(PluginClash) as exc:
        load([], reg)
    assert "'experiment/digits_vec.yaml'" in str(exc.value)
    assert "'ldm-vec'" in str(exc.value) and "'ldm-other'" in str(exc.value)


def test_a_user_searchpath_is_kept_before_the_plugins(shipped, tmp_path):
    mine = tmp_path / "mine"
    write(mine / "experiment" / "mine.yaml", "# @package _global_\nname: mine\n")
    reg = registry_with(VecPlugin(shipped))
    cfg = load([f"hydra.searchpath=[file://{mine}]", "experiment=mine", "condition=[vec]"], reg)
    assert cfg.name == "mine" and "vec" in cfg.conditions


def test_the_installed_example_package_brings_its_experiment():
    """Through the real entry point: `pip install -e examples/ldm-plugin-edges` is enough."""
    reg = build_registry()
    assert "edges" in reg.encoders, reg.broken
    assert md.version("ldm-plugin-edges")
    cfg = load(["experiment=shapes_edges"], reg)
    assert cfg.data.name == "shapes" and set(cfg.conditions) == {"edges"}


# -- what packages register is all or nothing ---------------------------------------------------

def test_a_missing_config_folder_breaks_the_package_and_keeps_none_of_it(monkeypatch, tmp_path):
    mod = VecPlugin(tmp_path / "not-shipped")
    with_entry_points(monkeypatch, FakeEntryPoint("vec", "vec_pkg", lambda: mod))
    reg = build_registry()
    assert "not a folder" in reg.broken["vec_pkg:vec"] and "not-shipped" in reg.broken["vec_pkg:vec"]
    assert "vec" not in reg.encoders  # its encoder was registered first, and is dropped too
    assert reg.config_dirs == []
    assert "vec_pkg:vec" not in dict(reg.manager.list_name_plugin())
    with pytest.raises(PluginError, match="not-shipped"):
        reg.condition("vec")


def test_an_unknown_hook_name_breaks_the_package_with_the_nearest_name(monkeypatch):
    class Typo:
        @hookimpl
        def register_condition(self, register):
            register(VectorEncoder)

    with_entry_points(monkeypatch, FakeEntryPoint("vec", "typo_pkg", Typo))
    reg = build_registry()
    assert "'register_condition'" in reg.broken["typo_pkg:vec"]
    assert "did you mean 'register_conditions'" in reg.broken["typo_pkg:vec"]
    assert "vec" not in reg.encoders


def test_one_package_registering_a_name_twice_is_an_error():
    class Twice:
        @hookimpl
        def register_conditions(self, register):
            register(VectorEncoder)
            register(type("OtherVec", (VectorEncoder,), {}))

    reg = build_registry(load_entry_points=False)
    with pytest.raises(PluginError, match="registers two classes named 'vec'"):
        reg.add_module(Twice(), package="twice")
    assert reg.encoders == {}


def test_infos_list_the_hooks_each_package_implements(shipped):
    reg = build_registry(load_entry_points=False)
    reg.add_module(VecPlugin(shipped), package="ldm-vec", version="2.0")
    (info,) = reg.infos()
    assert info.hooks == ("register_conditions", "register_config_dirs")
    assert set(info.hooks) <= set(hook_names())
    assert hook_names() == ["register_conditions", "register_config_dirs", "register_samplers",
                            "register_metrics", "register_datasets", "register_loggers"]


def test_a_condition_missed_because_its_plugin_is_broken_says_why(monkeypatch):
    def boom():
        raise ImportError("No module named 'cv3'")

    with_entry_points(monkeypatch, FakeEntryPoint("edges", "ldm-plugin-edges", boom))
    reg = build_registry()
    with pytest.raises(ConfigError) as exc:
        load(["condition=[edges]"], reg)
    assert "unknown condition 'edges'" in str(exc.value)
    assert "ldm-plugin-edges:edges (ImportError: No module named 'cv3')" in str(exc.value)


def test_ldm_plugins_lists_hooks_and_config_folders(shipped, monkeypatch, capsys):
    from ldmcore import cli
    from ldmcore import registry as registry_mod

    reg = build_registry(load_entry_points=False)
    reg.add_module(VecPlugin(shipped), package="ldm-vec", version="2.0")
    monkeypatch.setattr(registry_mod, "_default", reg)
    assert cli.main(["plugins"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["vec", "vector", "ldm-vec", "2.0", "True",
                                "register_conditions,register_config_dirs"]
    assert f"configs: ldm-vec: {shipped}" in lines
